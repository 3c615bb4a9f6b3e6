"""GitHubClient over a mocked transport (aioresponses).

Answers and the cache first, then failures: retries, rate limits, logging.
"""

from __future__ import annotations

import json
import logging
import traceback
import types
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aioresponses import CallbackResult, aioresponses
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from api.github import (
    GitHubClient,
    GitHubError,
    GitHubUnavailable,
    GitHubUser,
    InvalidCredentials,
    OwnerNotFound,
    Permission,
    RateLimited,
    RepositoryAccess,
    RepositoryNotFound,
)

API = "https://api.github.test"
GRAPHQL = f"{API}/graphql"
TOKEN = "ghp_16C7e42F292c6912E7710c838347Ae178B4a"
WALL = 1_700_000_000.0
SAMPLES = Path(__file__).parent / "github_samples"


def sample(name: str) -> Any:
    return json.loads((SAMPLES / name).read_text())


def rate_headers(remaining: int = 4999, reset: float = WALL + 3600) -> dict[str, str]:
    return {
        "X-RateLimit-Limit": "5000",
        "X-RateLimit-Remaining": str(remaining),
        "X-RateLimit-Reset": str(int(reset)),
        "X-GitHub-Request-Id": "0403:094E:157B29B:29134A0:61E4695A",
    }


