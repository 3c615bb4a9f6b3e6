"""Commit statuses on GitHub for test and deploy jobs.

Statuses go through the ``status_outbox`` table: a job event adds a row, a
background poster sends due rows and retries with backoff while GitHub is
failing, so nothing on a job's path waits for GitHub and nothing is lost
across restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sqlite3
import time
from collections.abc import Awaitable, Callable

from api.background import stop_task
from api.crypto import SecretBox
from api.github import GitHubClient
from api.jobs.events import EventType, JobEvent
from api.jobs.serializers import job_url
from api.settings import Settings
from api.storage import Storage
from api.storage.records import (
    JobKind,
    JobRecord,
    JobStatus,
    OutboxItem,
    RepositoryRecord,
)

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 8
FIRST_RETRY = 5.0
IDLE_WAIT = 30.0
# How long closing may spend posting what is due (the job ended while
# stopping): the longest a shutdown waits for GitHub.
CLOSE_PASS_SECONDS = 5.0
# How long a process may take to post a status before another may retry it.
LEASE_SECONDS = 60.0
# How many waiting statuses one round looks at (oldest first).
SCAN_LIMIT = 1000

STATE_OF = {
    JobStatus.QUEUED: "pending",
    JobStatus.RUNNING: "pending",
    JobStatus.SUCCESS: "success",
    JobStatus.FAILED: "failure",
}

# A commit status is identified on GitHub by (repository, sha, context).
_Key = tuple[int, str, str]


def state_of(job: JobRecord) -> str:
    """GitHub's state for a job: any end but success and failure is ``error``."""
    return STATE_OF.get(job.status, "error")


def describe(job: JobRecord) -> str:
    """A short description: what happened, how long it took, why."""
    target = f"make {job.kind}"
    took = f" in {job.duration:.1f} s" if job.duration is not None else ""
    match job.status:
        case JobStatus.QUEUED:
            return f"{target}: queued as job #{job.number}"
        case JobStatus.RUNNING:
            return f"{target}: running job #{job.number}"
        case JobStatus.SUCCESS:
            return f"{target} passed{took}"
        case JobStatus.FAILED:
            return f"{target} failed with exit code {job.exit_code}{took}"
        case _:
            return f"{target}: {job.status}{took}" + (
                f" ({job.reason})" if job.reason else ""
            )


