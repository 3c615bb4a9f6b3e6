"""GitHub failing on every call path: 502 answers, no lost jobs, late statuses.

The app runs on a loopback server with real SQLite and git; the fake GitHub
fails on demand: 5xx bursts, answers slower than ``github_timeout``, the
primary rate limit used up, a secondary rate limit with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from api.app import create_app
from api.github import GitHubClient
from api.jobs.statuses import StatusReporter
from api.keys import STORAGE
from api.settings import Settings
from api.storage.records import JobRecord, JobStatus, RepositoryStatus
from tests.fakes.github import FakeGitHub
from tests.support import (
    OWNER,
    READER,
    READER_TOKEN,
    REPO,
    USER,
    Client,
    GitRemote,
    auth_headers,
    push_payload,
    register,
    webhook_headers,
)

pytestmark = pytest.mark.integrational

AiohttpClient = Callable[..., Awaitable[Client]]
GITHUB_TIMEOUT = 0.25
FRESH = "newcomer"  # a user whose token nothing has cached yet
FRESH_TOKEN = "ghp_" + "N3wc0merToken" * 3
ORG = "acme"
ORG_ADMIN = "acme-admin"
ORG_ADMIN_TOKEN = "ghp_" + "Acme4dminToken" * 3


@dataclass(frozen=True)
class Fault:
    arm: Callable[[FakeGitHub], None]
    disarm: Callable[[FakeGitHub], None] = lambda github: None
    retry_after: bool = False  # the 502 must tell when to come back
    lasts: float = 0.0  # seconds until GitHub answers again by itself


FAULTS = {
    # More failures in a row than the client's 3 retries.
    "5xx burst": Fault(lambda github: github.fail_next(4, 502)),
    "answers slower than the timeout": Fault(
        lambda github: github.delay(4 * GITHUB_TIMEOUT),
        lambda github: github.delay(0),
    ),
    "primary rate limit used up": Fault(
        lambda github: github.rate_limit_exhausted(reset_in=2),
        retry_after=True,
        lasts=3.5,
    ),
    "secondary rate limit": Fault(
        lambda github: github.secondary_rate_limit(retry_after=1),
        retry_after=True,
        lasts=1.5,
    ),
}


@dataclass(frozen=True)
class CallPath:
    """An API call and the GitHub question that it asks first.

    Each path has a token of its own: a rate limit noted for one token stops
    the client before it asks GitHub, which would leave a fault armed.
    """

    method: str
    path: str
    headers: dict[str, str]
    json: dict[str, Any] | None
    ok: int  # the status once GitHub answers


CALL_PATHS = {
    "authenticate (viewer)": CallPath(
        "GET",
        f"/api/repositories/{OWNER}/{REPO}",
        auth_headers(FRESH, FRESH_TOKEN),
        None,
        200,
    ),
    "repository access (register)": CallPath(
        "POST",
        "/api/repositories",
        auth_headers(),
        {"owner": OWNER, "name": "other"},
        202,
    ),
    "repositories access (list)": CallPath(
        "GET", "/api/repositories", auth_headers(READER, READER_TOKEN), None, 200
    ),
    "owner administration (org env)": CallPath(
        "GET",
        f"/api/owners/{ORG}/env",
        auth_headers(ORG_ADMIN, ORG_ADMIN_TOKEN),
        None,
        200,
    ),
}


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """The app's GitHub client backs off from 0.05 s, not 0.5 s (same retries)."""
    defaults = GitHubClient.__init__.__kwdefaults__
    assert defaults is not None and "backoff_base" in defaults
    monkeypatch.setitem(defaults, "backoff_base", 0.05)


@pytest.fixture
def fault_settings(settings: Settings) -> Settings:
    return settings.with_overrides(github_timeout=GITHUB_TIMEOUT)


