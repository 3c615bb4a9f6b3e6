"""Register, clone, push, test, deploy: the main path end to end."""

from __future__ import annotations

import pytest

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
