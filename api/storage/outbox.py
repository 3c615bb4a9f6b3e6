"""Commit statuses waiting to be posted to GitHub."""

from __future__ import annotations

import time

import aiosqlite

from api.storage.db import Database
from api.storage.records import OutboxItem


class StatusOutbox:
    def __init__(self, database: Database) -> None:
        self.db = database

    async def add_now(
        self,
        *,
        job_id: int,
        state: str,
        context: str,
        description: str,
        target_url: str,
    ) -> None:
        """Queue a status; a statement of its own (one trip, no transaction)."""
        now = time.time()
        await self.db.execute_write(
            "INSERT INTO status_outbox (job_id, state, context, description,"
            " target_url, next_attempt_at, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (job_id, state, context, description, target_url, now, now),
        )

    async def due(self, now: float, limit: int = 20) -> list[OutboxItem]:
        rows = await self.db.fetch_all(
            "SELECT id, job_id, state, context, description, target_url, attempts,"
            " next_attempt_at FROM status_outbox WHERE next_attempt_at <= ?"
            " ORDER BY id LIMIT ?",
            (now, limit),
        )
        return [OutboxItem(*row) for row in rows]

    async def next_due_at(self) -> float | None:
        value = await self.db.fetch_value(
            "SELECT min(next_attempt_at) FROM status_outbox"
        )
        return None if value is None else float(value)

    async def lease(
        self, conn: aiosqlite.Connection, item_id: int, now: float, until: float
    ) -> bool:
        """Take a due item for posting; False if another process took it.

        The lease ends at ``until``: if the taker dies, the item is due again.
        """
        cursor = await conn.execute(
            "UPDATE status_outbox SET next_attempt_at = ?"
            " WHERE id = ? AND next_attempt_at <= ?",
            (until, item_id, now),
        )
        taken = cursor.rowcount == 1
        await cursor.close()
        return taken

    async def release(self, item_id: int, until: float) -> None:
        """End our lease (the one ending at ``until``) early: the item is due
        again now. Another process's lease, or a posted item, stays as is."""
        await self.db.execute_write(
            "UPDATE status_outbox SET next_attempt_at = ?"
            " WHERE id = ? AND next_attempt_at = ?",
            (time.time(), item_id, until),
        )

    async def remove(self, conn: aiosqlite.Connection, item_id: int) -> None:
        await conn.execute("DELETE FROM status_outbox WHERE id = ?", (item_id,))

    async def postpone(
        self, conn: aiosqlite.Connection, item_id: int, until: float
    ) -> None:
        await conn.execute(
            "UPDATE status_outbox SET attempts = attempts + 1, next_attempt_at = ?"
            " WHERE id = ?",
            (until, item_id),
        )
