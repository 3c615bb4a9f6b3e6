"""Register, clone, push, test, deploy: the main path end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
from pytest_aiohttp import AiohttpClient

from api.app import create_app
from api.settings import Settings
from tests.fakes.github import FakeGitHub
from tests.support import (
    Client,
    GitRemote,
    auth_headers,
    register,
    send_push,
    wait_for_job,
)

pytestmark = pytest.mark.integrational


async def test_register_push_and_deploy(
    client: Client, github: FakeGitHub, remote: GitRemote
) -> None:
    repository = await register(client)
    assert repository["status"] == "cloning"
    response = await client.get(
        "/api/repositories/octocat/hello", headers=auth_headers()
    )
    assert (await response.json())["status"] == "ready"

    sha = remote.commit({"README": "hi"}, "second")
    status, job = await send_push(client, repository["webhook"], sha)
    assert status == 202, job
    done = await wait_for_job(client, job["number"])
    assert done["status"] == "success", done
    assert done["sha"] == sha
    log = await (
        await client.get(
            done["log_url"].split("hobotnica.test")[1], headers=auth_headers()
        )
    ).text()
    assert "testing main" in log

    response = await client.post(
        "/api/repositories/octocat/hello/deploys", json={}, headers=auth_headers()
    )
    assert response.status == 202, await response.text()
    deploy = await wait_for_job(client, (await response.json())["number"])
    assert deploy["status"] == "success", deploy


async def test_the_default_relative_data_dir(
    aiohttp_client: AiohttpClient,
    settings: Settings,
    remote: GitRemote,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``./var`` (the default) is where the server was started: git and make,
    which run in other directories, find the clone and the logs there too."""
    monkeypatch.chdir(tmp_path)
    relative = settings.with_overrides(data_dir=Path("var"))
    assert relative.data_dir == tmp_path / "var"
    client = await aiohttp_client(create_app(relative))  # positional, as designed
    repository = await register(client)
    status, job = await send_push(client, repository["webhook"], remote.commit({}))
    assert status == 202, job
    assert (await wait_for_job(client, job["number"]))["status"] == "success"
    assert (tmp_path / "var" / "clones" / "1" / "Makefile").is_file()
