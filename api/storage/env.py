"""Owner and repository environment: variables and encrypted secrets."""

from __future__ import annotations

from collections.abc import Mapping

import aiosqlite

from api.storage.db import Database
from api.storage.records import EnvEntry


class EnvStore:
    def __init__(self, database: Database) -> None:
        self.db = database

    async def owner_entries(self, owner: str) -> list[EnvEntry]:
        rows = await self.db.fetch_all(
            "SELECT name, value, is_secret FROM owner_env"
            " WHERE owner = ? COLLATE NOCASE ORDER BY name",
            (owner,),
        )
        return [EnvEntry(row[0], row[1], bool(row[2])) for row in rows]

    async def repository_entries(self, repository_id: int) -> list[EnvEntry]:
        rows = await self.db.fetch_all(
            "SELECT name, value, is_secret FROM repository_env"
            " WHERE repository_id = ? ORDER BY name",
            (repository_id,),
        )
        return [EnvEntry(row[0], row[1], bool(row[2])) for row in rows]

    async def job_layers(
        self, owner: str, repository_id: int
    ) -> tuple[list[EnvEntry], list[EnvEntry]]:
        """The owner's and the repository's variables, in one trip."""
        rows = await self.db.fetch_all(
            "SELECT 0, name, value, is_secret FROM owner_env"
            " WHERE owner = ? COLLATE NOCASE"
            " UNION ALL"
            " SELECT 1, name, value, is_secret FROM repository_env"
            " WHERE repository_id = ? ORDER BY 1, 2",
            (owner, repository_id),
        )
        layers: tuple[list[EnvEntry], list[EnvEntry]] = ([], [])
        for row in rows:
            layers[row[0]].append(EnvEntry(row[1], row[2], bool(row[3])))
        return layers

    async def replace_owner(
        self,
        conn: aiosqlite.Connection,
        owner: str,
        *,
        is_secret: bool,
        values: Mapping[str, str],
    ) -> None:
        await conn.execute(
            "DELETE FROM owner_env WHERE owner = ? COLLATE NOCASE AND is_secret = ?",
            (owner, int(is_secret)),
        )
        await conn.executemany(
            "INSERT OR REPLACE INTO owner_env (owner, name, value, is_secret)"
            " VALUES (?, ?, ?, ?)",
            [(owner, key, value, int(is_secret)) for key, value in values.items()],
        )

    async def replace_repository(
        self,
        conn: aiosqlite.Connection,
        repository_id: int,
        *,
        is_secret: bool,
        values: Mapping[str, str],
    ) -> None:
        await conn.execute(
            "DELETE FROM repository_env WHERE repository_id = ? AND is_secret = ?",
            (repository_id, int(is_secret)),
        )
        await conn.executemany(
            "INSERT OR REPLACE INTO repository_env"
            " (repository_id, name, value, is_secret) VALUES (?, ?, ?, ?)",
            [
                (repository_id, key, value, int(is_secret))
                for key, value in values.items()
            ],
        )
