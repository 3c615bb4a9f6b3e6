"""Registering, reading, listing and deleting repositories."""

from __future__ import annotations

from pathlib import Path

import pytest

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
    wait_for_job,
)

pytestmark = pytest.mark.integrational


async def test_register_clones_and_becomes_ready(
    client: Client, remote: GitRemote, settings: Settings
) -> None:
    response = await client.post(
        "/api/repositories",
        json={"owner": "octocat", "name": "hello"},
        headers=auth_headers(),
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
    response = await client.post(
        "/api/repositories",
        json={"owner": "OctoCat", "name": "Hello"},
        headers=auth_headers(),
    )
    assert response.status == 409
    assert "registered already" in (await response.json())["detail"]


async def test_a_default_branch_git_would_refuse_is_409_and_stores_nothing(
    client: Client, remote: GitRemote, github: FakeGitHub
) -> None:
    github.repos["octocat", "hello"].default_branch = "+odd"
    response = await client.post(
        "/api/repositories",
        json={"owner": "octocat", "name": "hello"},
        headers=auth_headers(),
    )
    assert response.status == 409
    assert "name the branch to track" in (await response.json())["detail"]
    listing = await client.get("/api/repositories", headers=auth_headers())
    assert (await listing.json())["total"] == 0
    response = await client.post(
        "/api/repositories",
        json={"owner": "octocat", "name": "hello", "branch": "main"},
        headers=auth_headers(),
    )
    assert response.status == 202
    assert (await wait_for_job(client, 1))["status"] == "success"


async def test_register_needs_push_rights(client: Client, remote: GitRemote) -> None:
    response = await client.post(
        "/api/repositories",
        json={"owner": "octocat", "name": "hello"},
        headers=auth_headers(READER, READER_TOKEN),
    )
    assert response.status == 403
    listing = await client.get("/api/repositories", headers=auth_headers())
    assert (await listing.json())["total"] == 0


async def test_unknown_repository_is_404(client: Client) -> None:
    response = await client.post(
        "/api/repositories",
        json={"owner": "octocat", "name": "nope"},
        headers=auth_headers(),
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
    again = await client.post(
        "/api/repositories",
        json={"owner": "octocat", "name": "hello"},
        headers=auth_headers(),
    )
    assert again.status == 202


async def test_clone_failure_marks_the_repository_failed(
    client: Client, github: FakeGitHub
) -> None:
    github.add_repo("octocat", "empty", permissions={"octocat": "ADMIN"})
    response = await client.post(
        "/api/repositories",
        json={"owner": "octocat", "name": "empty"},
        headers=auth_headers(),
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
