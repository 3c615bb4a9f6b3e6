"""Real server processes: draining on SIGTERM, restarts, two instances."""

from __future__ import annotations

import asyncio
import itertools
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.servers import ServerFactory, ServerProcess
from tests.support import FINISHED, GitRemote, auth_headers
from tests.test_jobs_runner import processes_with

pytestmark = pytest.mark.integrational

REPO = "/api/repositories/octocat/hello"


async def call(
    http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
) -> tuple[int, Any, Mapping[str, str]]:
    async with http.request(method, url, headers=auth_headers(), **kwargs) as response:
        body = (
            await response.json()
            if response.content_type == "application/json"
            else await response.text()
        )
        return response.status, body, dict(response.headers)


async def job_status(
    http: aiohttp.ClientSession, server: ServerProcess, number: int
) -> str:
    status, body, _ = await call(http, "GET", f"{server.url}{REPO}/jobs/{number}")
    assert status == 200, body
    return str(body["status"])


async def wait_status(
    http: aiohttp.ClientSession,
    server: ServerProcess,
    number: int,
    wanted: set[str],
    timeout: float = 30,
) -> str:
    deadline = time.monotonic() + timeout
    while True:
        status = await job_status(http, server, number)
        if status in wanted:
            return status
        assert time.monotonic() < deadline, f"job #{number} still {status}"
        await asyncio.sleep(0.05)


async def register_and_deploy(
    http: aiohttp.ClientSession, server: ServerProcess, deploys: int = 1
) -> list[int]:
    status, body, _ = await call(
        http,
        "POST",
        f"{server.url}/api/repositories",
        json={"owner": "octocat", "name": "hello"},
    )
    assert status == 202, body
    await wait_status(http, server, 1, {"success"})
    numbers = []
    for _ in range(deploys):
        status, body, _ = await call(
            http, "POST", f"{server.url}{REPO}/deploys", json={}
        )
        assert status == 202, body
        numbers.append(int(body["number"]))
    return numbers


