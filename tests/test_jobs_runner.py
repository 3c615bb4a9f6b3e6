"""The job runner end to end: real git, real make, real processes."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from api.app import create_app
from api.keys import GITHUB, RUNNER, SECRET_BOX, STORAGE
from api.repositories.access import AccessChecker
from api.settings import Settings
from tests.fakes.github import FakeGitHub
from tests.support import (
    TOKEN,
    Client,
    GitRemote,
    auth_headers,
    only_git_on_path,
    register,
    send_push,
    wait_for_job,
    webhook_headers,
)

pytestmark = pytest.mark.integrational

JOBS = "/api/repositories/octocat/hello/jobs"


def processes_with(marker: bytes) -> list[int]:
    """Pids whose command line contains ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().split()[2]
        except OSError:
            continue
        if marker in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


async def deploy(client: Client, **body: object) -> dict[str, Any]:
    response = await client.post(
        "/api/repositories/octocat/hello/deploys", json=body, headers=auth_headers()
    )
    assert response.status == 202, await response.text()
    data: dict[str, Any] = await response.json()
    return data


async def test_failing_make_is_failed_with_make_exit_code(
    client: Client, remote: GitRemote
) -> None:
    remote.commit({"Makefile": "deploy:\n\t@echo about to fail\n\tfalse\n"})
    await register(client)
    job = await wait_for_job(client, int((await deploy(client))["number"]))
    assert job["status"] == "failed"
    assert job["exit_code"] == 2
    log = await (await client.get(f"{JOBS}/2/log", headers=auth_headers())).text()
    assert "about to fail" in log


async def test_jobs_list_newest_first_with_filters(
    client: Client, remote: GitRemote
) -> None:
    await register(client)
    for _ in range(3):
        await wait_for_job(client, int((await deploy(client))["number"]))
    everything = await (await client.get(JOBS, headers=auth_headers())).json()
    assert everything["total"] == 4
    assert [j["number"] for j in everything["items"]] == [4, 3, 2, 1]
    clones = await (
        await client.get(f"{JOBS}?kind=clone", headers=auth_headers())
    ).json()
    assert [j["number"] for j in clones["items"]] == [1]
    page = await (
        await client.get(f"{JOBS}?limit=2&offset=1", headers=auth_headers())
    ).json()
    assert [j["number"] for j in page["items"]] == [3, 2]
    assert page["total"] == 4
    bad = await client.get(f"{JOBS}?limit=0", headers=auth_headers())
    assert bad.status == 422
    missing = await client.get(f"{JOBS}/99", headers=auth_headers())
    assert missing.status == 404


async def test_jobs_of_one_repository_run_one_at_a_time(
    client: Client, remote: GitRemote
) -> None:
    remote.commit({"Makefile": "deploy:\n\tsleep 0.3\n"})
    await register(client)
    numbers = [int((await deploy(client))["number"]) for _ in range(3)]
    jobs = [await wait_for_job(client, n) for n in numbers]
    assert [j["status"] for j in jobs] == ["success"] * 3
    for earlier, later in itertools.pairwise(jobs):
        assert str(later["started_at"]) >= str(earlier["finished_at"])


@pytest.fixture
def limited_settings(settings: Settings) -> Settings:
    return settings.with_overrides(max_jobs=2)


async def test_at_most_max_jobs_run_at_once(
    aiohttp_client: object,
    limited_settings: Settings,
    github: FakeGitHub,
    tmp_path: Path,
) -> None:
    client: Client = await aiohttp_client(create_app(settings=limited_settings))  # type: ignore[operator]
    names = ["r1", "r2", "r3"]
    for name in names:
        github.add_repo("octocat", name, permissions={"octocat": "ADMIN"})
        GitRemote(tmp_path, "octocat", name).commit(
            {"Makefile": "deploy:\n\tsleep 0.6\n"}
        )
        await register(client, name=name)
    for name in names:
        response = await client.post(
            f"/api/repositories/octocat/{name}/deploys", json={}, headers=auth_headers()
        )
        assert response.status == 202
    jobs = [await wait_for_job(client, 2, name=name) for name in names]
    spans = sorted((str(j["started_at"]), str(j["finished_at"])) for j in jobs)
    overlapping = [
        sum(1 for start, end in spans if start <= moment < end) for moment, _ in spans
    ]
    assert max(overlapping) == 2
    assert all(j["status"] == "success" for j in jobs)


