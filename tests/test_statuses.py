"""Commit statuses: the outbox, retries with backoff, order, descriptions."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.fernet import Fernet

from api.app import create_app
from api.crypto import SecretBox
from api.github import GitHubClient
from api.jobs.events import EventType, JobEvent
from api.jobs.statuses import MAX_ATTEMPTS, StatusReporter, describe, state_of
from api.settings import Settings
from api.storage import Storage
from api.storage.records import JobKind, JobRecord, JobStatus, RepositoryRecord
from tests.fakes.github import FakeGitHub
from tests.support import (
    TOKEN,
    Client,
    GitRemote,
    auth_headers,
    register,
    send_push,
    wait_for_job,
    wait_for_statuses,
)

SHA = "a" * 40
OTHER_SHA = "b" * 40
LOG_URL = "http://hobotnica.test/api/repositories/octocat/hello/jobs/{}/log"


class Clock:
    """Wall-clock time that tests can move forward (the outbox stamps rows
    with the real time; the reporter compares them with this clock)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


async def create_repository(
    storage: Storage, box: SecretBox, name: str, token_encrypted: str
) -> RepositoryRecord:
    async with storage.db.transaction() as conn:
        return await storage.repositories.create(
            conn,
            owner="octocat",
            name=name,
            branch="main",
            private=False,
            registered_by="octocat",
            token_encrypted=token_encrypted,
            webhook_uid=f"uid-{name}",
            webhook_secret_encrypted=box.encrypt("secret"),
        )


@dataclass
class Harness:
    """A reporter over a fresh database with octocat/hello registered."""

    settings: Settings
    storage: Storage
    box: SecretBox
    client: GitHubClient
    github: FakeGitHub
    clock: Clock
    repository: RepositoryRecord
    reporter: StatusReporter

    def another_reporter(self, **options: Any) -> StatusReporter:
        return StatusReporter(
            self.settings, self.storage, self.box, self.client, **options
        )

    async def add_repository(self, name: str, token_encrypted: str) -> RepositoryRecord:
        return await create_repository(self.storage, self.box, name, token_encrypted)

    async def queue(
        self,
        sha: str | None = SHA,
        kind: JobKind = JobKind.TEST,
        repository: RepositoryRecord | None = None,
    ) -> JobRecord:
        async with self.storage.db.transaction() as conn:
            job, _ = await self.storage.jobs.enqueue(
                conn,
                repository_id=(repository or self.repository).id,
                kind=kind,
                ref="main",
                sha=sha,
                trigger={"type": "push"},
            )
        return job

    async def start(self, job: JobRecord) -> JobRecord:
        claimed = await self.storage.jobs.claim("test-runner")
        assert claimed is not None
        assert claimed.id == job.id
        return claimed

    async def finish(
        self,
        job: JobRecord,
        status: JobStatus,
        exit_code: int | None = None,
        reason: str | None = None,
    ) -> JobRecord:
        async with self.storage.db.transaction() as conn:
            finished = await self.storage.jobs.finish(
                conn, job.id, status, exit_code=exit_code, reason=reason
            )
        assert finished is not None
        return finished

    async def emit(
        self,
        kind: EventType,
        job: JobRecord,
        repository: RepositoryRecord | None = None,
    ) -> None:
        await self.reporter.on_event(JobEvent(kind, job, repository or self.repository))

    async def waiting(self) -> int:
        """Statuses in the outbox, due or not."""
        return len(await self.storage.outbox.due(float("inf"), limit=1000))

    def posted(self) -> list[tuple[str, str, str]]:
        return [(s["sha"], s["context"], s["state"]) for s in self.github.statuses]


@pytest.fixture
async def h(
    settings: Settings, github: FakeGitHub, tmp_path: Path
) -> AsyncIterator[Harness]:
    storage = Storage(tmp_path / "hobotnica.sqlite3")
    await storage.open()
    box = SecretBox(Fernet.generate_key())
    clock = Clock()
    async with aiohttp.ClientSession() as session:
        client = GitHubClient(session, api_url=github.url, retries=0)
        reporter = StatusReporter(settings, storage, box, client, clock=clock)
        repository = await create_repository(storage, box, "hello", box.encrypt(TOKEN))
        harness = Harness(
            settings, storage, box, client, github, clock, repository, reporter
        )
        yield harness
        await reporter.close()
    await storage.close()


# -- the happy path -------------------------------------------------------------


