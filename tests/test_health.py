"""Health: 200 with named checks, 503 naming the check that fails."""

from __future__ import annotations

import http.client
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import ServerProcess
from tests.support import Client

pytestmark = pytest.mark.integrational


async def test_health_is_ok_on_a_fresh_data_dir(client: Client) -> None:
    response = await client.get("/api/health")
    assert response.status == 200
    body = await response.json()
    assert body["status"] == "ok"
    assert set(body["checks"]) == {"database", "data_dir", "git", "make", "job_runner"}
    assert all(check["ok"] for check in body["checks"].values())
    assert response.headers["X-Request-ID"]


async def test_request_id_is_kept_from_the_request(client: Client) -> None:
    response = await client.get("/api/health", headers={"X-Request-ID": "abc-123"})
    assert response.headers["X-Request-ID"] == "abc-123"


@pytest.fixture
def server() -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for process in started:
        process.stop()


def test_health_fails_naming_git_when_git_is_missing(
    tmp_path: Path, server: list[ServerProcess]
) -> None:
    tools = tmp_path / "bin"
    tools.mkdir()
    make = shutil.which("make")
    assert make is not None
    (tools / "make").symlink_to(make)
    process = ServerProcess(tmp_path / "var", {"PATH": str(tools)})
    server.append(process)
    process.start()
    status, body = process.get("/api/health")
    assert status == 503
    data = json.loads(body)
    assert data["status"] == "failing"
    assert data["checks"]["git"]["ok"] is False
    assert "git" in data["checks"]["git"]["detail"]
    assert data["checks"]["make"]["ok"] is True


def test_health_fails_naming_the_data_dir_when_it_is_read_only(
    tmp_path: Path, server: list[ServerProcess]
) -> None:
    data_dir = tmp_path / "var"
    first = ServerProcess(data_dir)
    server.append(first)
    first.start()
    first.stop()  # SIGKILL keeps the WAL files, which SQLite needs to open
    data_dir.chmod(0o555)
    try:
        process = ServerProcess(data_dir, drop_root_override=True)
        server.append(process)
        process.start()
        status, body = process.get("/api/health")
    finally:
        data_dir.chmod(0o755)
    assert status == 503, body
    data = json.loads(body)
    assert data["checks"]["data_dir"]["ok"] is False
    assert "not writable" in data["checks"]["data_dir"]["detail"]
    assert data["checks"]["database"]["ok"] is True


@pytest.mark.parametrize("locale", [None, "xx_XX.BOGUS-8"])
def test_the_app_starts_without_the_configured_locale(
    tmp_path: Path, server: list[ServerProcess], locale: str | None
) -> None:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"LOCALE", "LANG", "LC_ALL"}
    }
    if locale is not None:
        env["LOCALE"] = locale
        env["LC_ALL"] = locale
    process = ServerProcess(tmp_path / "var", env, inherit_env=False)
    server.append(process)
    process.start()
    status, _ = process.get("/api/health")
    assert status == 200


def test_every_log_line_of_a_request_carries_its_id(
    tmp_path: Path, server: list[ServerProcess]
) -> None:
    process = ServerProcess(tmp_path / "var")
    server.append(process)
    process.start()
    connection = http.client.HTTPConnection("127.0.0.1", process.port, timeout=5)
    connection.request("GET", "/api/nothing", headers={"X-Request-ID": "trace-me-42"})
    response = connection.getresponse()
    assert response.getheader("X-Request-ID") == "trace-me-42"
    connection.close()
    process.signal()
    assert process.wait() == 0
    lines = [line for line in process.output().splitlines() if "/api/nothing" in line]
    assert lines
    assert all("[trace-me-42]" in line for line in lines)
