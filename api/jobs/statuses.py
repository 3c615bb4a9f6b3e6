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
import time

from api.crypto import SecretBox
from api.github import GitHubClient
from api.jobs.events import EventType, JobEvent
from api.jobs.serializers import job_url
from api.settings import Settings
from api.storage import Storage
from api.storage.records import JobKind, JobRecord, JobStatus, OutboxItem

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 8
FIRST_RETRY = 5.0
IDLE_WAIT = 30.0

STATE_OF = {
    JobStatus.QUEUED: "pending",
    JobStatus.RUNNING: "pending",
    JobStatus.SUCCESS: "success",
    JobStatus.FAILED: "failure",
}


def describe(job: JobRecord) -> str:
    target = f"make {job.kind}"
    took = f" in {job.duration:.1f} s" if job.duration is not None else ""
    match job.status:
        case JobStatus.QUEUED:
            return f"{target}: queued as job #{job.number}"
        case JobStatus.RUNNING:
            return f"{target}: running"
        case JobStatus.SUCCESS:
            return f"{target} passed{took}"
        case JobStatus.FAILED:
            return f"{target} failed with exit code {job.exit_code}{took}"
        case _:
            return f"{target}: {job.status}" + (
                f" ({job.reason})" if job.reason else ""
            )


class StatusReporter:
    def __init__(
        self,
        settings: Settings,
        storage: Storage,
        box: SecretBox,
        github: GitHubClient,
    ) -> None:
        self.settings = settings
        self.storage = storage
        self.box = box
        self.github = github
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._post_loop(), name="commit-statuses")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def on_event(self, event: JobEvent) -> None:
        job = event.job
        if job.kind is JobKind.CLONE or job.sha is None:
            return
        if event.type not in (EventType.QUEUED, EventType.STARTED, EventType.FINISHED):
            return
        async with self.storage.db.transaction() as conn:
            await self.storage.outbox.add(
                conn,
                job_id=job.id,
                state=STATE_OF.get(job.status, "error"),
                context=f"hobotnica/{job.kind}",
                description=describe(job),
                target_url=job_url(self.settings.base_url, event.repository, job.number)
                + "/log",
            )
        self._wake.set()

    async def _post_loop(self) -> None:
        while True:
            try:
                await self.post_due()
                next_at = await self.storage.outbox.next_due_at()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("Posting commit statuses failed; retrying")
                next_at = time.time() + FIRST_RETRY
            wait = IDLE_WAIT if next_at is None else max(0.0, next_at - time.time())
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), min(wait, IDLE_WAIT))

    async def post_due(self) -> int:
        """Post every due status once; returns how many were delivered."""
        delivered = 0
        for item in await self.storage.outbox.due(time.time()):
            if await self._post(item):
                delivered += 1
        return delivered

    async def _post(self, item: OutboxItem) -> bool:
        job = await self.storage.jobs.get_by_id(item.job_id)
        repository = (
            None
            if job is None
            else await self.storage.repositories.get_by_id(job.repository_id)
        )
        posted = False
        if job is not None and repository is not None and job.sha:
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
        async with self.storage.db.transaction() as conn:
            if posted or job is None or repository is None:
                await self.storage.outbox.remove(conn, item.id)
            elif item.attempts + 1 >= MAX_ATTEMPTS:
                logger.warning(
                    "Dropping %s status of %s@%s after %d attempts",
                    item.context,
                    repository.full_name,
                    job.sha,
                    item.attempts + 1,
                )
                await self.storage.outbox.remove(conn, item.id)
            else:
                delay = FIRST_RETRY * 2**item.attempts
                await self.storage.outbox.postpone(conn, item.id, time.time() + delay)
        return posted