async def test_job_events_become_statuses_in_order(h: Harness) -> None:
    job = await h.queue()
    await h.emit(EventType.QUEUED, job)
    running = await h.start(job)
    await h.emit(EventType.STARTED, running)
    await h.emit(EventType.FINISHED, await h.finish(running, JobStatus.SUCCESS, 0))

    assert await h.reporter.post_due() == 2
    assert h.posted() == [
        (SHA, "hobotnica/test", "pending"),
        (SHA, "hobotnica/test", "success"),
    ]
    assert {s["target_url"] for s in h.github.statuses} == {LOG_URL.format(1)}
    assert h.github.statuses[0]["description"] == "make test: queued as job #1"
    assert h.github.statuses[1]["description"].startswith("make test passed in ")
    # posted with the stored token
    assert {c.token for c in h.github.calls if "/statuses/" in c.path} == {TOKEN}
    assert await h.waiting() == 0
    assert await h.reporter.post_due() == 0


@pytest.mark.parametrize(
    ("status", "state"),
    [
        (JobStatus.FAILED, "failure"),
        (JobStatus.ERROR, "error"),
        (JobStatus.TIMED_OUT, "error"),
        (JobStatus.CANCELLED, "error"),
        (JobStatus.INTERRUPTED, "error"),
        (JobStatus.SUPERSEDED, "error"),
    ],
)
async def test_final_states(h: Harness, status: JobStatus, state: str) -> None:
    job = await h.queue(kind=JobKind.DEPLOY)
    await h.emit(EventType.FINISHED, await h.finish(await h.start(job), status, 2))
    assert await h.reporter.post_due() == 1
    assert h.posted() == [(SHA, "hobotnica/deploy", state)]
    assert h.github.statuses[0]["target_url"] == LOG_URL.format(1)


async def test_clone_jobs_and_jobs_without_a_sha_report_nothing(h: Harness) -> None:
    clone = await h.queue(sha=None, kind=JobKind.CLONE)
    await h.emit(EventType.QUEUED, clone)
    await h.emit(EventType.FINISHED, replace(clone, sha=SHA, status=JobStatus.SUCCESS))
    deploy = await h.queue(sha=None, kind=JobKind.DEPLOY)
    await h.emit(EventType.QUEUED, deploy)
    await h.emit(EventType.GIT_AUTH_FAILED, replace(deploy, sha=SHA))
    assert await h.waiting() == 0


# -- GitHub failing -------------------------------------------------------------


async def test_failed_status_is_retried_with_backoff(h: Harness) -> None:
    await h.emit(EventType.QUEUED, await h.queue())
    h.github.fail_next(3)
    for delay in (5.0, 10.0, 20.0):
        assert await h.reporter.post_due() == 0
        next_due = await h.storage.outbox.next_due_at()
        assert next_due == pytest.approx(h.clock() + delay, abs=0.5)
        h.clock.advance(delay - 1)
        calls = len(h.github.calls)
        assert await h.reporter.post_due() == 0  # not due yet: GitHub is not asked
        assert len(h.github.calls) == calls
        h.clock.advance(1)
    assert await h.reporter.post_due() == 1
    assert h.posted() == [(SHA, "hobotnica/test", "pending")]
    assert await h.waiting() == 0