async def test_pushes_started_by_the_webhook_respect_max_jobs(
    aiohttp_client: object,
    limited_settings: Settings,
    github: FakeGitHub,
    tmp_path: Path,
) -> None:
    """A push's job is claimed by the webhook's own transaction when there is
    room, and otherwise waits for the loop: never more than MAX_JOBS."""
    client: Client = await aiohttp_client(create_app(settings=limited_settings))  # type: ignore[operator]
    names = ["p1", "p2", "p3"]
    webhooks = {}
    remotes = {}
    for name in names:
        github.add_repo("octocat", name, permissions={"octocat": "ADMIN"})
        remotes[name] = GitRemote(tmp_path, "octocat", name)
        remotes[name].commit({"Makefile": "test:\n\tsleep 0.6\n"})
        webhooks[name] = (await register(client, name=name))["webhook"]
        await wait_for_job(client, 1, name=name)
    answers = await asyncio.gather(
        *(
            send_push(client, webhooks[name], remotes[name].commit({"n": name}))
            for name in names
        )
    )
    assert [status for status, _ in answers] == [202, 202, 202]
    jobs = [await wait_for_job(client, 2, name=name) for name in names]
    assert all(j["status"] == "success" for j in jobs), jobs
    spans = sorted((str(j["started_at"]), str(j["finished_at"])) for j in jobs)
    overlapping = [
        sum(1 for start, end in spans if start <= moment < end) for moment, _ in spans
    ]
    assert max(overlapping) == 2
    assert client.app[RUNNER]._reserved == 0


async def test_work_that_gives_way_waits_only_for_starts_that_can_happen(
    aiohttp_client: object,
    settings: Settings,
    github: FakeGitHub,
    tmp_path: Path,
) -> None:
    """Commit statuses wait while a job is on its way to ``make``; a job
    that runs its ``make``, or one queued behind MAX_JOBS, holds nothing up."""
    one_at_a_time = settings.with_overrides(max_jobs=1)
    client: Client = await aiohttp_client(create_app(settings=one_at_a_time))  # type: ignore[operator]
    runner = client.app[RUNNER]
    release = tmp_path / "release"
    makefile = f"test:\n\t@while [ ! -e {release} ]; do sleep 0.02; done\n"
    webhooks = {}
    remotes = {}
    for name in ("w1", "w2"):
        github.add_repo("octocat", name, permissions={"octocat": "ADMIN"})
        remotes[name] = GitRemote(tmp_path, "octocat", name)
        remotes[name].commit({"Makefile": makefile})
        webhooks[name] = (await register(client, name=name))["webhook"]
        await wait_for_job(client, 1, name=name)
    await send_push(client, webhooks["w1"], remotes["w1"].commit({"n": "1"}))
    await wait_for_job(client, 2, name="w1", statuses={"running"})
    # w1's make runs: nothing is starting any more.
    await asyncio.wait_for(runner.starts_done(limit=30), 10)
    # w2's job waits for the only place: it is not on its way to make either.
    status, _ = await send_push(
        client, webhooks["w2"], remotes["w2"].commit({"n": "2"})
    )
    assert status == 202
    await asyncio.wait_for(runner.starts_done(limit=30), 10)
    release.touch()
    assert (await wait_for_job(client, 2, name="w1"))["status"] == "success"
    assert (await wait_for_job(client, 2, name="w2"))["status"] == "success"


