"""Queries of the ``repositories`` table."""

from __future__ import annotations

import sqlite3
import time

import aiosqlite

from api.storage.db import Database
from api.storage.records import RepositoryRecord, RepositoryStatus


class RepositoryExists(Exception):
    """The repository is registered already."""


class RepositoryGone(LookupError):
    """The repository was removed meanwhile (a concurrent DELETE)."""


class RepositoryStore:
    def __init__(self, database: Database) -> None:
        self.db = database

    async def create(
        self,
        conn: aiosqlite.Connection,
        *,
        owner: str,
        name: str,
        branch: str,
        private: bool,
        registered_by: str,
        token_encrypted: str,
        webhook_uid: str,
        webhook_secret_encrypted: str,
        github_id: str | None = None,
    ) -> RepositoryRecord:
        now = time.time()
        try:
            cursor = await conn.execute(
                "INSERT INTO repositories (owner, name, branch, status, private,"
                " registered_by, token_encrypted, webhook_uid,"
                " webhook_secret_encrypted, created_at, updated_at, github_id)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING *",
                (
                    owner,
                    name,
                    branch,
                    RepositoryStatus.CLONING,
                    int(private),
                    registered_by,
                    token_encrypted,
                    webhook_uid,
                    webhook_secret_encrypted,
                    now,
                    now,
                    github_id,
                ),
            )
        except sqlite3.IntegrityError as err:
            raise RepositoryExists(f"{owner}/{name}") from err
        row = await cursor.fetchone()
        await cursor.close()
        assert row is not None
        return RepositoryRecord.from_row(row)

    async def get(self, owner: str, name: str) -> RepositoryRecord | None:
        row = await self.db.fetch_one(
            "SELECT * FROM repositories"
            " WHERE owner = ? COLLATE NOCASE AND name = ? COLLATE NOCASE",
            (owner, name),
        )
        return None if row is None else RepositoryRecord.from_row(row)

    async def get_by_id(self, repository_id: int) -> RepositoryRecord | None:
        row = await self.db.fetch_one(
            "SELECT * FROM repositories WHERE id = ?", (repository_id,)
        )
        return None if row is None else RepositoryRecord.from_row(row)

    async def get_by_webhook_uid(self, uid: str) -> RepositoryRecord | None:
        # Every delivery starts here: no thread hop.
        row = await self.db.fetch_one_now(
            "SELECT * FROM repositories WHERE webhook_uid = ?", (uid,)
        )
        return None if row is None else RepositoryRecord.from_row(row)

    async def list_all(self) -> list[RepositoryRecord]:
        rows = await self.db.fetch_all("SELECT * FROM repositories ORDER BY id")
        return [RepositoryRecord.from_row(row) for row in rows]

    async def set_status(
        self,
        conn: aiosqlite.Connection,
        repository_id: int,
        status: RepositoryStatus,
        detail: str | None = None,
        *,
        only_if: RepositoryStatus | None = None,
    ) -> None:
        """Set the status (``only_if`` it is that one now, when given)."""
        await conn.execute(
            "UPDATE repositories SET status = ?, status_detail = ?, updated_at = ?"
            " WHERE id = ? AND coalesce(status = ?, 1)",
            (status, detail, time.time(), repository_id, only_if),
        )

    async def set_token(
        self, conn: aiosqlite.Connection, repository_id: int, token_encrypted: str
    ) -> None:
        await conn.execute(
            "UPDATE repositories SET token_encrypted = ?, updated_at = ? WHERE id = ?",
            (token_encrypted, time.time(), repository_id),
        )

    async def mark_access_checked(
        self, conn: aiosqlite.Connection, repository_id: int, github_id: str | None
    ) -> None:
        """Record a passed access check; a registration made before GitHub's
        node id was stored (migration 0002) is bound to ``github_id`` now."""
        await conn.execute(
            "UPDATE repositories SET access_checked_at = ?,"
            " github_id = COALESCE(github_id, ?) WHERE id = ?",
            (time.time(), github_id, repository_id),
        )

    async def register_again(
        self,
        conn: aiosqlite.Connection,
        repository_id: int,
        *,
        branch: str,
        registered_by: str,
        token_encrypted: str,
        github_id: str | None,
    ) -> RepositoryRecord | None:
        """A ``revoked`` repository back to ``cloning`` with a new token (its
        webhook, env and jobs kept); None unless it is revoked."""
        rows = list(
            await conn.execute_fetchall(
                "UPDATE repositories SET status = ?, status_detail = NULL,"
                " branch = ?, registered_by = ?, token_encrypted = ?,"
                " github_id = ?, updated_at = ? WHERE id = ? AND status = ?"
                " RETURNING *",
                (
                    RepositoryStatus.CLONING,
                    branch,
                    registered_by,
                    token_encrypted,
                    github_id,
                    time.time(),
                    repository_id,
                    RepositoryStatus.REVOKED,
                ),
            )
        )
        return RepositoryRecord.from_row(rows[0]) if rows else None

    async def status_in(
        self, conn: aiosqlite.Connection, repository_id: int
    ) -> RepositoryStatus | None:
        """The repository's status as ``conn``'s transaction sees it."""
        rows = list(
            await conn.execute_fetchall(
                "SELECT status FROM repositories WHERE id = ?", (repository_id,)
            )
        )
        return RepositoryStatus(rows[0][0]) if rows else None

    async def ensure_present(
        self, conn: aiosqlite.Connection, repository_id: int
    ) -> None:
        """Raise ``RepositoryGone`` unless the repository is (still) there;
        in a write transaction, it stays for the rest of it."""
        if await self.status_in(conn, repository_id) is None:
            raise RepositoryGone(f"repository {repository_id} is gone")

    async def delete(self, conn: aiosqlite.Connection, repository_id: int) -> None:
        await conn.execute("DELETE FROM repositories WHERE id = ?", (repository_id,))
