"""One aiosqlite connection per process, WAL mode, versioned migrations."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Iterable, Sequence
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import aiosqlite

logger = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 10_000
# Writes on the event loop between two checkpoints (see execute_write_now):
# at ~3 WAL pages each, about SQLite's own 1,000-page mark.
LOOP_WRITES_PER_CHECKPOINT = 300

Row = sqlite3.Row


class Database:
    """A shared connection; writes go through :meth:`transaction`.

    All coroutines of the process share one connection, so a write
    transaction holds an asyncio lock: statements of two transactions never
    interleave. ``BEGIN IMMEDIATE`` takes SQLite's write lock up front, which
    serialises writers across processes (two instances in a blue-green switch).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._connection: aiosqlite.Connection | None = None
        # Used on the event loop's thread (see fetch_one_now and
        # execute_write_now); the writer never waits for a lock.
        self._reader: sqlite3.Connection | None = None
        self._writer: sqlite3.Connection | None = None
        self._loop_writes = 0
        # Set while _checkpoint_and_write runs; the loop's writes wait for it.
        self._checkpointing: asyncio.Event | None = None
        self._write_lock = asyncio.Lock()

    @property
    def connection(self) -> aiosqlite.Connection:
        if self._connection is None:
            raise RuntimeError("Database is not open")
        return self._connection

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = await aiosqlite.connect(
            self.path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000
        )
        connection.row_factory = sqlite3.Row
        await connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        await _set_wal(connection)
        await connection.execute("PRAGMA synchronous = NORMAL")
        await connection.execute("PRAGMA foreign_keys = ON")
        self._connection = connection
        await apply_migrations(self)
        self._reader = _open_reader(self.path)
        self._writer = _open_writer(self.path)

    async def close(self) -> None:
        for loop_connection in (self._reader, self._writer):
            if loop_connection is not None:
                loop_connection.close()
        self._reader = self._writer = None
        if self._connection is not None:
            await self._connection.close()
            self._connection = None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``, or ``ROLLBACK`` on any error.

        Cancellation cannot leave the shared connection inside a transaction:
        ``BEGIN`` runs on aiosqlite's thread even when the awaiting coroutine
        is cancelled, so the rollback is issued whenever ``BEGIN`` was, and
        ``COMMIT``/``ROLLBACK`` finish before the write lock is given up.
        """
        async with self._write_lock:
            connection = self.connection
            try:
                await connection.execute("BEGIN IMMEDIATE")
                yield connection
            except BaseException:
                # A no-op when BEGIN never ran; queued after it when it did.
                await _finish_uncancelled(connection.rollback())
                raise
            await _finish_uncancelled(connection.commit())

    async def execute_write(self, sql: str, params: Sequence[Any] = ()) -> int:
        """One statement on its own (autocommit); returns the changed rows.

        For single-statement writes: one round trip instead of a
        transaction's four, still never inside another coroutine's open one.
        """
        async with self._write_lock:
            cursor = await self.connection.execute(sql, params)
            changed: int = cursor.rowcount
            return changed

    async def execute_write_now(self, sql: str, params: Sequence[Any] = ()) -> int:
        """``execute_write`` for a small indexed write on a request's critical
        path (one row, no trigger): run right here, as ``fetch_one_now``
        reads. Two thread wake-ups cost more CPU than the write itself, and
        under load they cost the event loop the GIL.

        No disk sync happens here: in WAL mode with ``synchronous = NORMAL``
        a commit appends to the WAL without one (~20 us), and this writer
        never checkpoints. Every ``LOOP_WRITES_PER_CHECKPOINT`` writes, the
        next one checkpoints on aiosqlite's thread instead (see
        ``_checkpoint_and_write``), and the writes that come meanwhile wait
        for it. When SQLite's write lock is taken (a transaction of this
        process or of another), the write queues on that thread.
        """
        if self._writer is not None:
            while self._checkpointing is not None:
                await self._checkpointing.wait()
            if self._loop_writes >= LOOP_WRITES_PER_CHECKPOINT:
                return await self._checkpoint_and_write(sql, params)
            try:
                changed = self._writer.execute(sql, params).rowcount
            except sqlite3.OperationalError as err:
                if err.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
                    raise
            else:
                self._loop_writes += 1
                return changed
        return await self.execute_write(sql, params)

    async def _checkpoint_and_write(self, sql: str, params: Sequence[Any]) -> int:
        """Checkpoint, then write, on aiosqlite's thread, with the loop's own
        writes waiting: the checkpoint copies the whole WAL (one beside the
        loop's steady writes never catches up, and the WAL then grows
        without end), and the write after it starts the WAL over, so that
        the syncs of both happen on that thread."""
        checkpointing = self._checkpointing = asyncio.Event()
        try:
            async with self._write_lock:
                self._loop_writes = 0
                try:
                    await self.connection.execute("PRAGMA wal_checkpoint(RESTART)")
                except sqlite3.Error as err:  # the WAL waits for the next one
                    logger.warning("WAL checkpoint failed: %s", err)
                cursor = await self.connection.execute(sql, params)
                changed: int = cursor.rowcount
                return changed
        finally:
            self._checkpointing = None
            checkpointing.set()

    async def write_returning(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """One ``... RETURNING`` statement on its own (autocommit), one trip.

        A single write statement is a transaction of its own: SQLite takes
        the write lock before the statement reads, so it reads the latest
        commit of every connection, and nothing interleaves with it.
        """
        async with self._write_lock:
            return list(await self.connection.execute_fetchall(sql, params))

    async def fetch_one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        rows = await self.fetch_all(sql, params)
        return rows[0] if rows else None

    async def fetch_one_now(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        """``fetch_one`` for a small indexed read on a request's critical
        path: run right here instead of on aiosqlite's thread, which costs
        two thread wake-ups. A WAL reader never waits for writers; should it
        have to wait for a lock at all, the read takes the thread after all.
        """
        if self._reader is not None:
            try:
                rows = self._reader.execute(sql, params).fetchall()
            except sqlite3.OperationalError as err:
                if err.sqlite_errorcode != sqlite3.SQLITE_BUSY:
                    raise
            else:
                return rows[0] if rows else None
        return await self.fetch_one(sql, params)

    async def fetch_all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        # One hop to the database thread (execute, fetch and close there).
        return list(await self.connection.execute_fetchall(sql, params))

    async def fetch_value(self, sql: str, params: Sequence[Any] = ()) -> Any:
        row = await self.fetch_one(sql, params)
        return None if row is None else row[0]

    async def ping(self) -> None:
        await self.fetch_value("SELECT 1")


async def _finish_uncancelled(operation: Awaitable[None]) -> None:
    """Await ``operation`` to its end even when cancelled meanwhile, then
    pass the cancellation on (statements take milliseconds)."""
    task = asyncio.ensure_future(operation)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = True
    task.result()
    if cancelled:
        raise asyncio.CancelledError


def _open_reader(path: Path) -> sqlite3.Connection:
    # timeout=0: a locked database is never waited for on the event loop.
    reader = sqlite3.connect(path, timeout=0, isolation_level=None)
    reader.row_factory = sqlite3.Row
    reader.execute("PRAGMA query_only = 1")
    return reader


def _open_writer(path: Path) -> sqlite3.Connection:
    # timeout=0: on a lock, SQLITE_BUSY at once (the caller then queues).
    writer = sqlite3.connect(path, timeout=0, isolation_level=None)
    writer.execute("PRAGMA synchronous = NORMAL")
    writer.execute("PRAGMA foreign_keys = ON")
    writer.execute("PRAGMA wal_autocheckpoint = 0")
    return writer


async def _set_wal(connection: aiosqlite.Connection) -> None:
    # Switching to WAL needs a moment without other writers; retry briefly
    # when a second process is doing the same.
    for attempt in range(50):
        try:
            await connection.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError:
            if attempt == 49:
                raise
            await asyncio.sleep(0.05)


def migration_scripts() -> list[tuple[int, str, str]]:
    """``(version, name, sql)`` for every shipped migration, in order."""
    folder = resources.files("api.storage") / "migrations"
    scripts = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            scripts.append((version, entry.name, entry.read_text("utf-8")))
    return sorted(scripts)


def split_statements(sql: str) -> Iterable[str]:
    statement = ""
    for line in sql.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            if statement.strip():
                yield statement.strip()
            statement = ""
    if statement.strip() and not all(
        part.strip().startswith("--") or not part.strip()
        for part in statement.splitlines()
    ):
        raise ValueError("Migration ends with an incomplete statement")


async def apply_migrations(database: Database) -> list[int]:
    """Apply missing migrations; safe when two processes start at once."""
    async with database.transaction() as connection:
        await connection.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
            " applied_at REAL NOT NULL)"
        )
        async with connection.execute(
            "SELECT version FROM schema_migrations"
        ) as cursor:
            applied = {row[0] for row in await cursor.fetchall()}
        done = []
        for version, name, sql in migration_scripts():
            if version in applied:
                continue
            for statement in split_statements(sql):
                await connection.execute(statement)
            await connection.execute(
                "INSERT INTO schema_migrations (version, name, applied_at)"
                " VALUES (?, ?, ?)",
                (version, name, time.time()),
            )
            done.append(version)
    if done:
        logger.info("Applied migrations %s to %s", done, database.path)
    return done