class StatusReporter:
    """Turns job events into commit statuses and posts them in order.

    Statuses of one commit and context are posted in the order the events
    happened: while an older one waits for a retry, newer ones wait behind
    it, so GitHub never ends up showing a stale ``pending``.
    """

    def __init__(
        self,
        settings: Settings,
        storage: Storage,
        box: SecretBox,
        github: GitHubClient,
        *,
        max_attempts: int = MAX_ATTEMPTS,
        first_retry: float = FIRST_RETRY,
        clock: Callable[[], float] = time.time,
        give_way: Callable[[], Awaitable[None]] | None = None,
        close_pass: float = CLOSE_PASS_SECONDS,
    ) -> None:
        self.settings = settings
        self.storage = storage
        self.box = box
        self.github = github
        self.max_attempts = max_attempts
        self.first_retry = first_retry
        self.clock = clock
        # Awaited before touching the database or GitHub: job starts first.
        self.give_way = give_way
        self.close_pass = close_pass
        self._wake = asyncio.Event()
        self._posting = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._post_loop(), name="commit-statuses")

    async def close(self) -> None:
        """Stop posting; a started reporter first posts what is due, within
        ``close_pass`` s, so that no other instance has to (what fails or
        takes longer waits in the outbox for the next instance)."""
        if self._task is None:
            return
        await stop_task(self._task)
        self._task = None
        await self._last_pass()

    async def _last_pass(self) -> None:
        try:
            async with asyncio.timeout(self.close_pass):
                delivered = await self.post_due()
        except TimeoutError:
            logger.warning(
                "Commit statuses still waiting after %g s; left for the next server",
                self.close_pass,
            )
        except Exception:
            logger.exception("Posting commit statuses on close failed")
        else:
            if delivered:
                logger.info("Posted %d commit status(es) on close", delivered)

    async def on_event(self, event: JobEvent) -> None:
        job = event.job
        if job.kind is JobKind.CLONE or job.sha is None:
            return
        # One pending status when the job is queued (or, queued without a
        # commit, once its commit is known), then the result.
        if event.type not in (EventType.QUEUED, EventType.RESOLVED, EventType.FINISHED):
            return
        if self.give_way is not None:
            # Its row waits for job starts too; events are handled one at a
            # time, in order, so the statuses of a commit keep their order.
            await self.give_way()
        try:
            await self.storage.outbox.add_now(
                job_id=job.id,
                state=state_of(job),
                context=f"hobotnica/{job.kind}",
                description=describe(job),
                target_url=job_url(self.settings.base_url, event.repository, job.number)
                + "/log",
            )
        except sqlite3.IntegrityError:
            # The repository was deleted meanwhile (with its jobs): the event
            # arrived late and there is nothing left to report on.
            logger.info(
                "No %s status for job #%s of %s: it is gone",
                job.kind,
                job.number,
                event.repository.full_name,
            )
            return
        self._wake.set()

    async def _post_loop(self) -> None:
        while True:
            # Cleared before the round: a status added during it wakes the next.
            self._wake.clear()
            try:
                if self.give_way is not None:
                    await self.give_way()
                await self.post_due()
                next_at = await self.storage.outbox.next_due_at()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("Posting commit statuses failed; retrying")
                next_at = self.clock() + self.first_retry
            wait = IDLE_WAIT if next_at is None else max(0.0, next_at - self.clock())
            # Not wait_for: on 3.11 it swallows a cancel that comes with a
            # wake, and closing would then wait forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(wait, IDLE_WAIT)):
                    await self._wake.wait()

    async def post_due(self) -> int:
        """Post every due status once; returns how many were delivered.

        A status whose commit and context has an older status still waiting
        (for its retry) is left for later, so that the order is kept.
        """
        async with self._posting:
            now = self.clock()
            waiting = await self.storage.outbox.due(math.inf, limit=SCAN_LIMIT)
            due = {item.id for item in waiting if item.next_attempt_at <= now}
            blocked: set[_Key] = set()
            delivered = 0
            for item in waiting:
                job = await self.storage.jobs.get_by_id(item.job_id)
                repository = (
                    None
                    if job is None
                    else await self.storage.repositories.get_by_id(job.repository_id)
                )
                if job is None or repository is None or job.sha is None:
                    await self._remove(item)  # nothing left to report on
                    continue
                key = (repository.id, job.sha, item.context)
                if key in blocked:
                    continue
                if item.id not in due:
                    blocked.add(key)
                    continue
                until = now + LEASE_SECONDS
                try:
                    if not await self._lease(item, now, until):
                        blocked.add(key)  # another instance is posting it
                        continue
                    posted = await self._post(item, job, repository)
                except asyncio.CancelledError:
                    # Stopping (even while the lease commits): hand our lease
                    # back at once, so the next instance posts without delay.
                    await asyncio.shield(self.storage.outbox.release(item.id, until))
                    raise
                if posted:
                    delivered += 1
                elif not await self._retry_or_drop(item, job, repository):
                    blocked.add(key)
            return delivered

    async def _lease(self, item: OutboxItem, now: float, until: float) -> bool:
        async with self.storage.db.transaction() as conn:
            return await self.storage.outbox.lease(conn, item.id, now, until)

    async def _post(
        self, item: OutboxItem, job: JobRecord, repository: RepositoryRecord
    ) -> bool:
        assert job.sha is not None
        try:
            posted = await self.github.set_commit_status(
                self.box.decrypt(repository.token_encrypted),
                repository.owner,
                repository.name,
                job.sha,
                state=item.state,
                context=item.context,
                target_url=item.target_url,
                description=item.description,
            )
        except Exception:
            logger.exception(
                "Cannot post the %s status of %s@%s",
                item.context,
                repository.full_name,
                job.sha,
            )
            posted = False
        if posted:
            await self._remove(item)
        return posted

    async def _retry_or_drop(
        self, item: OutboxItem, job: JobRecord, repository: RepositoryRecord
    ) -> bool:
        """After a failed attempt: True if the status was dropped for good."""
        attempts = item.attempts + 1
        if attempts >= self.max_attempts:
            logger.warning(
                "Dropping the %s=%s status of %s@%s after %d failed attempts",
                item.context,
                item.state,
                repository.full_name,
                job.sha,
                attempts,
            )
            await self._remove(item)
            return True
        delay = self.first_retry * 2**item.attempts
        async with self.storage.db.transaction() as conn:
            await self.storage.outbox.postpone(conn, item.id, self.clock() + delay)
        return False

    async def _remove(self, item: OutboxItem) -> None:
        async with self.storage.db.transaction() as conn:
            await self.storage.outbox.remove(conn, item.id)