async def wait_exit(server: ServerProcess, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    assert server.process is not None
    while server.process.poll() is None:
        assert time.monotonic() < deadline, "server did not exit"
        await asyncio.sleep(0.05)
    return server.process.returncode


async def test_sigterm_drains_running_jobs_and_refuses_new_ones(
    http: aiohttp.ClientSession, servers: ServerFactory, remote: GitRemote
) -> None:
    remote.commit({"Makefile": "deploy:\n\t@echo started\n\tsleep 2\n\t@echo done\n"})
    first = servers()
    running, queued = await register_and_deploy(http, first, deploys=2)
    await wait_status(http, first, running, {"running"})

    first.signal(signal.SIGTERM)
    await asyncio.sleep(0.2)
    status, body, headers = await call(
        http, "POST", f"{first.url}{REPO}/deploys", json={}
    )
    assert status == 503, body
    assert int(headers["Retry-After"]) > 0
    health, _, _ = await call(http, "GET", f"{first.url}/api/health")
    assert health == 503
    assert await job_status(http, first, running) == "running"
    assert await wait_exit(first) == 0
    assert "draining" in first.output().lower()

    second = servers()
    assert await job_status(http, second, running) == "success"
    assert await wait_status(http, second, queued, {"success"}) == "success"
    _, log, _ = await call(http, "GET", f"{second.url}{REPO}/jobs/{running}/log")
    assert "started" in log and "done" in log


async def test_sigkill_then_restart_interrupts_the_orphaned_job(
    http: aiohttp.ClientSession, servers: ServerFactory, remote: GitRemote
) -> None:
    remote.commit({"Makefile": "deploy:\n\tsleep 41.41\n"})
    first = servers()
    (number,) = await register_and_deploy(http, first)
    await wait_status(http, first, number, {"running"})
    for _ in range(100):
        if processes_with(b"41.41"):
            break
        await asyncio.sleep(0.05)
    assert processes_with(b"41.41")
    first.signal(signal.SIGKILL)
    await wait_exit(first)

    second = servers()
    assert await wait_status(http, second, number, FINISHED) == "interrupted"
    assert processes_with(b"41.41") == []
    remote.commit({"Makefile": "deploy:\n\t@echo fine\n"})
    status, body, _ = await call(http, "POST", f"{second.url}{REPO}/deploys", json={})
    assert status == 202
    assert await wait_status(http, second, int(body["number"]), FINISHED) == "success"


async def test_two_instances_on_one_data_dir_never_run_a_job_twice(
    http: aiohttp.ClientSession,
    servers: ServerFactory,
    remote: GitRemote,
    tmp_path: Path,
) -> None:
    ran = tmp_path / "ran.txt"
    remote.commit(
        {
            "Makefile": (
                "deploy:\n"
                f"\t@echo start $$HOBOTNICA_JOB $$(date +%s.%N) >> {ran}\n"
                "\t@sleep 0.2\n"
                f"\t@echo end $$HOBOTNICA_JOB $$(date +%s.%N) >> {ran}\n"
            )
        }
    )
    blue = servers()
    green = servers()
    numbers = await register_and_deploy(http, blue, deploys=3)
    for _ in range(3):
        status, body, _ = await call(
            http, "POST", f"{green.url}{REPO}/deploys", json={}
        )
        assert status == 202
        numbers.append(int(body["number"]))
    assert len(set(numbers)) == 6
    for number in numbers:
        assert await wait_status(http, blue, number, FINISHED, timeout=60) == "success"
    events = [line.split() for line in ran.read_text().splitlines()]
    starts = [int(e[1]) for e in events if e[0] == "start"]
    assert sorted(starts) == sorted(numbers)
    # One repository: never two of its jobs at once, whichever instance ran them.
    spans: dict[str, dict[str, float]] = {}
    for kind, job, moment in events:
        spans.setdefault(job, {})[kind] = float(moment)
    ordered = sorted(spans.values(), key=lambda s: s["start"])
    for earlier, later in itertools.pairwise(ordered):
        assert later["start"] >= earlier["end"]


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


async def test_200_mb_of_output_keeps_server_memory_flat(
    http: aiohttp.ClientSession, servers: ServerFactory, remote: GitRemote
) -> None:
    remote.commit(
        {
            "Makefile": (
                "deploy:\n"
                "\t@head -c 200000000 /dev/zero | tr '\\0' x | fold -w 99\n"
                "\t@echo finished-output\n"
            )
        }
    )
    server = servers(HOBOTNICA_LOG_MAX_BYTES=str(300 * 2**20))
    assert server.process is not None
    (number,) = await register_and_deploy(http, server)
    before = peak_rss_kib(server.process.pid)
    assert await wait_status(http, server, number, FINISHED, timeout=120) == "success"
    growth_mib = (peak_rss_kib(server.process.pid) - before) / 1024
    assert growth_mib < 30, f"peak RSS grew by {growth_mib:.1f} MiB"
    size = (server.data_dir / "logs").rglob(f"{number}.log").__next__().stat().st_size
    assert size > 200_000_000


async def test_jobs_still_running_after_the_shutdown_timeout_are_interrupted(
    http: aiohttp.ClientSession, servers: ServerFactory, remote: GitRemote
) -> None:
    remote.commit({"Makefile": "deploy:\n\tsleep 52.5\n"})
    first = servers(HOBOTNICA_SHUTDOWN_TIMEOUT="1")
    (number,) = await register_and_deploy(http, first)
    await wait_status(http, first, number, {"running"})
    for _ in range(100):  # make's recipe is running, not a git step
        if processes_with(b"52.5"):
            break
        await asyncio.sleep(0.05)
    started = time.monotonic()
    first.signal(signal.SIGTERM)
    assert await wait_exit(first) == 0
    assert time.monotonic() - started < 10
    assert processes_with(b"52.5") == [], first.output()[-3000:]
    second = servers()
    assert await job_status(http, second, number) == "interrupted"


async def test_a_log_reader_that_leaves_is_no_error_and_stops_at_once(
    servers: ServerFactory, remote: GitRemote, tmp_path: Path
) -> None:
    """Followers of a running job, and a reader of a finished job's big log,
    close their connection mid-way: the server logs no error, and a
    follower's handler ends at once, not at the job's next output."""
    go = tmp_path / "GO"
    remote.commit(
        {
            "Makefile": "deploy:\n\t@echo first\n"
            f"\t@while [ ! -e {go} ]; do sleep 0.02; done\n"
            "\t@head -c 3000000 /dev/zero | tr '\\0' y\n"
        }
    )
    server = servers()
    log_url = f"{server.url}{REPO}/jobs/2/log"
    async with aiohttp.ClientSession() as http:
        [number] = await register_and_deploy(http, server)
        assert number == 2
        await wait_status(http, server, number, {"running"})
        for _ in range(3):
            async with aiohttp.ClientSession() as follower:
                response = await follower.get(
                    f"{log_url}?follow=true", headers=auth_headers()
                )
                assert response.status == 200
                assert await response.content.readany()
                response.close()
        deadline = time.monotonic() + 5
        while server.output().count("/jobs/2/log?follow=true") < 3:
            assert time.monotonic() < deadline, "followers still served"
            await asyncio.sleep(0.05)
        go.touch()
        assert await wait_status(http, server, number, FINISHED) == "success"
        async with aiohttp.ClientSession() as reader:
            response = await reader.get(log_url, headers=auth_headers())
            assert int(response.headers["Content-Length"]) > 3_000_000
            assert await response.content.read(1000)
            response.close()
        await asyncio.sleep(0.5)
        status, _, _ = await call(http, "GET", f"{server.url}/api/health")
        assert status == 200
    text = server.output()
    assert " ERROR " not in text and "Traceback" not in text, text[-3000:]
    assert '/jobs/2/log?follow=true HTTP/1.1" 200' in text
