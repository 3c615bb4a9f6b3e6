"""The real client against the fake GitHub on loopback (tests/fakes/github.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from api.github import (
    GitHubClient,
    GitHubUnavailable,
    GitHubUser,
    InvalidCredentials,
    OwnerNotFound,
    Permission,
    RateLimited,
    RepositoryAccess,
    RepositoryNotFound,
)
from tests.fakes.github import FakeGitHub

pytestmark = pytest.mark.integrational

TOKEN = "ghp_mona"
SHA = "6dcb09b5b57875f334f61aebed695e2e4193db5e"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def fake() -> AsyncIterator[FakeGitHub]:
    async with FakeGitHub.running() as github:
        github.add_user("Mona", token=TOKEN, name="Mona Lisa Octocat")
        github.add_user("hubot", token="ghp_hubot")
        github.add_org("octo-org", admins=("mona",))
        github.add_repo("octo-org", "Hello-World", permissions={"mona": "WRITE"})
        github.add_repo(
            "octo-org", "secret", private=True, permissions={"Mona": "ADMIN"}
        )
        github.add_repo(
            "hubot", "private", private=True, permissions={"hubot": "ADMIN"}
        )
        yield github


def make_client(
    session: aiohttp.ClientSession, fake: FakeGitHub, **options: Any
) -> GitHubClient:
    async def no_sleep(_: float) -> None:
        pass

    return GitHubClient(session, api_url=fake.url, sleep=no_sleep, **options)


async def test_authenticate(session: aiohttp.ClientSession, fake: FakeGitHub) -> None:
    client = make_client(session, fake)
    assert await client.authenticate("mona", TOKEN) == GitHubUser(
        "Mona", "Mona Lisa Octocat"
    )
    with pytest.raises(InvalidCredentials):
        await client.authenticate("hubot", TOKEN)
    with pytest.raises(InvalidCredentials, match="Bad credentials"):
        await client.authenticate("mona", "ghp_unknown")
    assert client.rate_limit_remaining is not None
    assert client.rate_limit_remaining < 5000


async def test_repository_access(
    session: aiohttp.ClientSession, fake: FakeGitHub
) -> None:
    client = make_client(session, fake)
    access = await client.repository_access(TOKEN, "OCTO-ORG", "hello-world")
    node_id = fake.repos["octo-org", "hello-world"].node_id
    assert access == RepositoryAccess(
        "octo-org", "Hello-World", Permission.WRITE, "main", False, node_id
    )
    hubot = await client.repository_access("ghp_hubot", "octo-org", "hello-world")
    assert hubot.permission is Permission.READ  # public: everyone reads
    with pytest.raises(RepositoryNotFound):
        await client.repository_access("ghp_hubot", "octo-org", "secret")
    with pytest.raises(RepositoryNotFound):
        await client.repository_access(TOKEN, "octo-org", "nope")


async def test_repositories_access(
    session: aiohttp.ClientSession, fake: FakeGitHub
) -> None:
    wanted = [("octo-org", "secret"), ("hubot", "private"), ("octo-org", "Hello-World")]
    found = await make_client(session, fake).repositories_access(TOKEN, wanted)
    assert list(found) == [("octo-org", "secret"), ("octo-org", "Hello-World")]
    assert found["octo-org", "secret"].is_private
    assert found["octo-org", "secret"].permission is Permission.ADMIN
    assert len(fake.calls) == 1


async def test_can_administer_owner(
    session: aiohttp.ClientSession, fake: FakeGitHub
) -> None:
    client = make_client(session, fake)
    assert await client.can_administer_owner("mona", TOKEN, "MONA")
    assert await client.can_administer_owner("mona", TOKEN, "octo-org")
    assert not await client.can_administer_owner("hubot", "ghp_hubot", "octo-org")
    assert not await client.can_administer_owner("mona", TOKEN, "hubot")
    with pytest.raises(OwnerNotFound):
        await client.can_administer_owner("mona", TOKEN, "nobody")


async def test_revocation_seen_after_ttl(
    session: aiohttp.ClientSession, fake: FakeGitHub
) -> None:
    clock = Clock()
    client = make_client(session, fake, clock=clock, cache_ttl=30)
    assert (await client.repository_access(TOKEN, "octo-org", "secret")).permission
    fake.revoke(TOKEN, "octo-org", "secret")
    await client.repository_access(TOKEN, "octo-org", "secret")  # still cached
    clock.now = 31
    with pytest.raises(RepositoryNotFound):
        await client.repository_access(TOKEN, "octo-org", "secret")
    assert len(fake.calls) == 2


async def test_commit_status(session: aiohttp.ClientSession, fake: FakeGitHub) -> None:
    client = make_client(session, fake)

    async def post(token: str, sha: str = SHA, description: str = "ok") -> bool:
        return await client.set_commit_status(
            token,
            "octo-org",
            "hello-world",
            sha,
            state="success",
            context="hobotnica/test",
            target_url="http://ci.test/jobs/1/log",
            description=description,
        )

    assert await post(TOKEN, description="é" * 300)
    assert fake.statuses == [
        {
            "owner": "octo-org",
            "name": "Hello-World",
            "sha": SHA,
            "state": "success",
            "context": "hobotnica/test",
            "target_url": "http://ci.test/jobs/1/log",
            "description": "é" * 139 + "…",
        }
    ]
    assert not await post("ghp_hubot")  # no push rights: 404 like GitHub
    assert not await post(TOKEN, sha="main")  # 422
    assert len(fake.statuses) == 1


async def test_server_errors_are_retried(
    session: aiohttp.ClientSession, fake: FakeGitHub
) -> None:
    fake.fail_next(2, status=502, html=True)
    client = make_client(session, fake)
    assert (await client.authenticate("mona", TOKEN)).login == "Mona"
    assert len(fake.calls) == 3
    fake.fail_next(3, status=503)
    with pytest.raises(GitHubUnavailable):
        await make_client(session, fake, retries=2).authenticate("mona", TOKEN)


async def test_timeout(session: aiohttp.ClientSession, fake: FakeGitHub) -> None:
    fake.delay(0.5)
    client = make_client(session, fake, timeout=0.05, retries=1)
    with pytest.raises(GitHubUnavailable, match="Timeout"):
        await client.authenticate("mona", TOKEN)
    assert len(fake.calls) == 2


async def test_secondary_rate_limit(
    session: aiohttp.ClientSession, fake: FakeGitHub
) -> None:
    fake.secondary_rate_limit(retry_after=30)
    client = make_client(session, fake)
    with pytest.raises(RateLimited) as caught:
        await client.authenticate("mona", TOKEN)
    assert caught.value.retry_after == pytest.approx(30, abs=1)
    with pytest.raises(RateLimited):
        await client.authenticate("mona", TOKEN)
    assert len(fake.calls) == 1
    assert await make_client(session, fake).authenticate("mona", TOKEN)


async def test_primary_rate_limit(
    session: aiohttp.ClientSession, fake: FakeGitHub
) -> None:
    fake.rate_limit_exhausted(reset_in=60)
    client = make_client(session, fake)
    with pytest.raises(RateLimited, match="rate limit exceeded") as caught:
        await client.repository_access(TOKEN, "octo-org", "secret")
    assert caught.value.retry_after == pytest.approx(60, abs=2)
    assert client.rate_limit_remaining == 0
    with pytest.raises(RateLimited):
        await client.authenticate("mona", TOKEN)  # refused before sending
    assert len(fake.calls) == 1
    assert not await client.set_commit_status(
        TOKEN,
        "octo-org",
        "secret",
        SHA,
        state="pending",
        context="c",
        target_url=None,
        description=None,
    )
    assert len(fake.calls) == 2  # REST has its own budget: asked once, 403


async def test_fake_speaks_github(
    session: aiohttp.ClientSession, fake: FakeGitHub
) -> None:
    headers = {"Authorization": f"bearer {TOKEN}"}
    query = {"query": "{ viewer { login } nope: repository(owner: 1) { name } }"}
    async with session.post(f"{fake.url}/graphql", json=query, headers=headers) as resp:
        body = await resp.json()
        assert resp.status == 200
        assert resp.headers["X-GitHub-Request-Id"]
        assert resp.headers["X-RateLimit-Limit"] == "5000"
    assert "data" not in body
    assert body["errors"]
    async with session.post(f"{fake.url}/graphql", json=query) as resp:
        assert resp.status == 401
        assert (await resp.json())["message"] == "Bad credentials"
    assert fake.calls[0].token == TOKEN
    assert fake.calls[1].token is None
