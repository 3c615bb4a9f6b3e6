"""Log followers while a real server process shuts down.

Two instances share one data dir, as in a blue-green upgrade. A draining
instance streams the logs of its own jobs until they end, ends followers of
any other job at once (they resume with ``?offset=`` on the other instance),
and exits promptly once its own jobs are done, also when a follower's client
has stopped reading.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.servers import ServerFactory, ServerProcess
from tests.support import (
    FINISHED,
    OWNER,
    REPO,
    GitRemote,
    auth_headers,
    push_payload,
    webhook_headers,
)

pytestmark = pytest.mark.integrational

JOBS = f"/api/repositories/{OWNER}/{REPO}/jobs"
# A follower polls the job every 0.2 s: it ends well within this.
PROMPT = 5.0
# What requests still in progress get once the jobs are done (deploy/README.md).
CUT_OFF = 5.0


def makefile(go: Path, output: str = "") -> str:
    """``make test`` names the process that ran make (the instance), prints
    ``output``, then waits for the file ``go``."""
    return (
        "test:\n"
        '\t@read -r _ _ _ server _ < /proc/$$PPID/stat; echo "ran-by=$$server"\n'
        + (f"\t@{output}\n" if output else "")
        + f"\t@while [ ! -e {go} ]; do sleep 0.05; done\n"
        "\t@echo job-finished\n"
    )


@pytest.fixture
def go(tmp_path: Path) -> Iterator[Path]:
    """The file a job waits for; made at the end, so no job outlives a test
    (killing a server leaves its job's processes)."""
    path = tmp_path / "GO"
    yield path
    path.touch()


async def get_json(http: aiohttp.ClientSession, url: str) -> Any:
    async with http.get(url, headers=auth_headers()) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def wait_status(
    http: aiohttp.ClientSession, server: ServerProcess, number: int, wanted: set[str]
) -> str:
    deadline = time.monotonic() + 20
    while True:
        status = str((await get_json(http, f"{server.url}{JOBS}/{number}"))["status"])
        if status in wanted:
            return status
        assert time.monotonic() < deadline, f"job #{number} still {status}"
        await asyncio.sleep(0.05)


async def register(http: aiohttp.ClientSession, server: ServerProcess) -> Any:
    """Register octocat/hello on ``server`` (which runs the clone)."""
    async with http.post(
        f"{server.url}/api/repositories",
        json={"owner": OWNER, "name": REPO},
        headers=auth_headers(),
    ) as response:
        assert response.status == 202, await response.text()
        registered = await response.json()
    assert await wait_status(http, server, 1, FINISHED) == "success"
    return registered["webhook"]


async def push(
    http: aiohttp.ClientSession,
    server: ServerProcess,
    webhook: dict[str, str],
    remote: GitRemote,
) -> int:
    """A push delivered to ``server``, which claims its job at once."""
    sha = await asyncio.to_thread(remote.commit, {"NEWS": f"{time.time()}\n"})
    body = json.dumps(push_payload(sha)).encode()
    path = "/api/" + webhook["url"].split("/api/", 1)[1]
    async with http.post(
        server.url + path, data=body, headers=webhook_headers(body, webhook["secret"])
    ) as response:
        assert response.status == 202, await response.text()
        number = int((await response.json())["number"])
    await wait_status(http, server, number, {"running"})
    return number


async def follow(
    http: aiohttp.ClientSession, server: ServerProcess, number: int, offset: int = 0
) -> aiohttp.ClientResponse:
    response = await http.get(
        f"{server.url}{JOBS}/{number}/log?follow=true&offset={offset}",
        headers=auth_headers(),
    )
    assert response.status == 200, await response.text()
    return response


async def read_until(response: aiohttp.ClientResponse, marker: bytes) -> bytes:
    received = b""
    while marker not in received:
        line = await response.content.readline()
        assert line, f"the stream ended before {marker!r}: {received!r}"
        received += line
    return received


async def follow_job_run_by(
    http: aiohttp.ClientSession,
    server: ServerProcess,
    number: int,
    runner: ServerProcess,
) -> tuple[aiohttp.ClientResponse, bytes]:
    """Follow job ``number`` on ``server`` up to its line naming the process
    that runs it, which must be ``runner``."""
    follower = await follow(http, server, number)
    received = await read_until(follower, b"ran-by=")
    assert runner.process is not None
    assert ran_by(received) == runner.process.pid
    return follower, received


def logs(tmp_path: Path, number: int) -> list[Path]:
    return list((tmp_path / "var").glob(f"logs/*/{number}.log"))


def ran_by(log: bytes) -> int:
    return int(log.split(b"ran-by=", 1)[1].split(b"\n", 1)[0])


async def read_to_end(response: aiohttp.ClientResponse, limit: float) -> bytes:
    """The rest of a follower's stream, which must end (cleanly) in time."""
    try:
        async with asyncio.timeout(limit):
            return await response.content.read()
    except TimeoutError:
        pytest.fail(f"the follower was still streaming after {limit} s")


async def wait_exit(server: ServerProcess, limit: float) -> int:
    assert server.process is not None
    try:
        return await asyncio.to_thread(server.process.wait, limit)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the server was still running {limit} s later")


async def wait_draining(http: aiohttp.ClientSession, server: ServerProcess) -> None:
    deadline = time.monotonic() + PROMPT
    while True:
        async with http.get(f"{server.url}/api/health") as response:
            if response.status == 503:
                return
        assert time.monotonic() < deadline, "the server is not draining"
        await asyncio.sleep(0.05)


async def test_follower_of_a_job_run_elsewhere_ends_and_resumes_there(
    http: aiohttp.ClientSession, servers: ServerFactory, remote: GitRemote, go: Path
) -> None:
    remote.commit({"Makefile": makefile(go)})
    old = servers(HOBOTNICA_SHUTDOWN_TIMEOUT="2")
    webhook = await register(http, old)
    new = servers()
    number = await push(http, new, webhook, remote)
    # Before the switch, nginx sends the follower to the old instance.
    follower, received = await follow_job_run_by(http, old, number, new)

    old.signal(signal.SIGTERM)
    received += await read_to_end(follower, PROMPT)  # no ClientPayloadError
    assert await wait_exit(old, PROMPT) == 0
    assert await wait_status(http, new, number, {"running"}) == "running"

    # The client resumes where it was, through nginx on the new instance.
    resumed = await follow(http, new, number, offset=len(received))
    go.touch()
    received += await read_to_end(resumed, 20)
    assert await wait_status(http, new, number, FINISHED) == "success"
    async with http.get(
        f"{new.url}{JOBS}/{number}/log", headers=auth_headers()
    ) as response:
        assert received == await response.read()
    assert b"\njob-finished\n[hobotnica] success" in received


async def test_follower_of_its_own_job_streams_until_the_job_ends(
    http: aiohttp.ClientSession,
    servers: ServerFactory,
    remote: GitRemote,
    go: Path,
    tmp_path: Path,
) -> None:
    remote.commit({"Makefile": makefile(go)})
    old = servers(HOBOTNICA_SHUTDOWN_TIMEOUT="30")
    webhook = await register(http, old)
    number = await push(http, old, webhook, remote)
    follower, received = await follow_job_run_by(http, old, number, old)

    old.signal(signal.SIGTERM)
    await wait_draining(http, old)
    await asyncio.sleep(1)  # several polls of the follower
    go.touch()
    received += await read_to_end(follower, 10)
    assert b"\njob-finished\n[hobotnica] success" in received, received[-300:]
    assert await wait_exit(old, PROMPT) == 0
    (log,) = logs(tmp_path, number)
    assert received == log.read_bytes()


async def test_a_follower_that_reads_nothing_does_not_hold_the_exit_up(
    http: aiohttp.ClientSession,
    servers: ServerFactory,
    remote: GitRemote,
    go: Path,
    tmp_path: Path,
) -> None:
    # More output than the socket buffers hold: the follower's handler
    # waits for its client, which never reads.
    size = 30_000_000
    output = f"head -c {size} /dev/zero | tr '\\0' y; echo"
    remote.commit({"Makefile": makefile(go, output)})
    shutdown_timeout = 1.0
    old = servers(HOBOTNICA_SHUTDOWN_TIMEOUT=str(shutdown_timeout))
    webhook = await register(http, old)
    number = await push(http, old, webhook, remote)
    async with asyncio.timeout(20):  # until the output is in the log
        while sum(log.stat().st_size for log in logs(tmp_path, number)) < size:
            await asyncio.sleep(0.05)

    with socket.socket() as stalled:
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(("127.0.0.1", old.port))
        headers = "".join(f"{k}: {v}\r\n" for k, v in auth_headers().items())
        stalled.sendall(
            f"GET {JOBS}/{number}/log?follow=true HTTP/1.1\r\n"
            f"Host: 127.0.0.1\r\n{headers}\r\n".encode()
        )
        await asyncio.sleep(1)
        old.signal(signal.SIGTERM)
        # The job is interrupted after the shutdown timeout (and the kill
        # grace); then the stuck handler is cut off.
        limit = shutdown_timeout + 1 + CUT_OFF + PROMPT
        assert await wait_exit(old, limit) == 0
