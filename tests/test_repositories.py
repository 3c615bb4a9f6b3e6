"""Registering, reading, listing and deleting repositories."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse

from api.jobs import git
from api.jobs.leftovers import marked_processes
from api.keys import GITHUB, RUNNER, SECRET_BOX, SETTINGS, STORAGE
from api.repositories.access import AccessChecker
from api.settings import Settings
from tests.fakes.github import FakeGitHub
from tests.support import (
    READER,
    READER_TOKEN,
    TOKEN,
    Client,
    GitRemote,
    auth_headers,
    register,
    send_push,
    wait_for_job,
)

pytestmark = pytest.mark.integrational


async def post_registration(
    client: Client, body: dict[str, Any], headers: dict[str, str]
) -> ClientResponse:
    """``POST /api/repositories`` as it is, its answer not checked."""
    return await client.post("/api/repositories", json=body, headers=headers)


async def test_register_clones_and_becomes_ready(
    client: Client, remote: GitRemote, settings: Settings
) -> None:
    response = await post_registration(
        client, {"owner": "octocat", "name": "hello"}, auth_headers()
    )
    assert response.status == 202
    body = await response.json()
    assert body["status"] == "cloning"
    assert body["branch"] == "main"
    assert body["webhook"]["url"].startswith("http://hobotnica.test/api/webhooks/")
    assert len(body["webhook"]["secret"]) >= 32
    assert response.headers["Location"] == body["url"]
    clone = await wait_for_job(client, 1)
    assert clone["kind"] == "clone"
    assert clone["status"] == "success"
    assert clone["sha"] == remote.commit({}, "noop") or clone["sha"]
    ready = await (
        await client.get("/api/repositories/octocat/hello", headers=auth_headers())
    ).json()
    assert ready["status"] == "ready"
    clones = list((settings.data_dir / "clones").iterdir())
    assert len(clones) == 1
    assert (clones[0] / "Makefile").is_file()


async def test_register_twice_is_409(client: Client, remote: GitRemote) -> None:
    await register(client)
    response = await post_registration(
        client, {"owner": "OctoCat", "name": "Hello"}, auth_headers()
    )
    assert response.status == 409
    assert "registered already" in (await response.json())["detail"]


async def test_a_branch_named_as_a_push_names_it_tracks_that_branch(
    client: Client, remote: GitRemote
) -> None:
    repository = await register(client, branch="refs/heads/main")
    assert repository["branch"] == "main"
    status, job = await send_push(client, repository["webhook"], remote.commit({}))
    assert status == 202, job
    assert (await wait_for_job(client, job["number"]))["status"] == "success"


async def test_a_default_branch_git_would_refuse_is_409_and_stores_nothing(
    client: Client, remote: GitRemote, github: FakeGitHub
) -> None:
    github.repos["octocat", "hello"].default_branch = "+odd"
    response = await post_registration(
        client, {"owner": "octocat", "name": "hello"}, auth_headers()
    )
    assert response.status == 409
    assert "name the branch to track" in (await response.json())["detail"]
    listing = await client.get("/api/repositories", headers=auth_headers())
    assert (await listing.json())["total"] == 0
    response = await post_registration(
        client, {"owner": "octocat", "name": "hello", "branch": "main"}, auth_headers()
    )
    assert response.status == 202
    assert (await wait_for_job(client, 1))["status"] == "success"


async def test_register_needs_push_rights(client: Client, remote: GitRemote) -> None:
    response = await post_registration(
        client,
        {"owner": "octocat", "name": "hello"},
        auth_headers(READER, READER_TOKEN),
    )
    assert response.status == 403
    listing = await client.get("/api/repositories", headers=auth_headers())
    assert (await listing.json())["total"] == 0


async def test_unknown_repository_is_404(client: Client) -> None:
    response = await post_registration(
        client, {"owner": "octocat", "name": "nope"}, auth_headers()
    )
    assert response.status == 404


@pytest.mark.parametrize(
    "body",
    [
        {"owner": "../etc", "name": "hello"},
        {"owner": "octocat", "name": ".."},
        {"owner": "octocat", "name": "a/b"},
        {"owner": "-octocat", "name": "hello"},
        {"owner": "octocat", "name": "hello", "branch": "../x"},
        {"owner": "octocat", "name": "hello", "branch": "-x"},
        {"owner": "octocat"},
        {"owner": "octocat", "name": "hello", "extra": 1},
        {"owner": 1, "name": "hello"},
    ],
)
async def test_invalid_names_are_422(client: Client, body: dict[str, object]) -> None:
    response = await client.post("/api/repositories", json=body, headers=auth_headers())
    assert response.status == 422, await response.text()
    detail = (await response.json())["detail"]
    assert isinstance(detail, list)
    assert {"loc", "message"} <= set(detail[0])


async def test_credentials_are_checked(client: Client, github: FakeGitHub) -> None:
    path = "/api/repositories"
    missing = await client.get(path, headers={"X-GitHub-Username": "octocat"})
    assert missing.status == 403
    assert await missing.json() == {"detail": "Not authenticated"}
    basic = await client.get(
        path,
        headers={"X-GitHub-Username": "octocat", "Authorization": f"Basic {TOKEN}"},
    )
    assert basic.status == 403
    assert await basic.json() == {"detail": "Not authenticated"}
    no_user = await client.get(path, headers={"Authorization": f"Bearer {TOKEN}"})
    assert no_user.status == 422
    wrong_user = await client.get(path, headers=auth_headers(READER, TOKEN))
    assert wrong_user.status == 403
    assert await wrong_user.json() == {"detail": "Invalid credentials"}
    bad_token = await client.get(
        path, headers=auth_headers("octocat", "ghp_" + "x" * 36)
    )
    assert bad_token.status == 403
    assert await bad_token.json() == {"detail": "Invalid credentials"}


async def test_github_failure_is_502(client: Client, github: FakeGitHub) -> None:
    github.fail_next(10, status=503)
    response = await client.get("/api/repositories", headers=auth_headers())
    assert response.status == 502
    assert "detail" in await response.json()


async def test_reader_sees_repository_without_webhook_secret(
    client: Client, remote: GitRemote
) -> None:
    await register(client)
    response = await client.get(
        "/api/repositories/octocat/hello", headers=auth_headers(READER, READER_TOKEN)
    )
    assert response.status == 200
    body = await response.json()
    assert "secret" not in body["webhook"]
    listing = await (
        await client.get(
            "/api/repositories", headers=auth_headers(READER, READER_TOKEN)
        )
    ).json()
    assert [r["full_name"] for r in listing["items"]] == ["octocat/hello"]
    assert "secret" not in listing["items"][0]["webhook"]
    delete = await client.delete(
        "/api/repositories/octocat/hello", headers=auth_headers(READER, READER_TOKEN)
    )
    assert delete.status == 403


async def test_list_shows_only_what_the_token_can_see(
    client: Client, github: FakeGitHub, remote: GitRemote, tmp_path: Path
) -> None:
    github.add_repo(
        "octocat", "secret-project", private=True, permissions={"octocat": "WRITE"}
    )
    GitRemote(tmp_path, "octocat", "secret-project").commit(
        {"Makefile": "test:\n\ttrue\n"}
    )
    await register(client)
    await register(client, name="secret-project")
    mine = await (await client.get("/api/repositories", headers=auth_headers())).json()
    assert mine["total"] == 2
    theirs = await (
        await client.get(
            "/api/repositories", headers=auth_headers(READER, READER_TOKEN)
        )
    ).json()
    assert theirs["total"] == 1
    assert theirs["items"][0]["name"] == "hello"
    page = await (
        await client.get("/api/repositories?limit=1&offset=1", headers=auth_headers())
    ).json()
    assert page["total"] == 2
    assert [r["name"] for r in page["items"]] == ["secret-project"]


async def test_delete_removes_clone_logs_and_records(
    client: Client, remote: GitRemote, settings: Settings
) -> None:
    await register(client)
    assert any((settings.data_dir / "clones").iterdir())
    response = await client.delete(
        "/api/repositories/octocat/hello", headers=auth_headers()
    )
    assert response.status == 204
    assert not any((settings.data_dir / "clones").iterdir())
    assert not any((settings.data_dir / "logs").iterdir())
    gone = await client.get("/api/repositories/octocat/hello", headers=auth_headers())
    assert gone.status == 404
    again = await post_registration(
        client, {"owner": "octocat", "name": "hello"}, auth_headers()
    )
    assert again.status == 202


async def test_a_push_claimed_while_the_repository_is_deleted_never_runs(
    client: Client,
    remote: GitRemote,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The push's job is claimed but still being planned when DELETE comes:
    once DELETE has answered, nothing of the repository runs or is left,
    and registering it again starts afresh."""
    remote.commit({"Makefile": "test:\n\t@sleep 3\n"})
    repository = await register(client)
    runner = client.app[RUNNER]
    env = client.app[STORAGE].env
    job_layers = env.job_layers
    planning, planned = asyncio.Event(), asyncio.Event()

    async def slow_job_layers(*args: Any) -> Any:
        planning.set()
        await asyncio.sleep(0.5)
        try:
            return await job_layers(*args)
        finally:
            planned.set()

    monkeypatch.setattr(env, "job_layers", slow_job_layers)
    pushed = asyncio.create_task(
        send_push(client, repository["webhook"], remote.commit({"a": "1"}))
    )
    await asyncio.wait_for(planning.wait(), 10)
    await asyncio.sleep(0.1)  # its early fetch has ended: DELETE is quick
    response = await client.delete(
        "/api/repositories/octocat/hello", headers=auth_headers()
    )
    assert response.status == 204
    assert (await pushed)[0] in (202, 404)
    await asyncio.wait_for(planned.wait(), 10)
    await asyncio.sleep(0.3)  # a job that went on would be running by now
    assert runner.running == {}
    assert marked_processes(f"{runner.instance_id}/") == []
    assert not any((settings.data_dir / "clones").iterdir())
    assert not any((settings.data_dir / "logs").iterdir())

    monkeypatch.setattr(env, "job_layers", job_layers)
    remote.commit({"Makefile": "test:\n\t@echo again\n"})
    repository = await register(client)
    status, body = await send_push(
        client, repository["webhook"], sha := remote.commit({"b": "2"})
    )
    assert status == 202
    job = await wait_for_job(client, int(body["number"]))
    assert (job["status"], job["sha"]) == ("success", sha)