@pytest.fixture
async def app(
    aiohttp_client: AiohttpClient,
    fault_settings: Settings,
    github: FakeGitHub,
    remote: GitRemote,
) -> Client:
    github.add_user(FRESH, token=FRESH_TOKEN)
    github.add_repo(OWNER, "other", permissions={USER: "ADMIN"})
    GitRemote(remote.bare.parent.parent.parent, OWNER, "other").commit(
        {"Makefile": "test:\n\t@true\n"}
    )
    github.add_user(ORG_ADMIN, token=ORG_ADMIN_TOKEN)
    github.add_org(ORG, admins=(ORG_ADMIN,))
    client = await aiohttp_client(create_app(settings=fault_settings))
    await register(client)
    # Known (cached) identities: their calls ask GitHub the next question.
    for login, token in ((READER, READER_TOKEN), (ORG_ADMIN, ORG_ADMIN_TOKEN)):
        response = await client.get(
            f"/api/owners/{login}/env", headers=auth_headers(login, token)
        )
        assert response.status == 200, await response.text()
    return client


async def call(client: Client, call_path: CallPath) -> tuple[int, Any, dict[str, str]]:
    response = await client.request(
        call_path.method, call_path.path, headers=call_path.headers, json=call_path.json
    )
    return response.status, await response.json(), dict(response.headers)


