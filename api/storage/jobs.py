"""Queries of the ``jobs`` table, including the atomic claim of queued jobs."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import aiosqlite

from api.storage.db import Database
from api.storage.records import JobKind, JobRecord, JobStatus
from api.storage.repositories import RepositoryGone

ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING)


async def _one(
    conn: aiosqlite.Connection, sql: str, params: Iterable[Any]
) -> JobRecord | None:
    # One trip to aiosqlite's thread (execute, fetch, close), not three.
    rows = await conn.execute_fetchall(sql, tuple(params))
    return next((JobRecord.from_row(row) for row in rows), None)


_CLAIM = (
    "UPDATE jobs SET status = ?, runner = ?, started_at = ?"
    " WHERE id = ("
    "  SELECT q.id FROM jobs AS q"
    "  JOIN repositories AS r ON r.id = q.repository_id"
    "  WHERE q.status = ? AND r.status != 'revoked'"
    "  AND NOT EXISTS (SELECT 1 FROM jobs AS b"
    "   WHERE b.repository_id = q.repository_id AND b.status = ?)"
    "  ORDER BY q.id LIMIT 1"
    " ) RETURNING *"
)


class JobStore:
    def __init__(self, database: Database) -> None:
        self.db = database

    async def enqueue(
        self,
        conn: aiosqlite.Connection,
        *,
        repository_id: int,
        kind: JobKind,
        ref: str | None,
        sha: str | None,
        trigger: Mapping[str, Any],
        supersede: bool = False,
    ) -> tuple[JobRecord, list[JobRecord]]:
        """Queue a job; with ``supersede`` retire queued tests of the same ref.

        Returns the new job and the jobs it superseded.
        """
        rows = await conn.execute_fetchall(
            "UPDATE repositories SET last_job_number = last_job_number + 1"
            " WHERE id = ? RETURNING last_job_number",
            (repository_id,),
        )
        row = next(iter(rows), None)
        if row is None:
            raise RepositoryGone(f"repository {repository_id} is gone")
        now = time.time()
        job = await _one(
            conn,
            "INSERT INTO jobs (repository_id, number, kind, status, ref, sha,"
            " trigger, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING *",
            (
                repository_id,
                row[0],
                kind,
                JobStatus.QUEUED,
                ref,
                sha,
                json.dumps(dict(trigger)),
                now,
            ),
        )
        assert job is not None
        superseded: list[JobRecord] = []
        if supersede:
            rows = await conn.execute_fetchall(
                "UPDATE jobs SET status = ?, finished_at = ?, reason = ?"
                " WHERE repository_id = ? AND kind = ? AND status = ?"
                " AND ref IS ? AND id < ? RETURNING *",
                (
                    JobStatus.SUPERSEDED,
                    now,
                    f"superseded by job #{job.number}",
                    repository_id,
                    kind,
                    JobStatus.QUEUED,
                    ref,
                    job.id,
                ),
            )
            superseded = [JobRecord.from_row(row) for row in rows]
        return job, superseded

    async def claim(
        self, runner: str, conn: aiosqlite.Connection | None = None
    ) -> JobRecord | None:
        """Take the oldest queued job of a repository with nothing running.

        One statement, atomic on its own (see ``Database.write_returning``)
        or inside the caller's ``conn`` transaction: two instances sharing
        the database can never claim the same job or run two jobs of one
        repository.
        """
        params = (
            JobStatus.RUNNING,
            runner,
            time.time(),
            JobStatus.QUEUED,
            JobStatus.RUNNING,
        )
        if conn is None:
            rows = await self.db.write_returning(_CLAIM, params)
        else:
            rows = list(await conn.execute_fetchall(_CLAIM, params))
        return next((JobRecord.from_row(row) for row in rows), None)

    async def has_claimable(self) -> bool:
        value = await self.db.fetch_value(
            "SELECT 1 FROM jobs AS q WHERE q.status = ? AND NOT EXISTS ("
            " SELECT 1 FROM jobs AS b WHERE b.repository_id = q.repository_id"
            " AND b.status = ?) LIMIT 1",
            (JobStatus.QUEUED, JobStatus.RUNNING),
        )
        return value is not None

    async def record_sha(self, job_id: int, sha: str) -> None:
        await self.db.execute_write(
            "UPDATE jobs SET sha = ? WHERE id = ?", (sha, job_id)
        )

    async def finish(
        self,
        conn: aiosqlite.Connection,
        job_id: int,
        status: JobStatus,
        *,
        exit_code: int | None = None,
        reason: str | None = None,
        sha: str | None = None,
    ) -> JobRecord | None:
        """Record the end of an active job (and the commit it ran on, when
        it resolved one); None if it had ended already."""
        return await _one(
            conn,
            "UPDATE jobs SET status = ?, exit_code = ?, reason = ?,"
            " finished_at = ?, sha = COALESCE(?, sha)"
            " WHERE id = ? AND status IN (?, ?) RETURNING *",
            (status, exit_code, reason, time.time(), sha, job_id, *ACTIVE),
        )

    async def request_cancel(
        self, conn: aiosqlite.Connection, job_id: int
    ) -> JobRecord | None:
        """Cancel a queued job at once, or flag a running one for its runner."""
        cancelled = await _one(
            conn,
            "UPDATE jobs SET status = ?, finished_at = ?, reason = ?,"
            " cancel_requested = 1 WHERE id = ? AND status = ? RETURNING *",
            (
                JobStatus.CANCELLED,
                time.time(),
                "cancelled before it started",
                job_id,
                JobStatus.QUEUED,
            ),
        )
        if cancelled is not None:
            return cancelled
        return await _one(
            conn,
            "UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND status = ?"
            " RETURNING *",
            (job_id, JobStatus.RUNNING),
        )

    async def get(self, repository_id: int, number: int) -> JobRecord | None:
        row = await self.db.fetch_one(
            "SELECT * FROM jobs WHERE repository_id = ? AND number = ?",
            (repository_id, number),
        )
        return None if row is None else JobRecord.from_row(row)

    async def get_by_id_in(
        self, conn: aiosqlite.Connection, job_id: int
    ) -> JobRecord | None:
        return await _one(conn, "SELECT * FROM jobs WHERE id = ?", (job_id,))

    async def get_by_id(self, job_id: int) -> JobRecord | None:
        row = await self.db.fetch_one("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return None if row is None else JobRecord.from_row(row)

    async def list_page(
        self,
        repository_id: int,
        *,
        kind: JobKind | None = None,
        limit: int = 20,
        offset: int = 0,
    ) -> tuple[list[JobRecord], int]:
        where = "repository_id = ?"
        params: list[Any] = [repository_id]
        if kind is not None:
            where += " AND kind = ?"
            params.append(kind)
        total = await self.db.fetch_value(
            f"SELECT count(*) FROM jobs WHERE {where}",  # noqa: S608
            params,
        )
        rows = await self.db.fetch_all(
            f"SELECT * FROM jobs WHERE {where}"  # noqa: S608
            " ORDER BY number DESC LIMIT ? OFFSET ?",
            [*params, limit, offset],
        )
        return [JobRecord.from_row(row) for row in rows], int(total)

    async def latest_test_status(
        self, repository_id: int, sha: str
    ) -> JobStatus | None:
        value = await self.db.fetch_value(
            "SELECT status FROM jobs WHERE repository_id = ? AND sha = ?"
            " AND kind = ? ORDER BY number DESC LIMIT 1",
            (repository_id, sha, JobKind.TEST),
        )
        return None if value is None else JobStatus(value)

    async def latest_test_of_ref(
        self, repository_id: int, ref: str
    ) -> JobRecord | None:
        row = await self.db.fetch_one(
            "SELECT * FROM jobs WHERE repository_id = ? AND kind = ? AND ref = ?"
            " AND status NOT IN (?, ?) ORDER BY number DESC LIMIT 1",
            (
                repository_id,
                JobKind.TEST,
                ref,
                JobStatus.SUPERSEDED,
                JobStatus.CANCELLED,
            ),
        )
        return None if row is None else JobRecord.from_row(row)

    async def running(self) -> list[JobRecord]:
        rows = await self.db.fetch_all(
            "SELECT * FROM jobs WHERE status = ? ORDER BY id", (JobStatus.RUNNING,)
        )
        return [JobRecord.from_row(row) for row in rows]

    async def active_of_repository(self, repository_id: int) -> list[JobRecord]:
        rows = await self.db.fetch_all(
            "SELECT * FROM jobs WHERE repository_id = ? AND status IN (?, ?)",
            (repository_id, *ACTIVE),
        )
        return [JobRecord.from_row(row) for row in rows]

    async def hand_back(self, job_id: int, runner: str) -> bool:
        """Queue again a job ``runner`` claimed but never started (it is
        shutting down): the next instance runs it."""
        changed = await self.db.execute_write(
            "UPDATE jobs SET status = ?, runner = NULL, started_at = NULL"
            " WHERE id = ? AND runner = ? AND status = ?",
            (JobStatus.QUEUED, job_id, runner, JobStatus.RUNNING),
        )
        return changed > 0

    async def to_stop(self, runner: str, running: Sequence[int]) -> list[int]:
        """Of ``running`` (the jobs ``runner`` runs), those it is to stop:
        a cancel was requested, or the job is no longer running there (its
        repository removed, or its row settled, by another instance)."""
        if not running:
            return []
        rows = await self.db.fetch_all(
            "SELECT id FROM jobs WHERE status = ? AND runner = ?"
            " AND cancel_requested = 0",
            (JobStatus.RUNNING, runner),
        )
        going_on = {row[0] for row in rows}
        return [job_id for job_id in running if job_id not in going_on]

    async def count_by_status(self) -> dict[str, int]:
        rows = await self.db.fetch_all(
            "SELECT status, count(*) FROM jobs GROUP BY status"
        )
        return {row[0]: row[1] for row in rows}