async def test_status_is_dropped_with_a_log_line_after_max_attempts(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    await h.emit(EventType.QUEUED, await h.queue())
    h.github.fail_next(MAX_ATTEMPTS)
    caplog.set_level(logging.WARNING, logger="api.jobs.statuses")
    for _ in range(MAX_ATTEMPTS):
        assert await h.waiting() == 1
        assert await h.reporter.post_due() == 0
        h.clock.advance(10_000)
    assert await h.waiting() == 0
    assert h.github.statuses == []
    dropped = [r.getMessage() for r in caplog.records if "Dropping" in r.getMessage()]
    assert dropped == [
        f"Dropping the hobotnica/test=pending status of octocat/hello@{SHA}"
        f" after {MAX_ATTEMPTS} failed attempts"
    ]


async def test_a_retried_pending_never_overwrites_a_later_success(h: Harness) -> None:
    job = await h.queue()
    await h.emit(EventType.QUEUED, job)
    h.github.fail_next(1)
    assert await h.reporter.post_due() == 0
    await h.emit(
        EventType.FINISHED, await h.finish(await h.start(job), JobStatus.SUCCESS, 0)
    )
    assert await h.reporter.post_due() == 0  # waits behind the pending
    assert h.github.statuses == []
    h.clock.advance(5)
    assert await h.reporter.post_due() == 2
    assert [s["state"] for s in h.github.statuses] == ["pending", "success"]


async def test_other_commits_do_not_wait_behind_a_failing_one(h: Harness) -> None:
    await h.emit(EventType.QUEUED, await h.queue(sha=SHA))
    await h.emit(EventType.QUEUED, await h.queue(sha=OTHER_SHA))
    h.github.fail_next(1)
    assert await h.reporter.post_due() == 1
    assert h.posted() == [(OTHER_SHA, "hobotnica/test", "pending")]
    assert await h.waiting() == 1


async def test_a_dropped_status_lets_the_next_one_go(h: Harness) -> None:
    h.reporter = h.another_reporter(max_attempts=1, clock=h.clock)
    job = await h.queue()
    await h.emit(EventType.QUEUED, job)
    await h.emit(
        EventType.FINISHED, await h.finish(await h.start(job), JobStatus.FAILED, 2)
    )
    h.github.fail_next(1)
    assert await h.reporter.post_due() == 1
    assert h.posted() == [(SHA, "hobotnica/test", "failure")]
    assert await h.waiting() == 0


async def test_refused_status_is_retried_too(h: Harness) -> None:
    """A 404 (the token lost push rights for a while) is retried as well."""
    await h.emit(EventType.QUEUED, await h.queue())
    repo = h.github.find_repo("octocat", "hello")
    assert repo is not None
    repo.permissions["octocat"] = "READ"
    assert await h.reporter.post_due() == 0
    repo.permissions["octocat"] = "ADMIN"
    h.clock.advance(5)
    assert await h.reporter.post_due() == 1


async def test_a_broken_stored_token_does_not_block_the_rest(h: Harness) -> None:
    broken = await h.add_repository("broken", "not-a-fernet-token")
    await h.emit(EventType.QUEUED, await h.queue(repository=broken), broken)
    await h.emit(EventType.QUEUED, await h.queue(sha=OTHER_SHA))
    assert await h.reporter.post_due() == 1
    assert h.posted() == [(OTHER_SHA, "hobotnica/test", "pending")]
    assert await h.waiting() == 1  # retried later, dropped in the end


async def test_statuses_of_deleted_repositories_are_forgotten(h: Harness) -> None:
    await h.emit(EventType.QUEUED, await h.queue())
    async with h.storage.db.transaction() as conn:
        await h.storage.repositories.delete(conn, h.repository.id)
    assert await h.reporter.post_due() == 0
    assert await h.waiting() == 0
    assert h.github.statuses == []


async def test_late_events_of_deleted_jobs_are_dropped(h: Harness) -> None:
    job = await h.queue()
    async with h.storage.db.transaction() as conn:
        await h.storage.repositories.delete(conn, h.repository.id)
    await h.emit(EventType.FINISHED, replace(job, status=JobStatus.CANCELLED))
    assert await h.waiting() == 0


async def test_concurrent_rounds_post_each_status_once(h: Harness) -> None:
    for sha in (SHA, OTHER_SHA):
        await h.emit(EventType.QUEUED, await h.queue(sha=sha))
    counts = await asyncio.gather(*(h.reporter.post_due() for _ in range(3)))
    assert sorted(counts) == [0, 0, 2]
    assert sorted(h.posted()) == [
        (SHA, "hobotnica/test", "pending"),
        (OTHER_SHA, "hobotnica/test", "pending"),
    ]


async def test_two_instances_post_each_status_once(h: Harness) -> None:
    await h.emit(EventType.QUEUED, await h.queue())
    other_storage = Storage(h.storage.db.path)
    await other_storage.open()
    try:
        other = StatusReporter(h.settings, other_storage, h.box, h.client)
        counts = await asyncio.gather(h.reporter.post_due(), other.post_due())
    finally:
        await other_storage.close()
    assert sorted(counts) == [0, 1]
    assert h.posted() == [(SHA, "hobotnica/test", "pending")]


async def test_outbox_outlives_the_reporter(h: Harness) -> None:
    """What one process could not post, the next one posts."""
    await h.emit(EventType.QUEUED, await h.queue())
    assert await h.another_reporter().post_due() == 1
    assert h.posted() == [(SHA, "hobotnica/test", "pending")]


async def test_background_poster_posts_without_being_asked(h: Harness) -> None:
    h.reporter.start()
    await h.emit(EventType.QUEUED, await h.queue())
    deadline = time.monotonic() + 5
    while not h.github.statuses:
        assert time.monotonic() < deadline, "no status posted"
        await asyncio.sleep(0.01)
    await h.reporter.close()
    assert h.posted() == [(SHA, "hobotnica/test", "pending")]


async def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 5
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("poster", ["just woken", "posting"])
async def test_closing_posts_what_is_due_at_once(h: Harness, poster: str) -> None:
    """A job that ends while its server stops: its final status is posted
    by this server, not left for another one that may sleep IDLE_WAIT."""
    h.reporter.start()
    job = await h.queue()
    await h.emit(EventType.QUEUED, job)
    await wait_until(lambda: len(h.github.statuses) == 1)  # the poster is idle
    calls = len(h.github.calls)
    if poster == "posting":
        h.github.delay(0.3)
    finished = await h.finish(await h.start(job), JobStatus.SUCCESS, 0)
    await h.emit(EventType.FINISHED, finished)
    if poster == "posting":
        await wait_until(lambda: len(h.github.calls) > calls)
    started = time.monotonic()
    async with asyncio.timeout(10):
        await h.reporter.close()
    assert time.monotonic() - started < 2
    assert h.posted()[0] == (SHA, "hobotnica/test", "pending")
    assert h.posted()[-1] == (SHA, "hobotnica/test", "success")
    assert await h.waiting() == 0


GITHUB_DOWN: dict[str, Callable[[FakeGitHub], None]] = {
    "5xx": lambda github: github.fail_next(100, 502),
    "hanging": lambda github: github.delay(1.5),
}


@pytest.mark.parametrize("down", list(GITHUB_DOWN))
async def test_closing_while_github_is_down_stays_bounded(
    h: Harness, down: str
) -> None:
    """Closing gives up after ``close_pass`` s; what it could not post waits
    in the outbox, due at once for the next server."""
    GITHUB_DOWN[down](h.github)
    async with aiohttp.ClientSession() as session:
        # Retries with backoff and a timeout, like the app's client.
        client = GitHubClient(session, api_url=h.github.url, timeout=10)
        reporter = StatusReporter(h.settings, h.storage, h.box, client, close_pass=0.5)
        reporter.start()
        for sha in (SHA, OTHER_SHA):
            await reporter.on_event(
                JobEvent(EventType.QUEUED, await h.queue(sha=sha), h.repository)
            )
        started = time.monotonic()
        await reporter.close()
        assert time.monotonic() - started < 1.5
    assert await h.waiting() == 2
    next_due = await h.storage.outbox.next_due_at()
    assert next_due is not None and next_due <= time.time()


async def test_long_descriptions_are_cut_for_github(h: Harness) -> None:
    job = await h.queue()
    reason = "git fetch failed: " + "x" * 300
    await h.emit(EventType.FINISHED, await h.finish(job, JobStatus.ERROR, None, reason))
    assert await h.reporter.post_due() == 1
    description = h.github.statuses[0]["description"]
    assert description.startswith("make test: error")
    assert len(description) <= 140


# -- end to end: the app reports its jobs -------------------------------------------

AiohttpClient = Callable[..., Awaitable[Client]]


def blocking_makefile(release: Path) -> str:
    wait = f"\t@while [ ! -e {release} ]; do sleep 0.02; done\n"
    return f"test:\n{wait}\ndeploy:\n{wait}"


@pytest.mark.integrational
async def test_cancelled_job_is_an_error_status(
    client: Client, github: FakeGitHub, remote: GitRemote, tmp_path: Path
) -> None:
    remote.commit({"Makefile": blocking_makefile(tmp_path / "never")})
    webhook = (await register(client))["webhook"]
    sha = remote.commit({"a": "1"})
    _, job = await send_push(client, webhook, sha)
    await wait_for_job(client, job["number"], statuses={"running"})
    response = await client.post(
        f"/api/repositories/octocat/hello/jobs/{job['number']}/cancel",
        headers=auth_headers(),
    )
    assert response.status == 202
    assert (await wait_for_job(client, job["number"]))["status"] == "cancelled"
    posted = await wait_for_statuses(github, sha, "hobotnica/test", "error")
    assert posted[0]["state"] == "pending"
    assert posted[-1]["description"].startswith("make test: cancelled in ")


@pytest.mark.integrational
async def test_timed_out_job_is_an_error_status(
    aiohttp_client: AiohttpClient,
    settings: Settings,
    github: FakeGitHub,
    remote: GitRemote,
    tmp_path: Path,
) -> None:
    client = await aiohttp_client(
        create_app(settings=settings.with_overrides(job_timeout=0.6, kill_grace=0.2))
    )
    remote.commit({"Makefile": blocking_makefile(tmp_path / "never")})
    await register(client)
    sha = remote.commit({"a": "1"})
    response = await client.post(
        "/api/repositories/octocat/hello/deploys",
        json={"sha": sha},
        headers=auth_headers(),
    )
    number = (await response.json())["number"]
    assert (await wait_for_job(client, number))["status"] == "timed_out"
    posted = await wait_for_statuses(github, sha, "hobotnica/deploy", "error")
    assert "timed_out" in posted[-1]["description"]


@pytest.mark.integrational
async def test_job_interrupted_by_shutdown_is_reported_by_the_stopping_server(
    aiohttp_client: AiohttpClient,
    settings: Settings,
    github: FakeGitHub,
    remote: GitRemote,
    tmp_path: Path,
) -> None:
    """Posted before the server is gone: no successor has to post it."""
    client = await aiohttp_client(create_app(settings=settings))
    remote.commit({"Makefile": blocking_makefile(tmp_path / "never")})
    webhook = (await register(client))["webhook"]
    sha = remote.commit({"a": "1"})
    _, job = await send_push(client, webhook, sha)
    await wait_for_job(client, job["number"], statuses={"running"})
    await wait_for_statuses(github, sha, "hobotnica/test", "pending")
    await client.close()
    posted = [s for s in github.statuses if s["sha"] == sha]
    assert [s["state"] for s in posted] == ["pending", "error"]
    assert "interrupted" in posted[-1]["description"]
    successor = await aiohttp_client(create_app(settings=settings))
    assert (await wait_for_job(successor, job["number"]))["status"] == "interrupted"


# -- descriptions -----------------------------------------------------------------


def _job(**changes: Any) -> JobRecord:
    base = JobRecord(
        id=1,
        repository_id=1,
        number=7,
        kind=JobKind.TEST,
        status=JobStatus.QUEUED,
        ref="main",
        sha=SHA,
        exit_code=None,
        reason=None,
        trigger={},
        created_at=100.0,
        started_at=None,
        finished_at=None,
        runner=None,
        cancel_requested=False,
    )
    return replace(base, **changes)


@pytest.mark.parametrize(
    ("job", "state", "description"),
    [
        (_job(), "pending", "make test: queued as job #7"),
        (
            _job(status=JobStatus.RUNNING, started_at=101.0),
            "pending",
            "make test: running job #7",
        ),
        (
            _job(
                status=JobStatus.SUCCESS,
                exit_code=0,
                started_at=101.0,
                finished_at=103.25,
            ),
            "success",
            "make test passed in 2.2 s",
        ),
        (
            _job(
                kind=JobKind.DEPLOY,
                status=JobStatus.FAILED,
                exit_code=2,
                started_at=101.0,
                finished_at=104.0,
            ),
            "failure",
            "make deploy failed with exit code 2 in 3.0 s",
        ),
        (
            _job(
                status=JobStatus.ERROR,
                reason="git fetch failed (exit code 128)",
                started_at=101.0,
                finished_at=101.5,
            ),
            "error",
            "make test: error in 0.5 s (git fetch failed (exit code 128))",
        ),
        (
            _job(
                status=JobStatus.TIMED_OUT,
                reason="killed after the 60 s job timeout",
                started_at=100.0,
                finished_at=160.0,
            ),
            "error",
            "make test: timed_out in 60.0 s (killed after the 60 s job timeout)",
        ),
        (
            _job(status=JobStatus.SUPERSEDED, reason="superseded by job #9"),
            "error",
            "make test: superseded (superseded by job #9)",
        ),
        (
            _job(status=JobStatus.CANCELLED, started_at=100.0, finished_at=101.0),
            "error",
            "make test: cancelled in 1.0 s",
        ),
        (
            _job(status=JobStatus.INTERRUPTED, reason="stopped by a server shutdown"),
            "error",
            "make test: interrupted (stopped by a server shutdown)",
        ),
    ],
)
def test_state_and_description(job: JobRecord, state: str, description: str) -> None:
    assert state_of(job) == state
    assert describe(job) == description
