"""A push's fetch starts with its delivery; its job adopts it (or it stops).

Real git, real make, real processes; the fetches a job starts itself are
told from the early ones by the module that ran them.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest

from api.jobs import executor, process, started
from api.jobs import git as git_steps
from api.jobs.early_fetch import EarlyFetch
from api.jobs.instances import InstanceLock, others_alive
from api.jobs.leftovers import marked_processes
from api.jobs.process import Outcome
from api.jobs.runner import early_fetch_marker
from api.keys import RUNNER, STORAGE
from api.storage.records import JobKind
from tests.support import (
    Client,
    GitRemote,
    auth_headers,
    git,
    push_payload,
    register,
    send_push,
    wait_for_job,
    webhook_headers,
)

pytestmark = pytest.mark.integrational

JOBS = "/api/repositories/octocat/hello/jobs"


@pytest.fixture
def job_fetches(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The git fetches jobs start themselves (not adopted early ones)."""
    recorded: list[list[str]] = []

    async def recording(argv: list[str], **kwargs: Any) -> Any:
        if "fetch" in argv:
            recorded.append(list(argv))
        return await process.run_process(argv, **kwargs)

    monkeypatch.setattr(executor, "run_process", recording)
    return recorded


@pytest.fixture
def early_fetches(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> list[EarlyFetch | None]:
    """What each call of the runner's ``fetch_early`` returned."""
    runner = client.app[RUNNER]
    returned: list[EarlyFetch | None] = []
    original = runner.fetch_early

    def recording(*args: Any) -> EarlyFetch | None:
        early = original(*args)
        returned.append(early)
        return early

    monkeypatch.setattr(runner, "fetch_early", recording)
    return returned


async def log_of(client: Client, number: int) -> str:
    response = await client.get(f"{JOBS}/{number}/log", headers=auth_headers())
    assert response.status == 200
    return await response.text()


async def test_the_push_job_adopts_the_fetch_started_with_its_delivery(
    client: Client,
    remote: GitRemote,
    early_fetches: list[EarlyFetch | None],
    job_fetches: list[list[str]],
) -> None:
    webhook = (await register(client))["webhook"]
    await wait_for_job(client, 1)
    sha = remote.commit({"README": "early"})
    status, answer = await send_push(client, webhook, sha)
    assert status == 202
    job = await wait_for_job(client, int(answer["number"]))
    assert job["status"] == "success", job
    assert job["sha"] == sha
    [early] = early_fetches
    assert early is not None and early.sha == sha
    assert job_fetches == []  # the job started no fetch of its own
    log = await log_of(client, job["number"])
    fetch_lines = [line for line in log.splitlines() if " fetch " in line]
    assert len(fetch_lines) == 1 and sha in fetch_lines[0], log
    assert log.index(fetch_lines[0]) < log.index("$ make test")
    assert client.app[RUNNER]._early == {}


async def test_an_early_fetch_no_job_adopts_is_stopped(
    client: Client,
    remote: GitRemote,
    early_fetches: list[EarlyFetch | None],
) -> None:
    """A redelivery queues nothing: its early fetch ends with the request."""
    runner = client.app[RUNNER]
    webhook = (await register(client))["webhook"]
    await wait_for_job(client, 1)
    sha = remote.commit({"README": "again"})
    delivery = "redelivered-1"
    status, first = await send_push(client, webhook, sha, delivery=delivery)
    assert status == 202
    await wait_for_job(client, int(first["number"]))
    status, again = await send_push(client, webhook, sha, delivery=delivery)
    assert status == 202 and again["number"] == first["number"]
    assert [early is not None for early in early_fetches] == [True, True]
    assert runner._early == {}
    stored = await client.app[STORAGE].repositories.get("octocat", "hello")
    assert stored is not None
    marker = early_fetch_marker(runner.instance_id, stored.id)
    assert marked_processes(marker) == []
    jobs = await (await client.get(JOBS, headers=auth_headers())).json()
    assert jobs["total"] == 2
    # The clone is fine for the next push.
    status, answer = await send_push(client, webhook, remote.commit({"n": "3"}))
    assert (await wait_for_job(client, int(answer["number"])))["status"] == "success"


async def test_no_early_fetch_while_another_instance_is_alive(
    client: Client,
    remote: GitRemote,
    early_fetches: list[EarlyFetch | None],
    job_fetches: list[list[str]],
) -> None:
    runner = client.app[RUNNER]
    webhook = (await register(client))["webhook"]
    await wait_for_job(client, 1)
    other = InstanceLock(runner.settings.instances_dir, "other-instance")
    other.acquire()
    try:
        assert others_alive(runner.settings.instances_dir, runner.instance_id)
        sha = remote.commit({"README": "two instances"})
        status, answer = await send_push(client, webhook, sha)
        assert status == 202
        job = await wait_for_job(client, int(answer["number"]))
    finally:
        other.release()
    assert job["status"] == "success"
    assert early_fetches == [None]
    assert len(job_fetches) == 1 and sha in job_fetches[0]
    assert not others_alive(runner.settings.instances_dir, runner.instance_id)


async def test_an_older_queued_job_goes_first_and_the_early_fetch_stops(
    client: Client,
    remote: GitRemote,
    early_fetches: list[EarlyFetch | None],
    job_fetches: list[list[str]],
) -> None:
    """The claim takes the repository's oldest queued job: the early fetch
    of the push is not for it, so it stops before that job runs git."""
    runner = client.app[RUNNER]
    storage = client.app[STORAGE]
    repository = await register(client)
    await wait_for_job(client, 1)
    deployed = remote.commit(
        {"Makefile": "deploy:\n\t@echo deployed\ntest:\n\t@true\n"}
    )
    stored = await storage.repositories.get("octocat", "hello")
    assert stored is not None
    # Queued without waking the runner, as if its loop had not come round.
    async with storage.db.transaction() as conn:
        older, _ = await storage.jobs.enqueue(
            conn,
            repository_id=stored.id,
            kind=JobKind.DEPLOY,
            ref="main",
            sha=deployed,
            trigger={"type": "api", "user": "octocat"},
        )
    pushed = remote.commit({"README": "after the deploy"})
    body = json.dumps(push_payload(pushed)).encode()
    path = repository["webhook"]["url"].split("/api/", 1)[1]
    response = await client.post(
        f"/api/{path}",
        data=body,
        headers=webhook_headers(body, repository["webhook"]["secret"]),
    )
    assert response.status == 202
    number = int((await response.json())["number"])
    deploy = await wait_for_job(client, older.number)
    test = await wait_for_job(client, number)
    assert (deploy["status"], test["status"]) == ("success", "success")
    assert str(test["started_at"]) >= str(deploy["finished_at"])
    [early] = early_fetches
    assert early is not None and early.sha == pushed
    # Both jobs fetched for themselves: the early fetch served neither.
    assert [pushed in argv for argv in job_fetches] == [False, True]
    assert "deployed" in await log_of(client, older.number)
    assert runner._early == {}


def test_others_alive_sees_only_live_locks_of_other_instances(tmp_path: Path) -> None:
    folder = tmp_path / "instances"
    assert not others_alive(folder, "me")
    mine = InstanceLock(folder, "me")
    mine.acquire()
    assert not others_alive(folder, "me")
    (folder / "dead.lock").write_text(f"{os.getpid()}\n")  # nobody holds it
    assert not others_alive(folder, "me")
    assert not (folder / "dead.lock").exists()  # tidied up
    other = InstanceLock(folder, "other")
    other.acquire()
    assert others_alive(folder, "me")
    assert others_alive(folder, "other")
    other.release()
    mine.release()


def slow_upload_pack(monkeypatch: pytest.MonkeyPatch, command: str) -> None:
    """Fetches run ``command`` as the remote's upload-pack: a slow network.
    In the config every job restores (a job's make cannot set it)."""
    remote_section = '[remote "origin"]\n'
    monkeypatch.setattr(
        git_steps,
        "_CONFIG",
        git_steps._CONFIG.replace(
            remote_section, f'{remote_section}\tuploadpack = "{command}"\n'
        ),
    )


@pytest.fixture
def hanging_clone(
    tmp_path: Path, remote: GitRemote, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """A clone whose fetches hang (its remote's upload-pack sleeps)."""
    clone = tmp_path / "clone"
    git("clone", "-q", str(remote.bare), str(clone))
    slow_upload_pack(monkeypatch, "sleep 30; :")
    return clone


def begin(clone: Path, sha: str, marker: str = "test") -> EarlyFetch:
    url = git("-C", str(clone), "remote", "get-url", "origin")
    return EarlyFetch.begin(
        repository_id=1,
        clone=clone,
        url=url,
        branch="main",
        sha=sha,
        env={**os.environ, executor.MARKER_NAME: marker},
        timeout=60,
        kill_grace=1.0,
    )


@pytest.fixture
async def hanging(hanging_clone: Path, remote: GitRemote) -> tuple[EarlyFetch, str]:
    """An early fetch that hangs, running, and its processes' marker."""
    marker = f"test-{os.getpid()}/{hanging_clone}"
    early = begin(hanging_clone, remote.commit({"n": "hang"}), marker)
    await asyncio.sleep(0.2)
    assert marked_processes(marker)
    return early, marker


async def test_cancelling_the_adopting_job_stops_the_fetch(
    hanging: tuple[EarlyFetch, str],
) -> None:
    early, marker = hanging
    cancel = asyncio.Event()
    output = bytearray()
    joined = asyncio.ensure_future(early.join(output.extend, cancel))
    await asyncio.sleep(0.1)
    assert not joined.done()
    cancel.set()
    result = await asyncio.wait_for(joined, 10)
    assert result.outcome is Outcome.CANCELLED
    assert marked_processes(marker) == []


async def test_stopping_an_unadopted_fetch_leaves_no_process(
    hanging: tuple[EarlyFetch, str],
) -> None:
    early, marker = hanging
    await asyncio.wait_for(early.stop(), 10)
    assert marked_processes(marker) == []


async def test_output_before_adoption_is_kept_up_to_a_bound(
    tmp_path: Path, remote: GitRemote, monkeypatch: pytest.MonkeyPatch
) -> None:
    clone = tmp_path / "clone"
    git("clone", "-q", str(remote.bare), str(clone))
    outputs = []
    for bound in (started.MAX_BUFFERED, 8):
        monkeypatch.setattr(started, "MAX_BUFFERED", bound)
        sha = remote.commit({"n": str(bound)})
        early = begin(clone, sha)
        tracking = ["-C", str(clone), "rev-parse", "refs/remotes/origin/main"]
        for _ in range(500):  # the fetch has printed and updated the ref
            if git(*tracking) == sha:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)
        output = bytearray()
        result = await early.join(output.extend, asyncio.Event())
        assert (result.outcome, result.returncode) == (Outcome.EXITED, 0)
        outputs.append(bytes(output))
    kept, bounded = outputs
    assert b"From " in kept and b"dropped" not in kept
    assert b"From " not in bounded
    assert bounded.endswith(b" bytes of output dropped\n")


async def test_the_clean_runs_beside_the_fetch(
    client: Client, remote: GitRemote, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a (slow) fetch runs, the work tree is already being cleaned;
    the log shows the fetch, then the clean, then the checkout."""
    webhook = (await register(client))["webhook"]
    await wait_for_job(client, 1)
    stored = await client.app[STORAGE].repositories.get("octocat", "hello")
    assert stored is not None
    clone = client.app[RUNNER].settings.data_dir / "clones" / str(stored.id)
    release = tmp_path / "release"
    upload_pack = f"while [ ! -e {release} ]; do sleep 0.02; done; git-upload-pack"
    slow_upload_pack(monkeypatch, upload_pack)
    leftover = clone / "build-output.o"
    leftover.write_text("from the last job")
    sha = remote.commit({"README": "beside"})
    status, answer = await send_push(client, webhook, sha)
    assert status == 202
    for _ in range(500):
        if not leftover.exists():
            break
        await asyncio.sleep(0.02)
    assert not leftover.exists()  # cleaned while the fetch still waits
    release.touch()
    job = await wait_for_job(client, int(answer["number"]))
    assert job["status"] == "success", job
    log = await log_of(client, job["number"])
    steps = [line for line in log.splitlines() if line.startswith("$ ")]
    assert [step.split()[4] for step in steps[:3]] == ["fetch", "clean", "checkout"]
    assert "Removing build-output.o" in log
    assert log.index("Removing build-output.o") > log.index(steps[1])


async def test_no_early_fetch_while_a_job_of_the_repository_is_starting(
    client: Client,
    remote: GitRemote,
    early_fetches: list[EarlyFetch | None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A deploy is claimed and still being planned (not running yet): a push
    now must not start git in the clone beside it."""
    repository = await register(client)
    env = client.app[STORAGE].env
    job_layers = env.job_layers
    planning = asyncio.Event()

    async def slow_job_layers(*args: Any) -> Any:
        planning.set()
        await asyncio.sleep(0.5)
        return await job_layers(*args)

    monkeypatch.setattr(env, "job_layers", slow_job_layers)
    response = await client.post(
        "/api/repositories/octocat/hello/deploys", json={}, headers=auth_headers()
    )
    assert response.status == 202
    await asyncio.wait_for(planning.wait(), 10)
    status, _ = await send_push(client, repository["webhook"], remote.commit({}))
    assert status == 202
    assert early_fetches == [None]
    assert (await wait_for_job(client, 2))["status"] == "success"
    assert (await wait_for_job(client, 3))["status"] == "success"