async def test_cancel_kills_the_whole_process_group(
    client: Client, remote: GitRemote
) -> None:
    remote.commit({"Makefile": "deploy:\n\tsleep 31.4159 & sleep 31.4159\n"})
    await register(client)
    number = int((await deploy(client))["number"])
    await wait_for_job(client, number, statuses={"running"})
    for _ in range(100):
        if len(processes_with(b"31.4159")) >= 2:
            break
        await asyncio.sleep(0.05)
    assert len(processes_with(b"31.4159")) >= 2  # the shell and two sleeps
    response = await client.post(f"{JOBS}/{number}/cancel", headers=auth_headers())
    assert response.status == 202
    job = await wait_for_job(client, number)
    assert job["status"] == "cancelled"
    assert processes_with(b"31.4159") == []
    again = await client.post(f"{JOBS}/{number}/cancel", headers=auth_headers())
    assert again.status == 409


async def test_cancel_of_a_queued_job_is_immediate(
    client: Client, remote: GitRemote
) -> None:
    remote.commit({"Makefile": "deploy:\n\tsleep 1\n"})
    await register(client)
    first = int((await deploy(client))["number"])
    second = int((await deploy(client))["number"])
    response = await client.post(f"{JOBS}/{second}/cancel", headers=auth_headers())
    assert response.status == 202
    assert (await response.json())["status"] == "cancelled"
    assert (await wait_for_job(client, first))["status"] == "success"
    job = await wait_for_job(client, second)
    assert job["status"] == "cancelled"
    assert job["started_at"] is None


@pytest.fixture
def short_timeout_settings(settings: Settings) -> Settings:
    return settings.with_overrides(job_timeout=1.5)


async def test_timeout_kills_the_job(
    aiohttp_client: object, short_timeout_settings: Settings, remote: GitRemote
) -> None:
    client: Client = await aiohttp_client(create_app(settings=short_timeout_settings))  # type: ignore[operator]
    remote.commit({"Makefile": "deploy:\n\tsleep 27.1828\n"})
    await register(client)
    number = int((await deploy(client))["number"])
    job = await wait_for_job(client, number)
    assert job["status"] == "timed_out"
    assert "timeout" in str(job["reason"])
    assert processes_with(b"27.1828") == []


async def test_secrets_are_masked_even_split_across_reads(
    client: Client, remote: GitRemote, settings: Settings
) -> None:
    remote.commit(
        {
            "Makefile": (
                "deploy:\n"
                "\t@printf 'half: s3cr'; sleep 0.3; printf 'et-value\\n'\n"
                "\t@echo whole: $$API_KEY\n"
            )
        }
    )
    await register(client)
    response = await client.put(
        "/api/repositories/octocat/hello/env",
        json={"secrets": {"API_KEY": "s3cret-value"}},
        headers=auth_headers(),
    )
    assert response.status == 200
    number = int((await deploy(client))["number"])
    assert (await wait_for_job(client, number))["status"] == "success"
    log = await (
        await client.get(f"{JOBS}/{number}/log", headers=auth_headers())
    ).text()
    assert "half: ***" in log
    assert "whole: ***" in log
    assert "s3cret-value" not in log
    for path in settings.data_dir.rglob("*"):
        if path.is_file():
            assert b"s3cret-value" not in path.read_bytes(), path


@pytest.mark.parametrize("ref", ["+main", "@", "a.lock/b", "-b"])
async def test_a_deploy_of_a_ref_git_would_refuse_is_422_and_queues_nothing(
    client: Client, remote: GitRemote, ref: str
) -> None:
    await register(client)
    response = await client.post(
        "/api/repositories/octocat/hello/deploys",
        json={"ref": ref},
        headers=auth_headers(),
    )
    assert response.status == 422, await response.text()
    assert "detail" in await response.json()
    jobs = await (await client.get(JOBS, headers=auth_headers())).json()
    assert [job["kind"] for job in jobs["items"]] == ["clone"]