@pytest.mark.parametrize("fault_name", list(FAULTS))
async def test_github_faults_answer_502_on_every_call_path(
    app: Client, github: FakeGitHub, fault_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    fault = FAULTS[fault_name]
    for name, call_path in CALL_PATHS.items():
        fault.arm(github)
        started = time.monotonic()
        try:
            status, body, headers = await call(app, call_path)
        finally:
            fault.disarm(github)
        assert status == 502, (name, status, body)
        assert isinstance(body.get("detail"), str) and body["detail"], (name, body)
        assert time.monotonic() - started < 15, name  # bounded, whatever GitHub does
        if fault.retry_after:
            assert int(headers["Retry-After"]) >= 1, (name, headers)
        elif "Retry-After" in headers:
            assert int(headers["Retry-After"]) >= 0, (name, headers)

    # Nothing was half done: the failed registration left no trace.
    storage = app.app[STORAGE]
    assert [r.name for r in await storage.repositories.list_all()] == [REPO]
    await asyncio.sleep(fault.lasts)
    for name, call_path in CALL_PATHS.items():
        status, body, _ = await call(app, call_path)
        assert status == call_path.ok, (name, status, body)
    assert "Unhandled error" not in caplog.text


async def test_github_failing_twice_is_retried_transparently(
    app: Client, github: FakeGitHub
) -> None:
    github.fail_next(2, 502)
    status, body, _ = await call(app, CALL_PATHS["authenticate (viewer)"])
    assert status == 200, body


async def test_github_html_errors_and_retry_after_reach_the_client(
    app: Client, github: FakeGitHub
) -> None:
    github.fail_next(4, 503, html=True)
    status, body, _ = await call(app, CALL_PATHS["repository access (register)"])
    assert status == 502 and isinstance(body["detail"], str), body
    github.fail_next(4, 503, retry_after=0.3)
    started = time.monotonic()
    status, body, headers = await call(app, CALL_PATHS["repositories access (list)"])
    assert status == 502, body
    assert headers["Retry-After"] == "1"  # whole seconds, at least 1
    assert time.monotonic() - started >= 0.9  # each retry waited as asked


# -- jobs and commit statuses while GitHub is away ---------------------------

OUTAGES: dict[str, Callable[[FakeGitHub], None]] = {
    # A count of failures: the fake recovers once they are used up.
    "5xx": lambda github: github.fail_next(12, 502),
    "rate limit": lambda github: github.rate_limit_exhausted(reset_in=3),
}


def fast_status_retries(
    monkeypatch: pytest.MonkeyPatch, *, first_retry: float, max_attempts: int = 8
) -> None:
    """The app's StatusReporter retries after ``first_retry`` s (not 5 s)."""
    defaults = StatusReporter.__init__.__kwdefaults__
    assert defaults is not None and {"first_retry", "max_attempts"} <= set(defaults)
    monkeypatch.setitem(defaults, "first_retry", first_retry)
    monkeypatch.setitem(defaults, "max_attempts", max_attempts)


async def push(client: Client, webhook: dict[str, str], sha: str) -> dict[str, Any]:
    body = push_payload(sha)
    raw = json.dumps(body).encode()
    path = "/api/" + webhook["url"].split("/api/", 1)[1]
    response = await client.post(
        path, data=raw, headers=webhook_headers(raw, webhook["secret"])
    )
    assert response.status == 202, await response.text()
    job: dict[str, Any] = await response.json()
    return job


async def wait_stored_job(client: Client, number: int) -> JobRecord:
    """The job once finished, read from storage (the API would ask GitHub)."""
    storage = client.app[STORAGE]
    repository = await storage.repositories.get(OWNER, REPO)
    assert repository is not None
    deadline = time.monotonic() + 30
    while True:
        job = await storage.jobs.get(repository.id, number)
        assert job is not None
        if job.status.is_finished:
            return job
        assert time.monotonic() < deadline, f"job #{number} still {job.status}"
        await asyncio.sleep(0.05)


async def wait_statuses(
    github: FakeGitHub, sha: str, final: str, timeout: float = 20.0
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        posted = [
            s
            for s in github.statuses
            if s["sha"] == sha and s["context"] == "hobotnica/test"
        ]
        if posted and posted[-1]["state"] == final:
            return posted
        assert time.monotonic() < deadline, f"statuses of {sha}: {posted}"
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("outage", list(OUTAGES))
async def test_jobs_run_while_github_is_away_and_statuses_follow(
    *,
    aiohttp_client: AiohttpClient,
    fault_settings: Settings,
    github: FakeGitHub,
    remote: GitRemote,
    monkeypatch: pytest.MonkeyPatch,
    outage: str,
) -> None:
    fast_status_retries(monkeypatch, first_retry=0.3)
    # Access checks run all along: a GitHub failure must never revoke.
    settings = fault_settings.with_overrides(access_check_interval=0.3)
    client = await aiohttp_client(create_app(settings=settings))
    webhook = (await register(client))["webhook"]
    sha = remote.commit({"README": "outage"}, "during the outage")
    calls_before = len(github.calls)

    OUTAGES[outage](github)
    job = await push(client, webhook, sha)  # webhooks need no GitHub
    done = await wait_stored_job(client, job["number"])
    assert done.status is JobStatus.SUCCESS, done
    assert done.sha == sha
    repository = await client.app[STORAGE].repositories.get(OWNER, REPO)
    assert repository is not None
    assert repository.status is RepositoryStatus.READY  # failures never revoke

    posted = await wait_statuses(github, sha, "success")
    assert len(github.calls) > calls_before + 1  # GitHub was asked, and refused
    states = [s["state"] for s in posted]
    assert states[-1] == "success" and set(states[:-1]) <= {"pending"}, states
    descriptions = [(s["state"], s["description"]) for s in posted]
    assert len(descriptions) == len(set(descriptions)), descriptions  # each once
    assert all(s["target_url"].endswith(f"/jobs/{job['number']}/log") for s in posted)
    repository = await client.app[STORAGE].repositories.get(OWNER, REPO)
    assert repository is not None and repository.status is RepositoryStatus.READY


async def test_statuses_are_dropped_with_a_log_line_when_github_stays_away(
    *,
    aiohttp_client: AiohttpClient,
    fault_settings: Settings,
    github: FakeGitHub,
    remote: GitRemote,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fast_status_retries(monkeypatch, first_retry=0.1, max_attempts=2)
    caplog.set_level(logging.WARNING, logger="api.jobs.statuses")
    client = await aiohttp_client(create_app(settings=fault_settings))
    webhook = (await register(client))["webhook"]
    sha = remote.commit({"README": "long outage"}, "during a long outage")

    github.rate_limit_exhausted(reset_in=60)
    job = await push(client, webhook, sha)
    assert (await wait_stored_job(client, job["number"])).status is JobStatus.SUCCESS
    storage = client.app[STORAGE]
    deadline = time.monotonic() + 15
    while await storage.outbox.next_due_at() is not None:
        assert time.monotonic() < deadline, "statuses still waiting"
        await asyncio.sleep(0.1)
    assert "Dropping the hobotnica/test=success status" in caplog.text
    assert [s for s in github.statuses if s["sha"] == sha] == []
    repository = await storage.repositories.get(OWNER, REPO)
    assert repository is not None and repository.status is RepositoryStatus.READY
