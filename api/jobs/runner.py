"""The scheduler: claims queued jobs and keeps the registry of running ones."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from collections.abc import AsyncIterator, Coroutine, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import async_timeout
from aiosqlite import Connection

from api.background import stop_task
from api.crypto import SecretBox
from api.errors import ServiceUnavailable
from api.jobs import environment, git, leftovers
from api.jobs.early_fetch import EarlyFetch
from api.jobs.events import EventType, JobEvent, JobEvents
from api.jobs.executor import (
    JobExecutor,
    JobPlan,
    JobResult,
    git_environment,
)
from api.jobs.instances import InstanceLock, is_alive, new_instance_id, others_alive
from api.settings import Settings
from api.storage import Storage
from api.storage.records import (
    JobKind,
    JobRecord,
    JobStatus,
    RepositoryRecord,
    RepositoryStatus,
)

logger = logging.getLogger(__name__)

POLL_INTERVAL = 1.0
ORPHAN_CHECK_INTERVAL = 10.0
# The longest that work giving way to job starts waits (a start that clones
# again can take long; commit statuses must not wait for it).
STARTS_WAIT = 2.0
# How long a drain waits for claims and starts under way (database writes).
SETTLE_WAIT = 10.0
TOOLS = ("git", "make")  # what every job runs


@dataclass
class RunningJob:
    plan: JobPlan
    task: asyncio.Task[None] | None = None
    output: asyncio.Event = field(default_factory=asyncio.Event)
    # Between its claim and its ``make``: the part a push waits for.
    starting: bool = True


def clone_dir(settings: Settings, repository_id: int) -> Path:
    return settings.clones_dir / str(repository_id)


def log_dir(settings: Settings, repository_id: int) -> Path:
    return settings.logs_dir / str(repository_id)


def log_path(settings: Settings, repository_id: int, number: int) -> Path:
    return log_dir(settings, repository_id) / f"{number}.log"


class JobRunner:
    """Runs up to ``max_jobs`` jobs at once, one per repository.

    Jobs are claimed from SQLite atomically, so several instances sharing one
    data dir never run the same job or two jobs of one repository.
    """

    def __init__(
        self,
        settings: Settings,
        storage: Storage,
        box: SecretBox,
        events: JobEvents,
        *,
        host_env: Mapping[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.storage = storage
        self.box = box
        self.events = events
        self.host_env = dict(os.environ if host_env is None else host_env)
        self.instance_id = new_instance_id()
        self.running: dict[int, RunningJob] = {}
        self.draining = False
        self._lock = InstanceLock(settings.instances_dir, self.instance_id)
        self._wake = asyncio.Event()
        self._new_job = False  # announced here: no need to ask the database
        self._reserved = 0  # places held for claims in callers' transactions
        self._starts_done = asyncio.Event()
        self._starts_done.set()
        self._loop_task: asyncio.Task[None] | None = None
        self._last_orphan_check = 0.0
        self._left_to_others = False  # see _can_run_jobs
        self._background: set[asyncio.Task[None]] = set()
        self._early: dict[int, EarlyFetch] = {}  # by repository id
        # Jobs between their claim and ``self.running`` (by job id): the
        # repository id and a future done when the start has settled.
        self._starting: dict[int, tuple[int, asyncio.Future[None]]] = {}
        self._removing: set[int] = set()  # repository ids: nothing starts

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        self._lock.acquire()
        await self.recover_orphans()
        self._loop_task = asyncio.create_task(self._loop(), name="job-runner")
        logger.info("Job runner %s started", self.instance_id)

    @property
    def accepting(self) -> bool:
        task = self._loop_task
        return not self.draining and task is not None and not task.done()

    def ensure_accepting(self) -> None:
        if self.draining:
            raise ServiceUnavailable(
                "Hobotnica is shutting down and takes no new jobs", retry_after=10
            )

    async def drain(self, grace: float) -> None:
        """Stop claiming; wait up to ``grace`` s, then interrupt the rest.

        Jobs claimed but not started yet go back to the queue (the next
        instance runs them). While the running ones end, a cancel or a
        removal that another instance records still stops them.
        """
        self.draining = True
        self._wake.set()
        self._update_starts()
        deadline = time.monotonic() + grace
        await self._settle_starts(min(deadline, time.monotonic() + SETTLE_WAIT))
        tasks = [r.task for r in self.running.values() if r.task is not None]
        if tasks:
            logger.info(
                "Draining: waiting up to %g s for %d running job(s)",
                grace,
                len(tasks),
            )
            if pending := await self._wait_running(tasks, deadline):
                logger.warning("Interrupting %d job(s) after %g s", len(pending), grace)
        await self.close()

    async def _settle_starts(self, deadline: float) -> None:
        """Let the loop end its round and every claim or start under way
        settle: once draining, a start hands its job back."""
        if self._loop_task is not None:
            with contextlib.suppress(TimeoutError):
                async with async_timeout.timeout(max(deadline - time.monotonic(), 0)):
                    await asyncio.shield(self._loop_task)
        # Reservations are a counter: poll (briefly, once per shutdown).
        while (self._reserved or self._starting) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)

    async def _wait_running(
        self, tasks: list[asyncio.Task[None]], deadline: float
    ) -> set[asyncio.Task[None]]:
        """Wait for ``tasks`` until ``deadline``; returns those not done."""
        pending = set(tasks)
        while pending and (remaining := deadline - time.monotonic()) > 0:
            _, pending = await asyncio.wait(
                pending, timeout=min(POLL_INTERVAL, remaining)
            )
            if pending:
                try:
                    await self._pick_up_remote_cancels()
                except Exception:
                    logger.exception("Cannot look for cancels while draining")
        return pending

    async def close(self) -> None:
        """Interrupt running jobs (queued ones stay queued) and stop."""
        self.draining = True
        await stop_task(self._loop_task)
        self._loop_task = None
        for repository_id in list(self._early):
            await self.drop_early_fetch(repository_id)
        for running in list(self.running.values()):
            running.plan.stop_status = JobStatus.INTERRUPTED
            running.plan.cancel.set()
        tasks = [r.task for r in self.running.values() if r.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=self.settings.kill_grace + 10)
        self._lock.release()

    def wake(self) -> None:
        self._wake.set()

    async def starts_done(self, limit: float = STARTS_WAIT) -> None:
        """Wait (at most ``limit`` s) until no announced job is on its way
        to ``make``: work that can wait (commit statuses) gives way to it."""
        with contextlib.suppress(TimeoutError):
            async with async_timeout.timeout(limit):
                await self._starts_done.wait()

    def _update_starts(self) -> None:
        # An announced job counts only while there is room to start it.
        room = len(self.running) + self._reserved < self.settings.max_jobs
        announced = self._new_job and room and not self.draining
        if announced or any(r.starting for r in self.running.values()):
            self._starts_done.clear()
        else:
            self._starts_done.set()

    # -- queueing and cancelling ------------------------------------------

    def announce(
        self,
        repository: RepositoryRecord,
        job: JobRecord,
        superseded: list[JobRecord] | None = None,
        *,
        claimed: bool = False,
    ) -> None:
        """Wake the loop for a committed new job, then tell subscribers.

        The loop goes first: it claims the job before the subscribers' own
        writes (commit statuses) take the database's write lock. A job the
        caller ``claimed`` (see :meth:`reserve`) needs no loop.
        """
        self._starts_done.clear()
        if not claimed:
            self._new_job = True
            self._wake.set()
        for old in superseded or ():
            self.events.emit(JobEvent(EventType.FINISHED, old, repository))
        self.events.emit(JobEvent(EventType.QUEUED, job, repository))

    # -- jobs claimed in a caller's transaction ----------------------------

    def reserve(self) -> bool:
        """Hold a place for a job that the caller claims for this instance
        in its own transaction, so that a push starts without a round of
        the loop. Give it back with :meth:`release` once the claimed job
        went through :meth:`start_claimed` (or nothing was claimed)."""
        if self.draining or self._loop_task is None:
            return False
        if len(self.running) + self._reserved >= self.settings.max_jobs:
            return False
        self._reserved += 1
        return True

    def release(self) -> None:
        self._reserved -= 1
        self._update_starts()

    async def start_claimed(
        self, job: JobRecord, repository: RepositoryRecord | None = None
    ) -> None:
        """Run a job claimed for this instance by a committed transaction."""
        if repository is not None and repository.id != job.repository_id:
            repository = None
        await self._start(job, repository)
        # The job's task runs up to its first process before the caller goes
        # on to shape its answer.
        await asyncio.sleep(0)

    # -- a push's fetch ahead of its job (api/jobs/early_fetch.py) ----------

    def fetch_early(self, repository: RepositoryRecord, sha: str) -> EarlyFetch | None:
        """Start the fetch of a push to the tracked branch before its job is
        recorded, if nothing else can be using the clone: the repository is
        ready, no job of it runs or starts here, there is room for its job,
        and no other instance is alive (each claims jobs on its own)."""
        if (
            self.draining
            or self._loop_task is None
            or repository.status is not RepositoryStatus.READY
            or repository.id in self._early
            or repository.id in self._removing
            or len(self.running) + self._reserved >= self.settings.max_jobs
            or any(r.plan.repository.id == repository.id for r in self.running.values())
            or any(owner == repository.id for owner, _ in self._starting.values())
        ):
            return None
        clone = clone_dir(self.settings, repository.id)
        if not git.is_clone(clone) or others_alive(
            self.settings.instances_dir, self.instance_id
        ):
            return None
        try:
            early = EarlyFetch.begin(
                repository_id=repository.id,
                clone=clone,
                url=self.settings.github_clone_url.format(
                    owner=repository.owner, name=repository.name
                ),
                branch=repository.branch,
                sha=sha,
                env=git_environment(
                    self.host_env,
                    self.box.decrypt(repository.token_encrypted),
                    early_fetch_marker(self.instance_id, repository.id),
                ),
                timeout=self.settings.job_timeout,
                kill_grace=self.settings.kill_grace,
            )
        except (OSError, ValueError) as err:
            # The job's own first step will meet (and report) the same.
            logger.info("No early fetch for %s: %s", repository.full_name, err)
            return None
        self._early[repository.id] = early
        return early

    async def discard_early_fetch(self, early: EarlyFetch) -> None:
        """Stop ``early`` unless a job has adopted it."""
        if self._early.get(early.repository_id) is early:
            await self.drop_early_fetch(early.repository_id)

    async def drop_early_fetch(self, repository_id: int) -> None:
        """Stop a repository's early fetch that no job has adopted."""
        early = self._early.pop(repository_id, None)
        if early is not None:
            await early.stop()

    async def cancel(
        self, repository: RepositoryRecord, job: JobRecord
    ) -> JobRecord | None:
        """Cancel a queued or running job; None if it has ended already."""
        async with self.storage.db.transaction() as conn:
            updated = await self.storage.jobs.request_cancel(conn, job.id)
        if updated is None:
            return None
        if updated.status is JobStatus.CANCELLED:
            self.events.emit(JobEvent(EventType.FINISHED, updated, repository))
        elif (running := self.running.get(job.id)) is not None:
            running.plan.stop_status = JobStatus.CANCELLED
            running.plan.cancel.set()
        return updated

    @contextlib.asynccontextmanager
    async def removing(self, repository: RepositoryRecord) -> AsyncIterator[None]:
        """Stop a repository's jobs and keep any other from starting here
        until the block (which removes the repository) has ended."""
        self._removing.add(repository.id)
        try:
            await self.drop_early_fetch(repository.id)
            for job in await self.storage.jobs.active_of_repository(repository.id):
                await self.cancel(repository, job)
            # A job claimed meanwhile (a push's) may still be starting.
            await self._starts_settled(repository.id)
            local = [
                running
                for running in self.running.values()
                if running.plan.repository.id == repository.id
            ]
            for running in local:
                running.plan.stop_status = JobStatus.CANCELLED
                running.plan.cancel.set()
            tasks = [r.task for r in local if r.task is not None]
            if tasks:
                await asyncio.wait(tasks, timeout=self.settings.kill_grace + 10)
            yield
            await self._starts_settled(repository.id)
        finally:
            self._removing.discard(repository.id)

    async def _starts_settled(self, repository_id: int) -> None:
        starting = [
            settled
            for owner, settled in self._starting.values()
            if owner == repository_id
        ]
        if starting:
            await asyncio.wait(starting)

    def output_event(self, job_id: int) -> asyncio.Event | None:
        running = self.running.get(job_id)
        return None if running is None else running.output

    # -- the loop ------------------------------------------------------------

    async def _loop(self) -> None:
        while not self.draining:
            # Cleared before looking, so a wake-up during the tick is not lost.
            self._wake.clear()
            try:
                await self._tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("Job runner tick failed; retrying")
            self._update_starts()
            with contextlib.suppress(TimeoutError):
                # Not wait_for: its extra task would cost a loop iteration.
                async with async_timeout.timeout(POLL_INTERVAL):
                    await self._wake.wait()

    async def _tick(self) -> None:
        now = time.monotonic()
        if now - self._last_orphan_check > ORPHAN_CHECK_INTERVAL:
            self._last_orphan_check = now
            await self.recover_orphans()
        if self.running:
            await self._pick_up_remote_cancels()
        while (
            len(self.running) + self._reserved < self.settings.max_jobs
            and not self.draining
        ):
            new_job, self._new_job = self._new_job, False
            if not new_job and not await self.storage.jobs.has_claimable():
                return
            if not self._can_run_jobs():
                return
            job = await self.storage.jobs.claim(self.instance_id)
            if job is None:
                return
            await self._start(job)

    def _can_run_jobs(self) -> bool:
        """False while a job here could not find git or make and another
        instance is alive to run it (an upgrade's new instance that its
        switch turns down, say). Alone, an instance takes jobs anyway, and
        they fail with the reason."""
        path = environment.clean_path(
            self.host_env.get("PATH", environment.DEFAULT_PATH), self.host_env
        )
        missing = [tool for tool in TOOLS if shutil.which(tool, path=path) is None]
        if missing and others_alive(self.settings.instances_dir, self.instance_id):
            if not self._left_to_others:
                logger.warning(
                    "Taking no jobs: %s not on PATH; another instance runs them",
                    " and ".join(missing),
                )
            self._left_to_others = True
            return False
        self._left_to_others = False
        return True

    async def _pick_up_remote_cancels(self) -> None:
        """Stop the jobs another instance cancelled or removed."""
        ids = list(self.running)
        for job_id in await self.storage.jobs.to_stop(self.instance_id, ids):
            running = self.running.get(job_id)
            if running is not None and not running.plan.cancel.is_set():
                running.plan.stop_status = JobStatus.CANCELLED
                running.plan.cancel.set()

    async def _start(
        self, job: JobRecord, repository: RepositoryRecord | None = None
    ) -> None:
        """Run a job claimed for this instance; never raises (a job that
        cannot start ends as ``error`` instead of staying ``running``)."""
        settled = asyncio.get_running_loop().create_future()
        self._starting[job.id] = (job.repository_id, settled)
        try:
            await self._start_claimed_job(job, repository)
        finally:
            del self._starting[job.id]
            settled.set_result(None)

    async def _start_claimed_job(
        self, job: JobRecord, repository: RepositoryRecord | None
    ) -> None:
        try:
            if repository is None:
                repository = await self.storage.repositories.get_by_id(
                    job.repository_id
                )
            if repository is None:
                return  # deleted meanwhile, its jobs with it
            plan = await self._plan(job, repository)
            early = self._early.get(job.repository_id)
            if early is not None and early.serves(job):
                plan.early_fetch = self._early.pop(job.repository_id)
            else:  # nothing else may run git beside the job
                await self.drop_early_fetch(job.repository_id)
            if job.repository_id in self._removing:
                if plan.early_fetch is not None:
                    await plan.early_fetch.stop()
                await self._finish(
                    job,
                    repository,
                    JobResult(JobStatus.CANCELLED, reason="the repository is removed"),
                )
                return
            if self.draining:  # claimed as a shutdown began: the next one runs it
                if plan.early_fetch is not None:
                    await plan.early_fetch.stop()
                await self._hand_back(job)
                return
        except Exception:
            logger.exception("Cannot prepare job #%s", job.number)
            if repository is not None:
                with contextlib.suppress(Exception):
                    await self._finish(
                        job,
                        repository,
                        JobResult(JobStatus.ERROR, reason="cannot prepare the job"),
                    )
            return
        running = RunningJob(plan)
        self.running[job.id] = running
        running.task = asyncio.create_task(
            self._run(running), name=f"job-{repository.full_name}#{job.number}"
        )
        self.events.emit(JobEvent(EventType.STARTED, job, repository))

    async def _hand_back(self, job: JobRecord) -> None:
        if await self.storage.jobs.hand_back(job.id, self.instance_id):
            logger.info(
                "Job #%s goes back to the queue: this server is stopping", job.number
            )

    async def _plan(self, job: JobRecord, repository: RepositoryRecord) -> JobPlan:
        layers: list[dict[str, str]] = []
        secrets: list[str] = []
        for entries in await self.storage.env.job_layers(
            repository.owner, repository.id
        ):
            layer = {}
            for entry in entries:
                value = (
                    self.box.decrypt(entry.value) if entry.is_secret else entry.value
                )
                if entry.is_secret:
                    secrets.append(value)
                layer[entry.name] = value
            layers.append(layer)
        return JobPlan(
            job=job,
            repository=repository,
            token=self.box.decrypt(repository.token_encrypted),
            clone_url=self.settings.github_clone_url.format(
                owner=repository.owner, name=repository.name
            ),
            clone_dir=clone_dir(self.settings, repository.id),
            log_path=log_path(self.settings, repository.id, job.number),
            env_layers=layers,
            secrets=secrets,
            timeout=self.settings.job_timeout,
            kill_grace=self.settings.kill_grace,
            log_max_bytes=self.settings.log_max_bytes,
            marker=job_marker(job),
        )

    async def _run(self, running: RunningJob) -> None:
        plan = running.plan
        job = plan.job

        def on_sha(sha: str) -> None:
            if sha == job.sha:
                return
            self._spawn(self._store(job.id, self.storage.jobs.record_sha(job.id, sha)))
            if job.sha is None and job.kind is not JobKind.CLONE:
                resolved = replace(job, sha=sha, status=JobStatus.RUNNING)
                self.events.emit(
                    JobEvent(EventType.RESOLVED, resolved, plan.repository)
                )

        def on_output() -> None:
            running.output.set()

        def on_make() -> None:
            running.starting = False
            self._update_starts()

        try:
            executor = JobExecutor(
                plan,
                host_env=self.host_env,
                on_sha=on_sha,
                on_output=on_output,
                on_make=on_make,
            )
            result = await executor.run()
        except Exception:
            logger.exception(
                "Job #%s of %s crashed", job.number, plan.repository.full_name
            )
            result = JobResult(JobStatus.ERROR, reason="internal error")
        finally:
            if plan.early_fetch is not None:  # the job ended before adopting it
                await plan.early_fetch.stop()
            # Whatever left the job's process group (setsid) goes too.
            with contextlib.suppress(OSError):
                await asyncio.to_thread(leftovers.kill_marked, plan.marker, exact=True)
            if self.running.get(job.id) is running:
                del self.running[job.id]
            running.output.set()
            self._update_starts()
        await asyncio.shield(self._finish(job, plan.repository, result))
        self._wake.set()

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _store(self, job_id: int, write: Coroutine[Any, Any, None]) -> None:
        try:
            await write
        except Exception:
            logger.exception("Cannot record job %s detail", job_id)

    async def _finish(
        self, job: JobRecord, repository: RepositoryRecord, result: JobResult
    ) -> None:
        async with self.storage.db.transaction() as conn:
            finished = await self.storage.jobs.finish(
                conn,
                job.id,
                result.status,
                exit_code=result.exit_code,
                reason=result.reason,
                sha=result.sha,
            )
            retry = None
            if finished is not None and job.kind is JobKind.CLONE:
                retry = await self._after_clone(conn, finished, repository)
            elif (
                finished is not None
                and repository.status is RepositoryStatus.FAILED
                and finished.status in (JobStatus.SUCCESS, JobStatus.FAILED)
            ):
                # Its clone failed (or was cancelled); this job cloned again
                # and got as far as make.
                await self.storage.repositories.set_status(
                    conn,
                    repository.id,
                    RepositoryStatus.READY,
                    only_if=RepositoryStatus.FAILED,
                )
        if finished is None:
            return
        if retry is not None:
            self.announce(repository, retry)
        logger.info(
            "Job #%s (%s) of %s ended %s",
            job.number,
            job.kind,
            repository.full_name,
            finished.status,
        )
        self.events.emit(JobEvent(EventType.FINISHED, finished, repository))
        if result.git_auth_failed:
            self.events.emit(JobEvent(EventType.GIT_AUTH_FAILED, finished, repository))

    async def _after_clone(
        self, conn: Connection, clone: JobRecord, repository: RepositoryRecord
    ) -> JobRecord | None:
        """Settle the repository's status; queue the clone again if cut short.

        Only while the repository is still ``cloning``: a revoke (which
        cancels the clone) has the last word.
        """
        status = await self.storage.repositories.status_in(conn, repository.id)
        if status is not RepositoryStatus.CLONING:
            return None
        if clone.status is JobStatus.INTERRUPTED:
            retry, _ = await self.storage.jobs.enqueue(
                conn,
                repository_id=repository.id,
                kind=JobKind.CLONE,
                ref=clone.ref,
                sha=None,
                trigger={**clone.trigger, "retry_of": clone.number},
            )
            return retry
        ok = clone.status is JobStatus.SUCCESS
        await self.storage.repositories.set_status(
            conn,
            repository.id,
            RepositoryStatus.READY if ok else RepositoryStatus.FAILED,
            None if ok else clone.reason,
        )
        return None

    # -- recovery ---------------------------------------------------------------

    async def recover_orphans(self) -> int:
        """Mark ``interrupted`` the running jobs of processes that died."""
        count = 0
        dead: set[str] = set()
        for job in await self.storage.jobs.running():
            if job.runner == self.instance_id:
                continue
            if job.runner and is_alive(self.settings.instances_dir, job.runner):
                continue
            if job.runner and job.runner not in dead:
                dead.add(job.runner)
                # Its git or make would otherwise go on in the clone.
                await asyncio.to_thread(leftovers.kill_marked, f"{job.runner}/")
            repository = await self.storage.repositories.get_by_id(job.repository_id)
            if repository is None:
                continue
            logger.warning(
                "Job #%s of %s was left running by %s: interrupted",
                job.number,
                repository.full_name,
                job.runner,
            )
            await self._finish(
                job,
                repository,
                JobResult(
                    JobStatus.INTERRUPTED, reason="the server running it stopped"
                ),
            )
            count += 1
        return count


def job_marker(job: JobRecord) -> str:
    """The ``MARKER_NAME`` value that tells this job's processes from others."""
    return f"{job.runner}/{job.id}"


def early_fetch_marker(runner: str, repository_id: int) -> str:
    """The ``MARKER_NAME`` value of a fetch started before its job existed."""
    return f"{runner}/early-{repository_id}"