async def test_a_stored_branch_git_would_refuse_fails_the_job_with_the_reason(
    client: Client, remote: GitRemote, caplog: pytest.LogCaptureFixture
) -> None:
    """A branch stored before the API refused such names (``+main``): the
    job ends ``error`` saying why, not as a crash."""
    await register(client)
    await client.app[STORAGE].db.execute_write(
        "UPDATE repositories SET branch = ? WHERE name = ?", ("+main", "hello")
    )
    number = int((await deploy(client))["number"])
    job = await wait_for_job(client, number)
    assert job["status"] == "error"
    assert job["reason"] == "invalid ref name: '+main'"
    assert "crashed" not in caplog.text


GIT_TAMPERING = {
    # A hook would run in the next job's git steps, the token in its env.
    "hook": "mkdir -p .git/hooks"
    " && printf '#!/bin/sh\\nenv >> {leak}\\n' > .git/hooks/post-checkout"
    " && chmod +x .git/hooks/post-checkout"
    " && cp .git/hooks/post-checkout .git/hooks/reference-transaction",
    "hooks path": "mkdir -p {tmp}/hooks"
    " && printf '#!/bin/sh\\nenv >> {leak}\\n' > {tmp}/hooks/post-checkout"
    " && chmod +x {tmp}/hooks/post-checkout"
    " && git config core.hooksPath {tmp}/hooks",
    # The token would go to this URL; the fetch would fail for good.
    "remote URL": "git remote set-url origin http://127.0.0.1:9/evil.git",
    # The next job would not see its commit's files.
    "skip-worktree": "git update-index --skip-worktree tracked.txt"
    " && echo evil > tracked.txt",
    "sparse checkout": "git config core.sparseCheckout true"
    " && printf '/Makefile\\n' > .git/info/sparse-checkout",
    "worktree": "git config core.worktree {tmp} && echo evil > tracked.txt",
    "attributes": "printf '* text eol=crlf\\n' > .git/info/attributes"
    " && rm tracked.txt",
}


@pytest.mark.parametrize("case", list(GIT_TAMPERING))
async def test_what_a_job_does_to_dot_git_never_reaches_the_next_job(
    client: Client, remote: GitRemote, tmp_path: Path, case: str
) -> None:
    """A deploy's make changes the clone's .git (as build tools do: husky
    sets core.hooksPath); the next job's git steps run as on a fresh clone,
    nothing of theirs runs, and make sees exactly the pushed commit."""
    leak = tmp_path / "leak"
    command = GIT_TAMPERING[case].format(leak=leak, tmp=tmp_path)
    remote.commit(
        {
            "tracked.txt": "line one\nline two\n",
            "Makefile": f"deploy:\n\t{command}\n"
            "test:\n\t@cat tracked.txt\n\t@od -c tracked.txt | head -2\n",
        }
    )
    webhook = (await register(client))["webhook"]
    number = int((await deploy(client))["number"])
    assert (await wait_for_job(client, number))["status"] == "success"
    sha = remote.commit({"other.txt": "x"})
    status, body = await send_push(client, webhook, sha)
    assert status == 202
    job = await wait_for_job(client, int(body["number"]))
    log = await (
        await client.get(f"{JOBS}/{job['number']}/log", headers=auth_headers())
    ).text()
    assert (job["status"], job["sha"]) == ("success", sha), log
    assert "cloning again" not in log
    assert "line one\nline two\n" in log
    assert "\\r" not in log
    assert not leak.exists()


async def test_a_daemon_in_a_session_of_its_own_ends_with_its_job(
    client: Client, remote: GitRemote
) -> None:
    """`setsid` takes a process out of the job's process group; the job's
    marker still finds it when the job ends."""
    remote.commit(
        {
            "Makefile": "deploy:\n"
            "\t@setsid sleep 44.4403 >/dev/null 2>&1 </dev/null & sleep 0.3\n"
        }
    )
    await register(client)
    number = int((await deploy(client))["number"])
    assert (await wait_for_job(client, number))["status"] == "success"
    for _ in range(100):
        if not processes_with(b"44.4403"):
            break
        await asyncio.sleep(0.02)
    assert processes_with(b"44.4403") == []


