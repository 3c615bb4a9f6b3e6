"""The I/O-free part of api.github against saved GitHub bodies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import graphql
import pytest

from api.github import (
    GitHubQueryError,
    GitHubUnavailable,
    GitHubUser,
    InvalidCredentials,
    OwnerNotFound,
    Permission,
    RateLimited,
    RepositoryAccess,
    RepositoryNotFound,
    policy,
    queries,
)
from api.github.cache import TTLCache, token_digest

SAMPLES = Path(__file__).parent / "github_samples"
NOW = 1_700_000_000.0


def sample(name: str) -> Any:
    return json.loads((SAMPLES / name).read_text())


def sample_bytes(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def test_permission_rights() -> None:
    assert [p.value for p in Permission] == [
        "ADMIN",
        "MAINTAIN",
        "WRITE",
        "TRIAGE",
        "READ",
    ]
    assert {p for p in Permission if p.can_push} == {
        Permission.ADMIN,
        Permission.MAINTAIN,
        Permission.WRITE,
    }
    assert all(p.can_read for p in Permission)
    assert Permission("WRITE") == "WRITE"


def test_queries_parse_as_graphql() -> None:
    query, variables, aliases = queries.repositories_query([("a", "b"), ("c", "d")])
    for text in (
        queries.VIEWER_QUERY,
        queries.REPOSITORY_QUERY,
        queries.OWNER_QUERY,
        query,
    ):
        graphql.parse(text)
    assert variables == {"o0": "a", "n0": "b", "o1": "c", "n1": "d"}
    assert aliases == ["r0", "r1"]
    assert "r1: repository(owner: $o1, name: $n1)" in query


def test_batch_query_keeps_names_out_of_the_text() -> None:
    query, variables, _ = queries.repositories_query([('x") { id } #', "y")])
    assert "{ id }" not in query
    assert variables["o0"] == 'x") { id } #'


@pytest.mark.parametrize(
    ("api_url", "endpoint"),
    [
        ("https://api.github.com", "https://api.github.com/graphql"),
        ("https://api.github.com/", "https://api.github.com/graphql"),
        ("https://ghe.example.com/api/v3", "https://ghe.example.com/api/graphql"),
        ("http://127.0.0.1:8123", "http://127.0.0.1:8123/graphql"),
    ],
)
def test_graphql_endpoint(api_url: str, endpoint: str) -> None:
    assert queries.graphql_endpoint(api_url) == endpoint


def test_read_viewer() -> None:
    data = queries.graphql_data(sample("graphql_viewer.json"))
    user = queries.read_viewer(data)
    assert user == GitHubUser(login="octocat", name="The Octocat")
    assert queries.check_login(user, "OctoCat") is user
    with pytest.raises(InvalidCredentials):
        queries.check_login(user, "hubot")


def test_read_repository() -> None:
    data = queries.graphql_data(sample("graphql_repository.json"))
    assert queries.read_repository(data["repository"]) == RepositoryAccess(
        owner="octocat",
        name="Hello-World",
        permission=Permission.WRITE,
        default_branch="master",
        is_private=False,
    )


def test_read_empty_private_repository() -> None:
    data = queries.graphql_data(sample("graphql_repository_empty.json"))
    access = queries.read_repository(data["repository"])
    assert access is not None
    assert access.default_branch is None
    assert access.is_private
    assert access.permission is Permission.ADMIN


def test_not_found_is_null_data() -> None:
    data = queries.graphql_data(sample("graphql_repository_not_found.json"))
    assert queries.read_repository(data["repository"]) is None


def test_read_repositories_batch_leaves_out_missing() -> None:
    data = queries.graphql_data(sample("graphql_repositories_batch.json"))
    keys = {
        "r0": ("OctoCat", "hello-world"),
        "r1": ("octocat", "gone"),
        "r2": ("o", "s"),
    }
    found = queries.read_repositories(data, keys)
    assert set(found) == {("OctoCat", "hello-world"), ("o", "s")}
    assert found["OctoCat", "hello-world"].name == "Hello-World"
    assert found["o", "s"].permission is Permission.READ


def test_unknown_permission_reads_as_none() -> None:
    node = sample("graphql_repository.json")["data"]["repository"]
    assert queries.read_repository({**node, "viewerPermission": "OWNER"}) is not None
    access = queries.read_repository({**node, "viewerPermission": None})
    assert access is not None
    assert access.permission is None


def test_forbidden_field_is_absent() -> None:
    data = queries.graphql_data(sample("graphql_forbidden.json"))
    assert queries.read_repository(data["repository"]) is None


def test_other_graphql_errors_fail() -> None:
    with pytest.raises(GitHubQueryError, match="Something went wrong"):
        queries.graphql_data(sample("graphql_something_went_wrong.json"))
    with pytest.raises(GitHubQueryError, match="SAML"):  # FORBIDDEN, but no field
        forbidden = sample("graphql_forbidden.json")
        del forbidden["errors"][0]["path"]
        queries.graphql_data(forbidden)
    with pytest.raises(GitHubQueryError):
        queries.graphql_data({"data": None})
    with pytest.raises(GitHubQueryError):
        queries.read_viewer({"viewer": {"login": None}})
    with pytest.raises(GitHubQueryError):
        queries.read_repository({"name": "x", "owner": None})


@pytest.mark.parametrize(
    ("name", "username", "owner", "expected"),
    [
        ("graphql_owner_organization.json", "octocat", "octo-org", True),
        ("graphql_owner_user.json", "octocat", "hubot", False),
        ("graphql_owner_user.json", "OCTOCAT", "octocat", True),
    ],
)
def test_read_owner_admin(name: str, username: str, owner: str, expected: bool) -> None:
    data = queries.graphql_data(sample(name))
    assert queries.read_owner_admin(data, username, owner) is expected


def test_read_owner_admin_failures() -> None:
    data = queries.graphql_data(sample("graphql_owner_not_found.json"))
    with pytest.raises(OwnerNotFound):
        queries.read_owner_admin(data, "octocat", "nobody-here")
    data = queries.graphql_data(sample("graphql_owner_organization.json"))
    with pytest.raises(InvalidCredentials):
        queries.read_owner_admin(data, "hubot", "octo-org")


def reply(status: int, name: str | None = None, **headers: str) -> policy.Reply:
    body = sample_bytes(name) if name else b""
    return policy.Reply.of(
        status, {k.replace("_", "-"): v for k, v in headers.items()}, body
    )


def test_classify_bad_credentials() -> None:
    failure = policy.classify_reply(reply(401, "bad_credentials.json"), NOW)
    assert isinstance(failure, InvalidCredentials)
    assert str(failure) == "Bad credentials"


def test_classify_secondary_rate_limit() -> None:
    failure = policy.classify_reply(
        reply(403, "secondary_rate_limit.json", Retry_After="30"), NOW
    )
    assert isinstance(failure, RateLimited)
    assert (failure.retry_after, failure.reset_at) == (30.0, NOW + 30)
    failure = policy.classify_reply(reply(429, "secondary_rate_limit.json"), NOW)
    assert isinstance(failure, RateLimited)
    assert failure.retry_after == policy.DEFAULT_RATE_LIMIT_WAIT


def test_classify_primary_rate_limit() -> None:
    headers = {
        "X_RateLimit_Limit": "5000",
        "X_RateLimit_Remaining": "0",
        "X_RateLimit_Reset": str(int(NOW) + 120),
    }
    failure = policy.classify_reply(
        reply(403, "primary_rate_limit.json", **headers), NOW
    )
    assert isinstance(failure, RateLimited)
    assert failure.reset_at == NOW + 120
    assert failure.retry_after == 120


def test_classify_other_answers() -> None:
    assert isinstance(
        policy.classify_reply(reply(404, "not_found.json"), NOW), RepositoryNotFound
    )
    forbidden = policy.classify_reply(reply(403, "not_found.json"), NOW)
    assert type(forbidden) is GitHubQueryError
    invalid = policy.classify_reply(reply(422, "status_validation_failed.json"), NOW)
    assert isinstance(invalid, GitHubQueryError)
    assert "422: Validation Failed" in str(invalid)
    broken = policy.classify_reply(reply(503, Retry_After="2"), NOW)
    assert type(broken) is GitHubUnavailable
    assert broken.retry_after == 2.0
    assert policy.is_retryable(broken)
    assert not policy.is_retryable(invalid)


def test_retry_after_as_http_date() -> None:
    assert (
        policy.retry_after({"Retry-After": "Tue, 14 Nov 2023 22:14:20 GMT"}, NOW) == 60
    )
    assert policy.retry_after({"Retry-After": "soon"}, NOW) is None
    assert policy.retry_after({}, NOW) is None


def test_graphql_rate_limited() -> None:
    headers = {
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": str(int(NOW) + 5),
        "X-RateLimit-Limit": "5000",
    }
    limited = policy.graphql_rate_limited(
        sample("graphql_rate_limited.json"), policy.Reply.of(200, headers), NOW
    )
    assert limited is not None
    assert limited.reset_at == NOW + 5
    assert "583231" in str(limited)
    ok = policy.graphql_rate_limited(
        sample("graphql_viewer.json"), policy.Reply.of(200, {}), NOW
    )
    assert ok is None


def test_retry_delay_full_jitter_and_budget() -> None:
    broken = GitHubUnavailable("503")

    def delay(attempt: int, *, rand: float = 1.0, left: float = 100.0) -> float | None:
        return policy.retry_delay(
            broken, attempt, retries=3, base=0.5, time_left=left, rand=lambda: rand
        )

    assert [delay(n) for n in range(4)] == [0.5, 1.0, 2.0, None]
    assert delay(2, rand=0.25) == 0.5
    assert delay(2, left=1.5) == 1.5  # capped by the budget
    hinted = GitHubUnavailable("503", retry_after=5.0)
    assert (
        policy.retry_delay(hinted, 0, retries=3, base=0.5, time_left=10, rand=lambda: 0)
        == 5.0
    )
    assert (
        policy.retry_delay(hinted, 0, retries=3, base=0.5, time_left=4, rand=lambda: 0)
        is None
    )
    for final in (
        InvalidCredentials("x"),
        GitHubQueryError("x"),
        RateLimited("x", reset_at=0, retry_after=0),
    ):
        assert (
            policy.retry_delay(
                final, 0, retries=3, base=0.5, time_left=10, rand=lambda: 0
            )
            is None
        )


def test_rate_limit_book() -> None:
    book = policy.RateLimitBook(size=2)
    key = ("digest", "graphql")
    book.observe(
        key,
        {
            "X-RateLimit-Limit": "5000",
            "X-RateLimit-Remaining": "7",
            "X-RateLimit-Reset": "100",
        },
    )
    assert (book.remaining, book.reset) == (7, 100.0)
    book.check(key, 50.0)
    book.observe(
        key,
        {
            "X-RateLimit-Limit": "5000",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": "100",
        },
    )
    with pytest.raises(RateLimited) as caught:
        book.check(key, 40.0)
    assert caught.value.retry_after == 60.0
    book.check(("digest", "core"), 40.0)  # other resource unaffected
    book.check(key, 100.0)  # reset passed
    book.check(key, 40.0)  # and forgotten
    for n in range(3):
        book.block((str(n), "core"), 10.0, "secondary")
    book.check(("0", "core"), 1.0)  # evicted: the book stays bounded


def test_cache_ttl_lru_and_forget() -> None:
    now = [0.0]
    cache = TTLCache(ttl=10, size=2, clock=lambda: now[0])
    cache.put(("a", "x"), 1)
    cache.put(("a", "y"), 2)
    assert cache.get(("a", "x")) == 1  # x is now the most recent
    cache.put(("b", "z"), 3)
    assert cache.get(("a", "y")) is None
    assert cache.get(("a", "x")) == 1
    cache.forget("a")
    assert cache.get(("a", "x")) is None
    assert len(cache) == 1
    now[0] = 10.0
    assert cache.get(("b", "z")) is None


def test_token_digest_hides_token() -> None:
    digest = token_digest("ghp_secret")
    assert "ghp_secret" not in digest
    assert len(digest) == 64
    assert digest == token_digest("ghp_secret") != token_digest("ghp_other")
