"""``POST /api/repositories/{owner}/{name}/deploys``: who, what and when."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

import pytest

from api.keys import RUNNER
from tests.fakes.github import FakeGitHub
from tests.support import (
    READER,
    READER_TOKEN,
    Client,
    GitRemote,
    auth_headers,
    register,
    revoke,
    send_push,
    wait_for_job,
)

WRITER = "writer"
WRITER_TOKEN = "ghp_" + "Wr1t3rT0ken" * 3 + "wxyz"
DEPLOYS = "/api/repositories/octocat/hello/deploys"
MAKEFILE = (
    "test:\n\t@echo testing\n\n"
    "deploy:\n"
    "\t@echo deployed HEAD=$$(git rev-parse HEAD) GIT_COMMIT=$(GIT_COMMIT)"
    " GIT_BRANCH=$(GIT_BRANCH)\n"
)
FAILING_TEST = "test:\n\t@exit 1\n\ndeploy:\n\t@echo deployed\n"


@pytest.fixture
def writer(github: FakeGitHub) -> dict[str, str]:
    """Headers of a user with WRITE (push, not admin) on octocat/hello."""
    github.add_user(WRITER, token=WRITER_TOKEN)
    repo = github.find_repo("octocat", "hello")
    assert repo is not None
    repo.permissions[WRITER] = "WRITE"
    return auth_headers(WRITER, WRITER_TOKEN)


@pytest.fixture
async def webhook(
    client: Client, github: FakeGitHub, remote: GitRemote
) -> dict[str, str]:
    remote.commit({"Makefile": MAKEFILE}, "deployable")
    data: dict[str, str] = (await register(client))["webhook"]
    return data


async def deploy(
    client: Client, body: Mapping[str, Any] | None, headers: Mapping[str, str]
) -> tuple[int, dict[str, Any]]:
    response = await client.post(DEPLOYS, json=body, headers=headers)
    data: dict[str, Any] = await response.json()
    if response.status == 202:
        assert response.headers["Location"] == data["url"]
    return response.status, data


async def job_numbers(client: Client) -> list[int]:
    response = await client.get(
        "/api/repositories/octocat/hello/jobs", headers=auth_headers()
    )
    return [job["number"] for job in (await response.json())["items"]]


async def job_log(client: Client, number: int) -> str:
    response = await client.get(
        f"/api/repositories/octocat/hello/jobs/{number}/log", headers=auth_headers()
    )
    assert response.status == 200
    return await response.text()


async def wait_for_status(
    github: FakeGitHub, sha: str, final: str, timeout: float = 15.0
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        posted = [
            s
            for s in github.statuses
            if s["sha"] == sha and s["context"] == "hobotnica/deploy"
        ]
        if posted and posted[-1]["state"] == final:
            return posted
        assert time.monotonic() < deadline, f"deploy statuses of {sha}: {posted}"
        await asyncio.sleep(0.02)


@pytest.mark.integrational
async def test_write_user_deploys_an_older_sha(
    client: Client,
    github: FakeGitHub,
    remote: GitRemote,
    webhook: dict[str, str],
    writer: dict[str, str],
) -> None:
    older = remote.commit({"version": "1"}, "v1")
    head = remote.commit({"version": "2"}, "v2")
    status, job = await deploy(client, {"sha": older}, writer)
    assert status == 202, job
    assert (job["kind"], job["status"], job["sha"]) == ("deploy", "queued", older)
    assert job["trigger"] == {"type": "api", "user": WRITER}
    done = await wait_for_job(client, job["number"])
    assert (done["status"], done["exit_code"], done["sha"]) == ("success", 0, older)
    log = await job_log(client, job["number"])
    assert f"deployed HEAD={older} GIT_COMMIT={older} GIT_BRANCH=main" in log
    assert head not in log

    posted = await wait_for_status(github, older, "success")
    assert posted[0]["state"] == "pending"
    assert posted[-1]["target_url"] == done["log_url"]
    assert posted[-1]["description"].startswith("make deploy passed in ")
    assert not [s for s in github.statuses if s["sha"] == head]


@pytest.mark.integrational
@pytest.mark.parametrize(
    "body",
    [
        pytest.param(None, id="no body"),
        pytest.param({}, id="empty object"),
    ],
)
async def test_deploy_defaults_to_the_tracked_branch_head(
    client: Client,
    remote: GitRemote,
    webhook: dict[str, str],
    body: dict[str, Any] | None,
) -> None:
    remote.commit({"version": "1"})
    head = remote.commit({"version": "2"})
    status, job = await deploy(client, body, auth_headers())
    assert status == 202, job
    assert job["ref"] == "main"
    done = await wait_for_job(client, job["number"])
    assert (done["status"], done["sha"]) == ("success", head)
    assert f"deployed HEAD={head}" in await job_log(client, job["number"])


@pytest.mark.integrational
async def test_deploy_of_another_ref_checks_out_its_head(
    client: Client, remote: GitRemote, webhook: dict[str, str]
) -> None:
    feature = remote.commit({"feature": "1"}, "feature work", branch="feature")
    status, job = await deploy(client, {"ref": "feature"}, auth_headers())
    assert status == 202, job
    done = await wait_for_job(client, job["number"])
    assert (done["status"], done["ref"], done["sha"]) == ("success", "feature", feature)
    log = await job_log(client, job["number"])
    assert f"deployed HEAD={feature} GIT_COMMIT={feature} GIT_BRANCH=feature" in log


async def test_deploy_of_an_unknown_sha_is_an_error(
    client: Client, github: FakeGitHub, webhook: dict[str, str]
) -> None:
    missing = "e" * 40
    status, job = await deploy(client, {"sha": missing}, auth_headers())
    assert status == 202
    done = await wait_for_job(client, job["number"])
    assert done["status"] == "error"
    assert done["exit_code"] is None
    posted = await wait_for_status(github, missing, "error")
    assert "git" in posted[-1]["description"]


async def test_read_user_is_403_and_nothing_is_queued(
    client: Client, webhook: dict[str, str]
) -> None:
    status, body = await deploy(client, {}, auth_headers(READER, READER_TOKEN))
    assert status == 403
    assert "Push access" in body["detail"]
    assert await job_numbers(client) == [1]


async def test_unknown_repositories_are_404(
    client: Client, github: FakeGitHub, webhook: dict[str, str]
) -> None:
    response = await client.post(
        "/api/repositories/octocat/nope/deploys", json={}, headers=auth_headers()
    )
    assert response.status == 404
    github.add_repo("octocat", "unregistered", permissions={"octocat": "ADMIN"})
    response = await client.post(
        "/api/repositories/octocat/unregistered/deploys",
        json={},
        headers=auth_headers(),
    )
    assert response.status == 404
    assert "not registered" in (await response.json())["detail"]


async def test_invalid_bodies_are_422(client: Client, webhook: dict[str, str]) -> None:
    for body in ({"sha": "HEAD"}, {"sha": "abc"}, {"colour": "blue"}):
        status, answer = await deploy(client, body, auth_headers())
        assert status == 422, body
        assert isinstance(answer["detail"], list)
        assert answer["detail"][0]["loc"]
    assert await job_numbers(client) == [1]


async def test_revoked_repository_is_409(
    client: Client, webhook: dict[str, str]
) -> None:
    await revoke(client)
    status, body = await deploy(client, {}, auth_headers())
    assert status == 409
    assert "revoked" in body["detail"]


@pytest.mark.integrational
async def test_require_tests_refuses_until_the_sha_is_green(
    client: Client, remote: GitRemote, webhook: dict[str, str]
) -> None:
    untested = remote.commit({"a": "1"})
    status, body = await deploy(
        client, {"sha": untested, "require_tests": True}, auth_headers()
    )
    assert status == 409
    assert untested in body["detail"]

    red = remote.commit({"Makefile": FAILING_TEST})
    _, test = await send_push(client, webhook, red)
    assert (await wait_for_job(client, test["number"]))["status"] == "failed"
    status, body = await deploy(
        client, {"sha": red, "require_tests": True}, auth_headers()
    )
    assert status == 409
    assert "failed" in body["detail"]

    green = remote.commit({"Makefile": MAKEFILE})
    _, test = await send_push(client, webhook, green)
    assert (await wait_for_job(client, test["number"]))["status"] == "success"
    status, job = await deploy(
        client, {"sha": green, "require_tests": True}, auth_headers()
    )
    assert status == 202, job
    assert job["sha"] == green
    assert (await wait_for_job(client, job["number"]))["status"] == "success"
    # red is still refused, also when asked without require_tests it deploys
    status, _ = await deploy(
        client, {"sha": red, "require_tests": True}, auth_headers()
    )
    assert status == 409
    status, job = await deploy(client, {"sha": red}, auth_headers())
    assert status == 202
    await wait_for_job(client, job["number"])


@pytest.mark.integrational
async def test_require_tests_without_sha_takes_the_latest_tested_head(
    client: Client, remote: GitRemote, webhook: dict[str, str]
) -> None:
    status, body = await deploy(client, {"require_tests": True}, auth_headers())
    assert status == 409
    assert "No test job" in body["detail"]
    green = remote.commit({"a": "1"})
    _, test = await send_push(client, webhook, green)
    await wait_for_job(client, test["number"])
    status, job = await deploy(client, {"require_tests": True}, auth_headers())
    assert status == 202, job
    assert job["sha"] == green
    await wait_for_job(client, job["number"])
    # The branch by its full name is the same branch.
    status, job = await deploy(
        client, {"ref": "refs/heads/main", "require_tests": True}, auth_headers()
    )
    assert status == 202, job
    assert (job["ref"], job["sha"]) == ("main", green)
    assert (await wait_for_job(client, job["number"]))["status"] == "success"


async def test_require_tests_refuses_a_sha_whose_test_is_still_running(
    client: Client, remote: GitRemote, tmp_path: Any
) -> None:
    release = tmp_path / "release"
    remote.commit(
        {
            "Makefile": f"test:\n\t@while [ ! -e {release} ]; do sleep 0.02; done\n"
            "\ndeploy:\n\t@echo deployed\n"
        }
    )
    webhook = (await register(client))["webhook"]
    sha = remote.commit({"a": "1"})
    _, test = await send_push(client, webhook, sha)
    await wait_for_job(client, test["number"], statuses={"running"})
    status, body = await deploy(
        client, {"sha": sha, "require_tests": True}, auth_headers()
    )
    assert status == 409
    assert "running" in body["detail"]
    release.touch()
    await wait_for_job(client, test["number"])


async def test_deploy_while_draining_is_503(
    client: Client, webhook: dict[str, str]
) -> None:
    client.app[RUNNER].draining = True
    try:
        response = await client.post(DEPLOYS, json={}, headers=auth_headers())
        assert response.status == 503
        assert int(response.headers["Retry-After"]) > 0
        assert "detail" in await response.json()
    finally:
        client.app[RUNNER].draining = False
    assert await job_numbers(client) == [1]


@pytest.mark.integrational
async def test_deploy_of_the_branch_head_reports_pending_first(
    client: Client, github: FakeGitHub, remote: GitRemote, webhook: dict[str, str]
) -> None:
    head = remote.commit({"a": "1"})
    _, job = await deploy(client, {}, auth_headers())
    await wait_for_job(client, job["number"])
    posted = await wait_for_status(github, head, "success")
    assert [s["state"] for s in posted] == ["pending", "success"]


@pytest.mark.integrational
async def test_a_deploy_body_that_is_not_json_is_422(
    client: Client, remote: GitRemote, webhook: dict[str, str]
) -> None:
    response = await client.post(
        "/api/repositories/octocat/hello/deploys",
        data=b"ref=main",
        headers={**auth_headers(), "Content-Type": "application/octet-stream"},
    )
    assert response.status == 422
    assert (await response.json())["detail"][0]["loc"] == ["body"]