async def test_a_job_whose_repository_another_instance_removed_is_stopped(
    client: Client, remote: GitRemote
) -> None:
    """Two instances share the database during an upgrade: when the other
    one deletes the repository, this one stops the job it runs of it."""
    remote.commit({"Makefile": "deploy:\n\t@sleep 30\n"})
    await register(client)
    runner = client.app[RUNNER]
    response = await client.post(
        "/api/repositories/octocat/hello/deploys", json={}, headers=auth_headers()
    )
    assert response.status == 202
    for _ in range(100):
        if marked_processes(f"{runner.instance_id}/"):
            break
        await asyncio.sleep(0.05)
    assert runner.running
    await client.app[STORAGE].db.execute_write(
        "DELETE FROM repositories WHERE owner = ?", ("octocat",)
    )
    for _ in range(100):  # the runner looks once a second (POLL_INTERVAL)
        if not runner.running:
            break
        await asyncio.sleep(0.05)
    assert runner.running == {}
    assert marked_processes(f"{runner.instance_id}/") == []


REMOVED_WHILE_SERVED = {
    "deploy": ("POST", "/api/repositories/octocat/hello/deploys", {}),
    "env": ("PUT", "/api/repositories/octocat/hello/env", {"vars": {"A": "1"}}),
}


@pytest.mark.parametrize("case", list(REMOVED_WHILE_SERVED))
async def test_a_repository_deleted_while_a_request_is_served_is_404(
    client: Client, remote: GitRemote, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    """DELETE completes between the handler's lookup and its write."""
    await register(client)
    storage = client.app[STORAGE]
    get = storage.repositories.get

    async def get_then_deleted(*args: Any) -> Any:
        found = await get(*args)
        await storage.db.execute_write("DELETE FROM repositories")
        return found

    monkeypatch.setattr(storage.repositories, "get", get_then_deleted)
    method, path, body = REMOVED_WHILE_SERVED[case]
    response = await client.request(method, path, json=body, headers=auth_headers())
    assert response.status == 404, await response.text()
    assert "not registered" in (await response.json())["detail"]


@pytest.mark.parametrize("branch", ["main", "other"])
async def test_a_push_to_a_repository_deleted_meanwhile_is_404(
    client: Client,
    remote: GitRemote,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    branch: str,
) -> None:
    """The delivery is verified, then its repository is gone: a push that
    queues a job (main) and one that is only recorded (other)."""
    repository = await register(client)
    storage = client.app[STORAGE]
    lookup = storage.repositories.get_by_webhook_uid

    async def lookup_then_deleted(uid: str) -> Any:
        found = await lookup(uid)
        await storage.db.execute_write("DELETE FROM repositories")
        return found

    monkeypatch.setattr(storage.repositories, "get_by_webhook_uid", lookup_then_deleted)
    status, body = await send_push(
        client, repository["webhook"], remote.commit({"a": "1"}), branch=branch
    )
    assert status == 404, body
    assert "Unhandled error" not in caplog.text


async def test_a_cancelled_clone_is_made_good_by_the_next_job(
    client: Client, remote: GitRemote
) -> None:
    """The clone is cancelled (repository ``failed``); the next job clones
    again and runs make: the repository is ``ready`` again."""
    response = await post_registration(
        client, {"owner": "octocat", "name": "hello"}, auth_headers()
    )
    assert response.status == 202
    cancel = await client.post(
        "/api/repositories/octocat/hello/jobs/1/cancel", headers=auth_headers()
    )
    assert cancel.status == 202
    assert (await wait_for_job(client, 1))["status"] == "cancelled"
    url = "/api/repositories/octocat/hello"
    failed = await (await client.get(url, headers=auth_headers())).json()
    assert failed["status"] == "failed"
    response = await client.post(f"{url}/deploys", json={}, headers=auth_headers())
    assert response.status == 202
    assert (await wait_for_job(client, 2))["status"] == "success"
    ready = await (await client.get(url, headers=auth_headers())).json()
    assert (ready["status"], ready["status_detail"]) == ("ready", None)


async def test_a_repository_revoked_during_its_clone_stays_revoked(
    client: Client, remote: GitRemote, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The revoke cancels the running clone; the clone's end must not set
    the repository back to ``failed`` (nor ``ready``)."""
    monkeypatch.setattr(git, "clone_steps", lambda *args: [["sleep", "30"]])
    response = await post_registration(
        client, {"owner": "octocat", "name": "hello"}, auth_headers()
    )
    assert response.status == 202
    await wait_for_job(client, 1, statuses={"running"})
    app = client.app
    checker = AccessChecker(
        app[SETTINGS], app[STORAGE], app[SECRET_BOX], app[GITHUB], app[RUNNER]
    )
    record = await app[STORAGE].repositories.get("octocat", "hello")
    assert record is not None
    await checker.revoke(record, "the stored token was revoked")
    assert (await wait_for_job(client, 1))["status"] == "cancelled"
    repository = await (
        await client.get("/api/repositories/octocat/hello", headers=auth_headers())
    ).json()
    assert repository["status"] == "revoked"
    jobs = await (
        await client.get("/api/repositories/octocat/hello/jobs", headers=auth_headers())
    ).json()
    assert jobs["total"] == 1  # no clone queued again


async def test_a_revoked_repository_can_be_registered_again(
    client: Client, remote: GitRemote, github: FakeGitHub
) -> None:
    """As the 409 of a deploy says: with a token that has access again, the
    registration comes back, with the same webhook, and builds pushes."""
    first = await register(client)
    github.revoke_token(TOKEN)
    app = client.app
    checker = AccessChecker(
        app[SETTINGS], app[STORAGE], app[SECRET_BOX], app[GITHUB], app[RUNNER]
    )
    assert await checker.check_all() == 1
    url = "/api/repositories/octocat/hello"
    github.add_user("octocat", token=TOKEN)
    refused = await client.post(f"{url}/deploys", json={}, headers=auth_headers())
    assert refused.status == 409
    assert "register it again" in (await refused.json())["detail"]
    again = await post_registration(
        client, {"owner": "octocat", "name": "hello"}, auth_headers()
    )
    assert again.status == 202, await again.text()
    body = await again.json()
    assert body["status"] == "cloning"
    assert body["webhook"] == first["webhook"]
    jobs = await (await client.get(f"{url}/jobs", headers=auth_headers())).json()
    clone = jobs["items"][0]
    assert clone["kind"] == "clone"
    assert (await wait_for_job(client, clone["number"]))["status"] == "success"
    ready = await (await client.get(url, headers=auth_headers())).json()
    assert ready["status"] == "ready"
    status, pushed = await send_push(client, body["webhook"], remote.commit({}))
    assert status == 202
    assert (await wait_for_job(client, int(pushed["number"])))["status"] == "success"


async def test_another_repository_under_the_registered_name_is_not_it(
    client: Client, remote: GitRemote, github: FakeGitHub
) -> None:
    """octocat/hello is renamed on GitHub and a new octocat/hello created:
    the registration (its token, env, webhook secret) is not the new one's."""
    await register(client)
    old = github.repos.pop(("octocat", "hello"))
    old.name = "hello-old"
    github.repos["octocat", "hello-old"] = old
    github.add_repo(
        "octocat", "hello", permissions={READER: "WRITE", "octocat": "ADMIN"}
    )
    url = "/api/repositories/octocat/hello"
    reader = auth_headers(READER, READER_TOKEN)
    assert (await client.get(url, headers=reader)).status == 404
    deploy = await client.post(f"{url}/deploys", json={}, headers=reader)
    assert deploy.status == 404
    app = client.app
    checker = AccessChecker(
        app[SETTINGS], app[STORAGE], app[SECRET_BOX], app[GITHUB], app[RUNNER]
    )
    assert await checker.check_all() == 1
    record = await app[STORAGE].repositories.get("octocat", "hello")
    assert record is not None
    assert (record.status, record.status_detail) == (
        "revoked",
        "another repository on GitHub has its name now",
    )
    again = await post_registration(
        client, {"owner": "octocat", "name": "hello"}, auth_headers()
    )
    assert again.status == 409
    assert "delete the registration first" in (await again.json())["detail"]
    # As the 409 says: whoever may push to the repository that has the name
    # now removes the old registration, then registers the name.
    assert (await client.delete(url, headers=reader)).status == 204
    new = await post_registration(
        client, {"owner": "octocat", "name": "hello"}, auth_headers()
    )
    assert new.status == 202, await new.text()


async def test_an_access_check_binds_an_older_registration_to_its_repository(
    client: Client, github: FakeGitHub
) -> None:
    """A registration stored before node ids were (no ``github_id``) gets
    the id of the repository its token reads at the next access check; a
    new repository under the name later is then told apart."""
    await register(client)
    app = client.app
    storage = app[STORAGE]
    await storage.db.execute_write(
        "UPDATE repositories SET github_id = NULL WHERE owner = 'octocat'"
    )
    checker = AccessChecker(
        app[SETTINGS], storage, app[SECRET_BOX], app[GITHUB], app[RUNNER]
    )
    assert await checker.check_all() == 0
    record = await storage.repositories.get("octocat", "hello")
    assert record is not None
    assert record.github_id == github.repos["octocat", "hello"].node_id
    old = github.repos.pop(("octocat", "hello"))
    github.repos["octocat", "hello-old"] = old
    github.add_repo("octocat", "hello", permissions={"octocat": "ADMIN"})
    assert await checker.check_all() == 1
    record = await storage.repositories.get("octocat", "hello")
    assert record is not None
    assert record.status_detail == "another repository on GitHub has its name now"


async def test_clone_failure_marks_the_repository_failed(
    client: Client, github: FakeGitHub
) -> None:
    github.add_repo("octocat", "empty", permissions={"octocat": "ADMIN"})
    response = await post_registration(
        client, {"owner": "octocat", "name": "empty"}, auth_headers()
    )
    assert response.status == 202
    job = await wait_for_job(client, 1, name="empty")
    assert job["status"] == "error"
    assert "git clone failed" in job["reason"]
    repository = await (
        await client.get("/api/repositories/octocat/empty", headers=auth_headers())
    ).json()
    assert repository["status"] == "failed"
    assert repository["status_detail"]
