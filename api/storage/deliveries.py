"""Webhook deliveries, recorded once each."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass

import aiosqlite

from api.storage.db import Database
from api.storage.repositories import RepositoryGone


@dataclass(frozen=True)
class DeliveryRecord:
    delivery_id: str
    event: str
    result: str
    job_id: int | None


class DeliveryStore:
    def __init__(self, database: Database) -> None:
        self.db = database

    async def find(
        self, conn: aiosqlite.Connection, repository_id: int, delivery_id: str
    ) -> DeliveryRecord | None:
        rows = await conn.execute_fetchall(
            "SELECT delivery_id, event, result, job_id FROM deliveries"
            " WHERE repository_id = ? AND delivery_id = ?",
            (repository_id, delivery_id),
        )
        return next((DeliveryRecord(*row) for row in rows), None)

    async def record(
        self,
        conn: aiosqlite.Connection,
        *,
        repository_id: int,
        delivery_id: str,
        event: str,
        result: str,
        job_id: int | None,
    ) -> None:
        await conn.execute(
            "INSERT INTO deliveries"
            " (repository_id, delivery_id, event, result, job_id, received_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (repository_id, delivery_id, event, result, job_id, time.time()),
        )

    async def record_once(
        self,
        *,
        repository_id: int,
        delivery_id: str,
        event: str,
        result: str,
    ) -> bool:
        """Record a delivery that queued nothing; False if it was known."""
        try:
            changed = await self.db.execute_write_now(
                "INSERT OR IGNORE INTO deliveries"
                " (repository_id, delivery_id, event, result, job_id, received_at)"
                " VALUES (?, ?, ?, ?, NULL, ?)",
                (repository_id, delivery_id, event, result, time.time()),
            )
        except sqlite3.IntegrityError:  # the only reference: the repository
            raise RepositoryGone(f"repository {repository_id} is gone") from None
        return changed == 1

    async def count(self, repository_id: int) -> int:
        value = await self.db.fetch_value(
            "SELECT count(*) FROM deliveries WHERE repository_id = ?",
            (repository_id,),
        )
        return int(value)