async def test_log_offset_returns_exactly_the_stored_bytes(
    client: Client, remote: GitRemote
) -> None:
    await register(client)
    full = await (await client.get(f"{JOBS}/1/log", headers=auth_headers())).read()
    assert len(full) > 20
    for offset in (0, 1, 7, len(full) - 1, len(full), len(full) + 10):
        part = await (
            await client.get(f"{JOBS}/1/log?offset={offset}", headers=auth_headers())
        ).read()
        assert part == full[offset:]


async def test_log_of_any_bytes_is_served_as_stored(
    client: Client, remote: GitRemote
) -> None:
    """Jobs print what they like: invalid UTF-8, and offsets inside a
    character, come back byte for byte."""
    remote.commit(
        {"Makefile": "deploy:\n\t@printf 'caf\\303\\251 \\377\\376 end\\n'\n"}
    )
    await register(client)
    number = int((await deploy(client))["number"])
    assert (await wait_for_job(client, number))["status"] == "success"
    response = await client.get(f"{JOBS}/{number}/log", headers=auth_headers())
    assert response.status == 200
    full = await response.read()
    assert b"caf\xc3\xa9 \xff\xfe end\n" in full
    inside = full.index(b"\xa9")  # the second byte of the e-acute
    part = await client.get(
        f"{JOBS}/{number}/log?offset={inside}", headers=auth_headers()
    )
    assert part.status == 200
    assert await part.read() == full[inside:]


async def test_a_big_log_is_served_exactly_without_holding_it_in_memory(
    client: Client, remote: GitRemote
) -> None:
    """A finished job's 8 MB log: Content-Length, the stored bytes from the
    offset, and the server holds a chunk at a time, not the log."""
    remote.commit({"Makefile": "deploy:\n\t@head -c 8000000 /dev/zero | tr '\\0' y\n"})
    await register(client)
    number = int((await deploy(client))["number"])
    assert (await wait_for_job(client, number))["status"] == "success"
    offset = 1000
    tracemalloc.start()
    try:
        response = await client.get(
            f"{JOBS}/{number}/log?offset={offset}", headers=auth_headers()
        )
        assert response.status == 200
        digest = hashlib.sha256()
        received = 0
        async for chunk in response.content.iter_chunked(64 * 1024):
            digest.update(chunk)
            received += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    full = await (
        await client.get(f"{JOBS}/{number}/log", headers=auth_headers())
    ).read()
    assert len(full) > 8_000_000
    assert int(response.headers["Content-Length"]) == received == len(full) - offset
    assert digest.digest() == hashlib.sha256(full[offset:]).digest()
    assert peak < 2_000_000, f"{peak} bytes allocated at once to serve the log"


async def test_follow_streams_output_before_the_job_ends(
    client: Client, remote: GitRemote
) -> None:
    remote.commit(
        {"Makefile": "deploy:\n\t@echo first-line\n\t@sleep 1.5\n\t@echo last-line\n"}
    )
    await register(client)
    number = int((await deploy(client))["number"])
    response = await client.get(
        f"{JOBS}/{number}/log?follow=true", headers=auth_headers()
    )
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    seen = b""
    while b"first-line" not in seen:
        chunk = await asyncio.wait_for(response.content.readany(), 10)
        assert chunk, "stream ended before the first line"
        seen += chunk
    job = await (await client.get(f"{JOBS}/{number}", headers=auth_headers())).json()
    assert job["status"] == "running"
    seen += await asyncio.wait_for(response.content.read(), 15)
    assert b"last-line" in seen
    assert (await wait_for_job(client, number))["status"] == "success"


