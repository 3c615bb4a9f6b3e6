"""SIGKILL of the server mid-clone, mid-job and mid-log; restart on the same data.

Real ``python -m api serve`` processes, real SQLite, real git over
``file://``. A ``git`` wrapper first on the server's PATH can hold a git
step at a gate (a file), so that the kill lands while that step runs.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.fakes.github import FakeGitHub
from tests.fuzz_support import Api, integrity_check, query, server_env
from tests.servers import ServerProcess
from tests.support import FINISHED, OWNER, REPO, GitRemote, push_payload
from tests.test_jobs_runner import processes_with

pytestmark = pytest.mark.integrational

ServerFactory = Callable[[], ServerProcess]


class GitGates:
    """A ``git`` wrapper that waits while ``gates/<subcommand>`` exists."""

    def __init__(self, root: Path) -> None:
        self.bin = root / "slow-git-bin"
        self.gates = root / "gates"
        self.bin.mkdir()
        self.gates.mkdir()
        real = shutil.which("git")
        assert real is not None
        wrapper = self.bin / "git"
        wrapper.write_text(
            "#!/bin/sh\n"
            'for arg in "$@"; do\n'
            '  case "$arg" in clone|fetch|checkout)\n'
            f'    if [ -e "{self.gates}/$arg" ]; then\n'
            f'      touch "{self.gates}/$arg.entered"\n'
            f'      while [ -e "{self.gates}/$arg" ]; do sleep 0.05; done\n'
            "    fi\n"
            "    break;;\n"
            "  esac\n"
            "done\n"
            f'exec "{real}" "$@"\n'
        )
        wrapper.chmod(0o755)

    @property
    def path(self) -> str:
        return f"{self.bin}:{os.environ['PATH']}"

    def close(self, step: str) -> None:
        (self.gates / step).touch()

    def open(self, step: str) -> None:
        (self.gates / step).unlink(missing_ok=True)

    async def wait_entered(self, step: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not (self.gates / f"{step}.entered").exists():
            assert time.monotonic() < deadline, f"no git {step} reached its gate"
            await asyncio.sleep(0.02)

    def waiting(self) -> list[int]:
        """Pids of wrappers still held at a gate (or running git after it)."""
        return processes_with(str(self.bin).encode())


@pytest.fixture
def gates(tmp_path: Path) -> Iterator[GitGates]:
    gates = GitGates(tmp_path)
    yield gates
    for step in ("clone", "fetch", "checkout"):
        gates.open(step)
    for pid in gates.waiting():  # orphans of killed servers
        os.kill(pid, signal.SIGKILL)


@pytest.fixture
def servers(
    tmp_path: Path, github: FakeGitHub, gates: GitGates
) -> Iterator[ServerFactory]:
    started: list[ServerProcess] = []

    def start() -> ServerProcess:
        server = ServerProcess(
            tmp_path / "var", server_env(tmp_path, github, PATH=gates.path)
        )
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


async def kill(server: ServerProcess) -> None:
    server.signal(signal.SIGKILL)
    await asyncio.to_thread(server.wait, 10)


def job_statuses(data_dir: Path) -> dict[int, str]:
    rows = query(data_dir, "SELECT number, status FROM jobs ORDER BY number")
    return {int(number): str(status) for number, status in rows}


async def start_cloned(
    servers: ServerFactory, http: aiohttp.ClientSession
) -> tuple[ServerProcess, Api, dict[str, str]]:
    """A server with octocat/hello registered and cloned; its webhook."""
    server = servers()
    api = Api(http, server.url)
    webhook = (await api.register(OWNER, REPO))["webhook"]
    await api.wait_job(OWNER, REPO, 1, {"success"})
    return server, api, webhook


async def push(api: Api, webhook: dict[str, str], sha: str) -> int:
    answer = await api.post_webhook(
        webhook, push_payload(sha), delivery=str(uuid.uuid4())
    )
    assert answer.status == 202, answer
    return int(answer.body["number"])


async def wait_processes_gone(marker: bytes, timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while (pids := processes_with(marker)) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return pids


async def assert_sound_after_restart(
    api: Api,
    server: ServerProcess,
    remote: GitRemote,
    webhook: dict[str, str],
    killed_job: int,
) -> dict[str, Any]:
    """The killed job ended, a new job succeeds, the database is sound."""
    job = await api.wait_job(OWNER, REPO, killed_job, FINISHED, timeout=20)
    assert job["status"] == "interrupted", job
    sha = remote.commit({"Makefile": "test:\n\t@echo after-restart\n"}, "fixed")
    number = await push(api, webhook, sha)
    later = await api.wait_job(OWNER, REPO, number, FINISHED, timeout=30)
    assert later["status"] == "success", later
    # Jobs of a repository run in order: a clone queued again after the kill
    # ran before this one, so nothing can be left running now.
    assert "running" not in job_statuses(server.data_dir).values()
    assert later["sha"] == sha
    answer = await api.call(
        "GET", f"/api/repositories/{OWNER}/{REPO}/jobs/{number}/log"
    )
    assert "after-restart" in answer.body
    assert (await api.call("GET", "/api/health")).status == 200
    return later


async def test_sigkill_during_the_clone(
    http: aiohttp.ClientSession,
    servers: ServerFactory,
    gates: GitGates,
    remote: GitRemote,
) -> None:
    gates.close("clone")
    first = servers()
    api = Api(http, first.url)
    webhook = (await api.register(OWNER, REPO))["webhook"]
    await gates.wait_entered("clone")
    await kill(first)
    assert integrity_check(first.data_dir) == ["ok"]
    assert job_statuses(first.data_dir) == {1: "running"}

    gates.open("clone")
    second = servers()
    api = Api(http, second.url)
    await assert_sound_after_restart(api, second, remote, webhook, killed_job=1)
    repository = (await api.call("GET", f"/api/repositories/{OWNER}/{REPO}")).body
    assert repository["status"] != "cloning", repository
    second.signal(signal.SIGTERM)
    assert await asyncio.to_thread(second.wait, 20) == 0
    assert integrity_check(second.data_dir) == ["ok"]


async def test_sigkill_during_a_test_job_then_a_broken_clone_is_cloned_again(
    http: aiohttp.ClientSession,
    servers: ServerFactory,
    remote: GitRemote,
) -> None:
    first, api, webhook = await start_cloned(servers, http)
    sha = remote.commit({"Makefile": "test:\n\t@echo started\n\tsleep 39.39\n"})
    number = await push(api, webhook, sha)
    await api.wait_job(OWNER, REPO, number, {"running"})
    deadline = time.monotonic() + 10
    while not processes_with(b"39.39"):
        assert time.monotonic() < deadline, "make never started"
        await asyncio.sleep(0.05)
    await kill(first)
    assert integrity_check(first.data_dir) == ["ok"]
    # What a crash can leave in a clone: a stale lock, torn files.
    clone = next((first.data_dir / "clones").iterdir())
    (clone / ".git" / "index.lock").write_bytes(b"")
    (clone / ".git" / "HEAD").write_bytes(b"ref: refs/heads/\x00\x00\x00")
    (clone / ".git" / "config").write_bytes(b"[core\n\x00\x00\x00")
    for pack in (clone / ".git" / "objects" / "pack").iterdir():
        pack.write_bytes(b"torn")

    second = servers()
    api = Api(http, second.url)
    assert await wait_processes_gone(b"39.39") == []  # make's group was killed
    later = await assert_sound_after_restart(api, second, remote, webhook, number)
    log = await api.call(
        "GET", f"/api/repositories/{OWNER}/{REPO}/jobs/{later['number']}/log"
    )
    # The config is rewritten before the fetch; torn packs need a new clone.
    assert ".git/config had changed: restored" in log.body, log.body
    assert "cloning again" in log.body, log.body
    assert integrity_check(second.data_dir) == ["ok"]


async def test_sigkill_during_a_big_log_write(
    http: aiohttp.ClientSession,
    servers: ServerFactory,
    remote: GitRemote,
) -> None:
    first, api, webhook = await start_cloned(servers, http)
    sha = remote.commit(
        {
            "Makefile": "test:\n"
            "\t@head -c 400000000 /dev/zero | tr '\\0' y | fold -w 77\n"
            "\t@echo never-reached\n"
        }
    )
    number = await push(api, webhook, sha)
    log_path = first.data_dir / "logs" / "1" / f"{number}.log"
    deadline = time.monotonic() + 20
    while not log_path.exists() or log_path.stat().st_size < 30_000_000:
        assert time.monotonic() < deadline, "the log did not grow"
        await asyncio.sleep(0.02)
    await kill(first)
    assert integrity_check(first.data_dir) == ["ok"]
    size = log_path.stat().st_size

    second = servers()
    api = Api(http, second.url)
    job = await api.wait_job(OWNER, REPO, number, FINISHED, timeout=20)
    assert job["status"] == "interrupted", job
    stored = log_path.read_bytes()
    assert len(stored) >= size
    path = f"/api/repositories/{OWNER}/{REPO}/jobs/{number}/log"
    for offset in (0, size // 2, size - 100, len(stored)):
        answer = await api.call("GET", f"{path}?offset={offset}")
        assert answer.status == 200, answer
        assert answer.raw == stored[offset:], offset
    assert b"never-reached" not in stored
    await assert_sound_after_restart(api, second, remote, webhook, number)
    assert integrity_check(second.data_dir) == ["ok"]


async def test_restart_stops_the_git_of_the_killed_server(
    http: aiohttp.ClientSession,
    servers: ServerFactory,
    gates: GitGates,
    remote: GitRemote,
) -> None:
    first, api, webhook = await start_cloned(servers, http)
    gates.close("fetch")  # a fetch that hangs, as over a bad network
    number = await push(api, webhook, remote.commit({"README": "x"}))
    await gates.wait_entered("fetch")
    await kill(first)
    assert gates.waiting() != []

    second = servers()
    api = Api(http, second.url)
    job = await api.wait_job(OWNER, REPO, number, FINISHED, timeout=20)
    assert job["status"] == "interrupted", job
    # Left alone, it would fetch into the clone while the next job uses it.
    assert await wait_processes_gone(str(gates.bin).encode(), timeout=5) == []