class CompatResponse(aiohttp.ClientResponse):
    """aioresponses 0.7.9 does not pass the ``stream_writer`` aiohttp 3.14 needs."""

    def __init__(self, method: str, url: URL, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", types.SimpleNamespace(output_size=0))
        super().__init__(method, url, **kwargs)


class MockedGitHub(aioresponses):
    def add(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("response_class", CompatResponse)
        super().add(*args, **kwargs)


class Harness:
    """A client on a mocked session, with a fake clock and recorded sleeps."""

    def __init__(self, session: aiohttp.ClientSession, mocked: MockedGitHub) -> None:
        self.session = session
        self.mocked = mocked
        self.now = 1000.0
        self.wall = WALL
        self.sleeps: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)

    def client(self, **options: Any) -> GitHubClient:
        options.setdefault("api_url", API)
        return GitHubClient(
            self.session,
            clock=lambda: self.now,
            wall_clock=lambda: self.wall,
            sleep=self.sleep,
            rand=lambda: 1.0,
            backoff_base=0.01,
            **options,
        )

    def answer(self, name: str, status: int = 200, url: str = GRAPHQL) -> None:
        self.mocked.post(
            url, status=status, payload=sample(name), headers=rate_headers()
        )

    def sent(self, url: str = GRAPHQL) -> list[Any]:
        """What was sent to ``url``: ``(kwargs, json body)`` per request."""
        calls = self.mocked.requests.get(("POST", URL(url)), [])
        return [(call.kwargs, json.loads(call.kwargs["data"])) for call in calls]


@pytest.fixture
async def gh() -> AsyncIterator[Harness]:
    async with aiohttp.ClientSession() as session:
        mocked = MockedGitHub()
        with mocked:
            yield Harness(session, mocked)


async def test_authenticate(gh: Harness) -> None:
    gh.answer("graphql_viewer.json")
    client = gh.client(timeout=7.0, connect_timeout=2.0, user_agent="hobotnica-test")
    user = await client.authenticate("OctoCat", TOKEN)
    assert user == GitHubUser(login="octocat", name="The Octocat")
    [(kwargs, body)] = gh.sent()
    assert "viewer { login name }" in body["query"]
    assert kwargs["headers"]["authorization"] == f"token {TOKEN}"
    assert kwargs["headers"]["user-agent"] == "hobotnica-test"
    assert kwargs["timeout"] == aiohttp.ClientTimeout(total=7.0, connect=2.0)
    assert client.rate_limit_remaining == 4999
    assert client.rate_limit_reset == WALL + 3600


async def test_authenticate_other_login(gh: Harness) -> None:
    gh.answer("graphql_viewer.json")
    with pytest.raises(InvalidCredentials):
        await gh.client().authenticate("hubot", TOKEN)


async def test_authenticate_bad_token_is_not_cached(gh: Harness) -> None:
    gh.answer("bad_credentials.json", status=401)
    gh.answer("graphql_viewer.json")
    client = gh.client()
    with pytest.raises(InvalidCredentials, match="Bad credentials"):
        await client.authenticate("octocat", TOKEN)
    assert (await client.authenticate("octocat", TOKEN)).login == "octocat"
    assert len(gh.sent()) == 2
    assert gh.sleeps == []  # 401 is final


async def test_repository_access(gh: Harness) -> None:
    gh.answer("graphql_repository.json")
    access = await gh.client().repository_access(TOKEN, "OCTOCAT", "hello-world")
    assert access == RepositoryAccess(
        owner="octocat",
        name="Hello-World",
        permission=Permission.WRITE,
        default_branch="master",
        is_private=False,
    )
    [(_, body)] = gh.sent()
    assert body["variables"] == {"owner": "OCTOCAT", "name": "hello-world"}
    assert "repository(owner: $owner, name: $name)" in body["query"]


async def test_repository_not_found_error_is_cached(gh: Harness) -> None:
    gh.answer("graphql_repository_not_found.json")
    client = gh.client()
    for _ in range(2):
        with pytest.raises(RepositoryNotFound):
            await client.repository_access(TOKEN, "octocat", "missing")
    assert len(gh.sent()) == 1


async def test_repository_null_without_error(gh: Harness) -> None:
    gh.mocked.post(GRAPHQL, payload={"data": {"repository": None}})
    with pytest.raises(RepositoryNotFound):
        await gh.client().repository_access(TOKEN, "octocat", "missing")


async def test_cache_hit_is_per_token(gh: Harness) -> None:
    gh.answer("graphql_viewer.json")
    gh.answer("graphql_viewer.json")
    client = gh.client()
    await client.authenticate("octocat", TOKEN)
    await client.authenticate("octocat", TOKEN)
    assert len(gh.sent()) == 1
    await client.authenticate("octocat", TOKEN + "x")
    assert len(gh.sent()) == 2


async def test_revocation_is_seen_after_ttl(gh: Harness) -> None:
    gh.answer("graphql_repository.json")
    gh.answer("graphql_repository_not_found.json")
    client = gh.client(cache_ttl=60.0)
    assert (await client.repository_access(TOKEN, "octocat", "Hello-World")).permission
    gh.now += 59
    await client.repository_access(TOKEN, "octocat", "Hello-World")
    assert len(gh.sent()) == 1
    gh.now += 2
    with pytest.raises(RepositoryNotFound):
        await client.repository_access(TOKEN, "octocat", "Hello-World")
    assert len(gh.sent()) == 2


async def test_forget_token(gh: Harness) -> None:
    gh.answer("graphql_viewer.json")
    gh.answer("graphql_viewer.json")
    client = gh.client()
    await client.authenticate("octocat", TOKEN)
    client.forget_token(TOKEN)
    await client.authenticate("octocat", TOKEN)
    assert len(gh.sent()) == 2


async def test_cache_size_bound(gh: Harness) -> None:
    for _ in range(3):
        gh.answer("graphql_viewer.json")
    client = gh.client(cache_size=1)
    await client.authenticate("octocat", "t1")
    await client.authenticate("octocat", "t2")
    await client.authenticate("octocat", "t1")
    assert len(gh.sent()) == 3


async def test_repositories_access_batch(gh: Harness) -> None:
    gh.answer("graphql_repositories_batch.json")
    client = gh.client()
    wanted = [
        ("OctoCat", "hello-world"),
        ("octocat", "gone"),
        ("octocat", "Spoon-Knife"),
    ]
    found = await client.repositories_access(TOKEN, wanted)
    assert list(found) == [("OctoCat", "hello-world"), ("octocat", "Spoon-Knife")]
    assert found["octocat", "Spoon-Knife"].permission is Permission.READ
    [(_, body)] = gh.sent()
    assert body["variables"] == {
        "o0": "OctoCat",
        "n0": "hello-world",
        "o1": "octocat",
        "n1": "gone",
        "o2": "octocat",
        "n2": "Spoon-Knife",
    }
    # the batch filled the cache of single lookups, misses included
    assert (await client.repository_access(TOKEN, "octocat", "HELLO-WORLD")).name
    with pytest.raises(RepositoryNotFound):
        await client.repository_access(TOKEN, "octocat", "gone")
    assert await client.repositories_access(TOKEN, wanted) == found
    assert len(gh.sent()) == 1


async def test_repositories_access_chunks(gh: Harness) -> None:
    def answer(url: URL, **kwargs: Any) -> CallbackResult:
        variables = json.loads(kwargs["data"])["variables"]
        data = {}
        for index in range(len(variables) // 2):
            owner, name = variables[f"o{index}"], variables[f"n{index}"]
            node = {"name": name, "owner": {"login": owner}, "isPrivate": False}
            data[f"r{index}"] = {**node, "viewerPermission": "READ"}
        return CallbackResult(
            payload={"data": data},
            headers=rate_headers(),
            response_class=CompatResponse,
        )

    gh.mocked.post(GRAPHQL, callback=answer, repeat=True)
    wanted = [("octocat", f"repo-{n}") for n in range(120)]
    found = await gh.client().repositories_access(TOKEN, wanted)
    assert list(found) == wanted
    assert [len(body["variables"]) // 2 for _, body in gh.sent()] == [50, 50, 20]
    assert await gh.client().repositories_access(TOKEN, []) == {}


async def test_can_administer_own_account(gh: Harness) -> None:
    gh.answer("graphql_viewer.json")
    client = gh.client()
    assert await client.can_administer_owner("octocat", TOKEN, "OctoCat")
    [(_, body)] = gh.sent()
    assert "viewer" in body["query"]
    assert await client.can_administer_owner("octocat", TOKEN, "octocat")
    assert len(gh.sent()) == 1


async def test_can_administer_organization(gh: Harness) -> None:
    gh.answer("graphql_owner_organization.json")
    client = gh.client()
    assert await client.can_administer_owner("octocat", TOKEN, "octo-org")
    assert await client.can_administer_owner("octocat", TOKEN, "Octo-Org")
    [(_, body)] = gh.sent()
    assert body["variables"] == {"login": "octo-org"}


async def test_cannot_administer_another_user(gh: Harness) -> None:
    gh.answer("graphql_owner_user.json")
    assert not await gh.client().can_administer_owner("octocat", TOKEN, "hubot")


async def test_owner_not_found_is_not_cached(gh: Harness) -> None:
    gh.answer("graphql_owner_not_found.json")
    gh.answer("graphql_owner_not_found.json")
    client = gh.client()
    for _ in range(2):
        with pytest.raises(OwnerNotFound):
            await client.can_administer_owner("octocat", TOKEN, "nobody-here")
    assert len(gh.sent()) == 2


SHA = "6dcb09b5" * 5
STATUS_URL = f"{API}/repos/octocat/Hello-World/statuses/{SHA}"


async def post_status(
    client: GitHubClient,
    state: str = "failure",
    description: str | None = None,
    *,
    repo: tuple[str, str] = ("octocat", "Hello-World"),
    sha: str = SHA,
) -> bool:
    return await client.set_commit_status(
        TOKEN,
        *repo,
        sha,
        state=state,
        context="hobotnica/test",
        target_url=None,
        description=description,
    )


async def test_set_commit_status(gh: Harness) -> None:
    gh.answer("status_created.json", status=201, url=STATUS_URL)
    posted = await gh.client().set_commit_status(
        TOKEN,
        "octocat",
        "Hello-World",
        "6dcb09b5" * 5,
        state="success",
        context="hobotnica/test",
        target_url="https://ci.example.com/jobs/7/log",
        description="x" * 200,
    )
    assert posted is True
    [(kwargs, body)] = gh.sent(STATUS_URL)
    assert body["state"] == "success"
    assert body["context"] == "hobotnica/test"
    assert body["target_url"] == "https://ci.example.com/jobs/7/log"
    assert len(body["description"]) == 140
    assert kwargs["headers"]["authorization"] == f"token {TOKEN}"


async def test_set_commit_status_failure_is_swallowed(
    gh: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    gh.answer("status_validation_failed.json", status=422, url=STATUS_URL)
    caplog.set_level(logging.INFO, logger="api.github")
    posted = await gh.client().set_commit_status(
        TOKEN,
        "octocat",
        "Hello-World",
        "6dcb09b5" * 5,
        state="bogus",
        context="hobotnica/test",
        target_url=None,
        description=None,
    )
    assert posted is False
    [(_, body)] = gh.sent(STATUS_URL)
    assert body == {"state": "bogus", "context": "hobotnica/test"}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("422" in r.getMessage() and "failed" in r.getMessage() for r in warnings)


async def test_enterprise_urls(gh: Harness) -> None:
    ghe = "https://ghe.example.test/api/v3"
    gh.answer("graphql_viewer.json", url="https://ghe.example.test/api/graphql")
    status_url = f"{ghe}/repos/o/r/statuses/{'a' * 40}"
    gh.answer("status_created.json", status=201, url=status_url)
    client = gh.client(api_url=ghe + "/")
    await client.authenticate("octocat", TOKEN)
    assert await post_status(client, repo=("o", "r"), sha="a" * 40)


async def test_retries_server_errors_then_succeeds(gh: Harness) -> None:
    page = "<html><body><h1>502 Bad Gateway</h1></body></html>"
    gh.mocked.post(GRAPHQL, status=502, body=page, content_type="text/html")
    gh.mocked.post(GRAPHQL, status=503, payload={"message": "Service Unavailable"})
    gh.answer("graphql_viewer.json")
    assert (await gh.client().authenticate("octocat", TOKEN)).login == "octocat"
    assert len(gh.sent()) == 3
    assert gh.sleeps == [0.01, 0.02]  # exponential, rand() == 1 here


async def test_gives_up_after_retries(gh: Harness) -> None:
    gh.mocked.post(GRAPHQL, status=504, payload={"message": "timeout"}, repeat=True)
    with pytest.raises(GitHubUnavailable, match=r"504 \(gave up after 4 attempts\)"):
        await gh.client(retries=3).repository_access(TOKEN, "octocat", "x")
    assert len(gh.sent()) == 4
    assert len(gh.sleeps) == 3


async def test_retry_after_is_honoured(gh: Harness) -> None:
    gh.mocked.post(GRAPHQL, status=503, payload={}, headers={"Retry-After": "2"})
    gh.answer("graphql_viewer.json")
    await gh.client().authenticate("octocat", TOKEN)
    assert gh.sleeps == [2.0]


async def test_retry_after_beyond_budget_gives_up_at_once(gh: Harness) -> None:
    gh.mocked.post(GRAPHQL, status=503, payload={}, headers={"Retry-After": "30"})
    with pytest.raises(GitHubUnavailable) as caught:
        await gh.client(retry_max_time=20.0).authenticate("octocat", TOKEN)
    assert caught.value.retry_after == 30.0
    assert (len(gh.sent()), gh.sleeps) == (1, [])


async def test_timeouts_are_retried(gh: Harness) -> None:
    gh.mocked.post(GRAPHQL, exception=TimeoutError(), repeat=True)
    with pytest.raises(GitHubUnavailable, match="TimeoutError"):
        await gh.client(retries=2).authenticate("octocat", TOKEN)
    assert len(gh.sent()) == 3


async def test_connection_error_then_success(gh: Harness) -> None:
    gh.mocked.post(GRAPHQL, exception=aiohttp.ClientConnectionError("refused"))
    gh.answer("graphql_viewer.json")
    assert (await gh.client().authenticate("octocat", TOKEN)).login == "octocat"
    assert len(gh.sleeps) == 1


async def test_unreadable_answer_is_not_retried(gh: Harness) -> None:
    gh.mocked.post(GRAPHQL, status=200, body="{not json", headers=rate_headers())
    with pytest.raises(GitHubUnavailable):
        await gh.client().authenticate("octocat", TOKEN)
    assert (len(gh.sent()), gh.sleeps) == (1, [])


async def test_secondary_rate_limit(gh: Harness) -> None:
    headers = {**rate_headers(remaining=4000), "Retry-After": "30"}
    body = sample("secondary_rate_limit.json")
    gh.mocked.post(GRAPHQL, status=403, payload=body, headers=headers)
    client = gh.client()
    with pytest.raises(RateLimited, match="secondary rate limit") as caught:
        await client.authenticate("octocat", TOKEN)
    assert (caught.value.retry_after, caught.value.reset_at) == (30.0, WALL + 30)
    assert (len(gh.sent()), gh.sleeps) == (1, [])
    with pytest.raises(RateLimited):  # refused without asking while it lasts
        await client.repository_access(TOKEN, "octocat", "Hello-World")
    assert len(gh.sent()) == 1


async def test_primary_limit_exhausted_refuses_early(gh: Harness) -> None:
    headers = rate_headers(remaining=0, reset=WALL + 120)
    gh.mocked.post(GRAPHQL, payload=sample("graphql_viewer.json"), headers=headers)
    client = gh.client()
    await client.authenticate("octocat", TOKEN)  # the last allowed request
    assert client.rate_limit_remaining == 0
    with pytest.raises(RateLimited) as caught:
        await client.repository_access(TOKEN, "octocat", "Hello-World")
    assert (caught.value.reset_at, caught.value.retry_after) == (WALL + 120, 120.0)
    assert len(gh.sent()) == 1
    gh.answer("graphql_repository.json")
    gh.wall += 121
    await client.repository_access(TOKEN, "octocat", "Hello-World")
    assert len(gh.sent()) == 2


async def test_graphql_rate_limited_answer(gh: Harness) -> None:
    headers = rate_headers(remaining=0, reset=WALL + 60)
    gh.mocked.post(
        GRAPHQL, payload=sample("graphql_rate_limited.json"), headers=headers
    )
    client = gh.client()
    with pytest.raises(RateLimited, match="583231") as caught:
        await client.authenticate("octocat", TOKEN)
    assert caught.value.reset_at == WALL + 60
    with pytest.raises(RateLimited):
        await client.authenticate("octocat", TOKEN)
    assert (len(gh.sent()), gh.sleeps) == (1, [])


async def test_status_post_is_retried_and_failure_swallowed(gh: Harness) -> None:
    gh.mocked.post(STATUS_URL, status=500, payload={}, repeat=True)
    assert await post_status(gh.client(retries=2), description="d") is False
    assert len(gh.sent(STATUS_URL)) == 3


async def test_status_post_rate_limited_is_swallowed(gh: Harness) -> None:
    headers = rate_headers(remaining=0, reset=WALL + 60)
    body = sample("primary_rate_limit.json")
    gh.mocked.post(STATUS_URL, status=403, payload=body, headers=headers)
    client = gh.client()
    assert not await post_status(client)
    assert not await post_status(client)
    assert len(gh.sent(STATUS_URL)) == 1


def leaked(exc: BaseException) -> bool:
    text = "".join(traceback.format_exception(exc)) + repr(exc) + str(vars(exc))
    chained = [e for e in (exc.__cause__, exc.__context__) if e is not None]
    return TOKEN in text or any(leaked(e) for e in chained)


async def test_token_never_logged_nor_kept(
    gh: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret_headers = CIMultiDictProxy(CIMultiDict({"Authorization": f"token {TOKEN}"}))
    info = aiohttp.RequestInfo(URL(GRAPHQL), "POST", secret_headers, URL(GRAPHQL))
    response_error = aiohttp.ClientResponseError(info, (), status=502, message=TOKEN)
    gh.answer("graphql_viewer.json")
    gh.answer("bad_credentials.json", status=401)
    gh.answer("graphql_repository_not_found.json")
    gh.mocked.post(GRAPHQL, exception=response_error)
    gh.mocked.post(GRAPHQL, exception=TimeoutError(TOKEN))
    gh.answer("graphql_owner_not_found.json")
    gh.answer("status_validation_failed.json", status=422, url=STATUS_URL)
    client = gh.client(retries=0)
    calls = [
        client.authenticate("octocat", TOKEN),
        client.authenticate("hubot", TOKEN + "2"),
        client.repository_access(TOKEN, "octocat", "missing"),
        client.repository_access(TOKEN, "octocat", "other"),
        client.repository_access(TOKEN, "octocat", "third"),
        client.can_administer_owner("octocat", TOKEN, "nobody-here"),
    ]
    failures: list[GitHubError] = []
    for call in calls:
        try:
            await call
        except GitHubError as exc:
            failures.append(exc)
    assert not await post_status(client, state="bogus")
    assert len(failures) == 5
    assert not [exc for exc in failures if leaked(exc)]
    assert len(caplog.records) >= 7
    assert TOKEN not in caplog.text
    assert all(TOKEN not in repr(record.__dict__) for record in caplog.records)
    assert TOKEN not in repr(vars(client)) + repr(client._cache._entries)
    assert any(
        "0403:094E:157B29B:29134A0:61E4695A" in r.getMessage() for r in caplog.records
    )