async def test_token_never_reaches_argv_git_config_logs_or_job_env(
    client: Client, remote: GitRemote, settings: Settings
) -> None:
    remote.commit({"Makefile": "deploy:\n\t@env | sort\n\tsleep 1.7321\n"})
    await register(client)
    number = int((await deploy(client))["number"])
    await wait_for_job(client, number, statuses={"running"})
    token = TOKEN.encode()
    sleeping: list[int] = []
    for _ in range(100):
        sleeping = processes_with(b"1.7321")
        if sleeping:
            break
        await asyncio.sleep(0.05)
    assert sleeping
    for pid in sleeping:
        assert token not in Path(f"/proc/{pid}/environ").read_bytes()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                assert token not in (entry / "cmdline").read_bytes()
            except OSError:
                continue
    assert (await wait_for_job(client, number))["status"] == "success"
    for path in settings.data_dir.rglob("*"):
        if path.is_file():
            assert token not in path.read_bytes(), path
    log = await (
        await client.get(f"{JOBS}/{number}/log", headers=auth_headers())
    ).text()
    assert "HOBOTNICA_JOB=" in log
    assert "CI=1" in log
    assert "GIT_BRANCH=main" in log
    assert "HOBOTNICA_SECRET_KEY" not in log
    assert "VIRTUAL_ENV" not in log


async def test_revocation_removes_the_clone_and_closes_the_webhook(
    client: Client, github: FakeGitHub, remote: GitRemote, settings: Settings
) -> None:
    repository = await register(client)
    github.revoke_token(TOKEN)
    app = client.app
    assert app is not None
    checker = AccessChecker(
        settings, app[STORAGE], app[SECRET_BOX], app[GITHUB], app[RUNNER]
    )
    assert await checker.check_all() == 1
    assert not any((settings.data_dir / "clones").iterdir())
    path = repository["webhook"]["url"].split("hobotnica.test")[1]
    response = await client.post(path, data=b"{}", headers={"X-Hub-Signature-256": "x"})
    assert response.status == 401
    body = b'{"zen": "x"}'
    response = await client.post(
        path,
        data=body,
        headers=webhook_headers(body, repository["webhook"]["secret"], "ping"),
    )
    assert response.status == 410


async def test_a_404_of_the_graphql_endpoint_revokes_nothing(
    client: Client, github: FakeGitHub, remote: GitRemote, settings: Settings
) -> None:
    """GraphQL says "not found" in a 200; a 404 of /graphql itself is GitHub
    (or a proxy, or a wrong URL) failing: 502 for a caller, no revocation."""
    await register(client)
    app = client.app
    checker = AccessChecker(
        settings, app[STORAGE], app[SECRET_BOX], app[GITHUB], app[RUNNER]
    )
    github.fail_next(1, 404)
    assert await checker.check_all() == 0
    assert any((settings.data_dir / "clones").iterdir())
    github.fail_next(1, 404)
    response = await client.get(
        "/api/repositories/octocat/hello/env", headers=auth_headers("octocat", "x" * 8)
    )
    assert response.status == 502, await response.text()
    repository = await (
        await client.get("/api/repositories/octocat/hello", headers=auth_headers())
    ).json()
    assert repository["status"] == "ready"


async def test_a_missing_make_is_an_error_with_a_reason(
    client: Client, remote: GitRemote, tmp_path: Path
) -> None:
    await register(client)
    client.app[RUNNER].host_env["PATH"] = only_git_on_path(tmp_path)
    job = await wait_for_job(client, int((await deploy(client))["number"]))
    assert job["status"] == "error"
    assert job["reason"] == "cannot run make: not found"
    assert job["exit_code"] is None


@pytest.mark.parametrize(
    "body", [{"ref": "no-such-branch"}, {"sha": "1234567890" * 4}], ids=["ref", "sha"]
)
async def test_a_ref_not_on_the_remote_is_an_error_without_cloning_again(
    client: Client, remote: GitRemote, body: dict[str, str]
) -> None:
    """A typo in a deploy's ref says so; the clone is fine and stays."""
    await register(client)
    number = int((await deploy(client, **body))["number"])
    job = await wait_for_job(client, number)
    log = await (
        await client.get(f"{JOBS}/{number}/log", headers=auth_headers())
    ).text()
    assert job["status"] == "error"
    assert job["reason"].endswith("the ref or commit is not on GitHub"), job
    assert "cloning again" not in log
