"""GitHubClient: the questions Hobotnica asks GitHub, with retries and a cache."""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final

import aiohttp
import gidgethub

from . import policy, queries
from .cache import TTLCache, token_digest
from .errors import (
    GitHubError,
    GitHubQueryError,
    RateLimited,
    RepositoryNotFound,
)
from .models import GitHubUser, RepositoryAccess
from .transport import Send, Transport

logger = logging.getLogger("api.github")

API_VERSION: Final = "2022-11-28"
STATUS_DESCRIPTION_MAX: Final = 140


class _Missing(enum.Enum):
    NOT_FOUND = "not found"  # cached negative answer of a repository lookup


def _cut(text: str, limit: int = STATUS_DESCRIPTION_MAX) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class GitHubClient:
    """Asks GitHub who a token is and what it may do; posts commit statuses.

    ``clock`` (monotonic) drives the cache and retry budget, ``wall_clock``
    (epoch) the rate-limit resets; ``sleep`` and ``rand`` drive the backoff.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        api_url: str = "https://api.github.com",
        timeout: float = 10.0,
        connect_timeout: float = 5.0,
        retries: int = 3,
        retry_max_time: float = 20.0,
        cache_ttl: float = 60.0,
        cache_size: int = 1024,
        user_agent: str = "hobotnica",
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
        backoff_base: float = 0.5,
    ) -> None:
        self._session = session
        self._api_url = api_url.rstrip("/")
        self._graphql_url = queries.graphql_endpoint(self._api_url)
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=connect_timeout)
        self._retries = max(0, retries)
        self._retry_max_time = retry_max_time
        self._user_agent = user_agent
        self._clock = clock
        self._wall_clock = wall_clock
        self._sleep = sleep
        self._rand = rand
        self._backoff_base = backoff_base
        self._cache = TTLCache(ttl=cache_ttl, size=cache_size, clock=clock)
        self._rate_limits = policy.RateLimitBook()

    @property
    def rate_limit_remaining(self) -> int | None:
        return self._rate_limits.remaining

    @property
    def rate_limit_reset(self) -> float | None:
        return self._rate_limits.reset

    def forget_token(self, token: str) -> None:
        self._cache.forget(token_digest(token))

    async def authenticate(self, username: str, token: str) -> GitHubUser:
        key = (token_digest(token), "viewer")
        user = self._cached(key, "authenticate")
        if not isinstance(user, GitHubUser):
            data = await self._query("authenticate", token, queries.VIEWER_QUERY, {})
            user = queries.read_viewer(data)
            self._cache.put(key, user)
        return queries.check_login(user, username)

    async def repository_access(
        self, token: str, owner: str, name: str
    ) -> RepositoryAccess:
        key = self._repository_key(token_digest(token), owner, name)
        access = self._cached(key, f"repository_access {owner}/{name}")
        if access is None:
            data = await self._query(
                f"repository_access {owner}/{name}",
                token,
                queries.REPOSITORY_QUERY,
                {"owner": owner, "name": name},
            )
            access = queries.read_repository(data.get("repository"))
            self._cache.put(key, access or _Missing.NOT_FOUND)
        if not isinstance(access, RepositoryAccess):
            raise RepositoryNotFound(f"repository {owner}/{name} not found")
        return access

    async def repositories_access(
        self, token: str, repos: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], RepositoryAccess]:
        """Access to many repositories in one query per ~50; invisible ones absent."""
        digest = token_digest(token)
        known: dict[tuple[str, str], RepositoryAccess | _Missing] = {}
        pending: list[tuple[str, str]] = []
        for repo in dict.fromkeys(repos):
            cached = self._cache.get(self._repository_key(digest, *repo))
            if cached is None:
                pending.append(repo)
            else:
                known[repo] = cached
        if known:
            logger.debug("github repositories_access cache hits=%d", len(known))
        for start in range(0, len(pending), queries.BATCH_SIZE):
            chunk = pending[start : start + queries.BATCH_SIZE]
            query, variables, aliases = queries.repositories_query(chunk)
            data = await self._query(
                f"repositories_access n={len(chunk)}", token, query, variables
            )
            found = queries.read_repositories(
                data, dict(zip(aliases, chunk, strict=True))
            )
            for repo in chunk:
                known[repo] = found.get(repo, _Missing.NOT_FOUND)
                self._cache.put(self._repository_key(digest, *repo), known[repo])
        return {
            repo: access
            for repo, access in known.items()
            if isinstance(access, RepositoryAccess)
        }

    async def can_administer_owner(self, username: str, token: str, owner: str) -> bool:
        if owner.casefold() == username.casefold():
            await self.authenticate(username, token)
            return True
        key = (
            token_digest(token),
            "owner-admin",
            username.casefold(),
            owner.casefold(),
        )
        cached = self._cached(key, f"can_administer_owner {owner}")
        if isinstance(cached, bool):
            return cached
        data = await self._query(
            f"can_administer_owner {owner}",
            token,
            queries.OWNER_QUERY,
            {"login": owner},
        )
        allowed = queries.read_owner_admin(data, username, owner)
        self._cache.put(key, allowed)
        return allowed

    async def set_commit_status(
        self,
        token: str,
        owner: str,
        name: str,
        sha: str,
        *,
        state: str,
        context: str,
        target_url: str | None,
        description: str | None,
    ) -> bool:
        """Post a commit status; never raises: failures are logged, False returned."""
        body: dict[str, str] = {"state": state, "context": context}
        if target_url:
            body["target_url"] = target_url
        if description:
            body["description"] = _cut(description)
        url_vars = {"owner": owner, "repo": name, "sha": sha}

        async def send(transport: Transport) -> Any:
            return await transport.post(
                "/repos/{owner}/{repo}/statuses/{sha}",
                url_vars,
                data=body,
                extra_headers={"x-github-api-version": API_VERSION},
            )

        operation = f"set_commit_status {owner}/{name}@{sha[:12]} {context}={state}"
        try:
            await self._call(operation, token, "core", send)
        except GitHubError as exc:
            logger.warning(
                "github %s failed: %s: %s", operation, type(exc).__name__, exc
            )
            return False
        return True

    def _cached(self, key: tuple[str, ...], operation: str) -> Any | None:
        value = self._cache.get(key)
        if value is not None:
            logger.debug("github %s cache hit", operation)
        return value

    @staticmethod
    def _repository_key(digest: str, owner: str, name: str) -> tuple[str, ...]:
        return (digest, "repository", owner.casefold(), name.casefold())

    async def _query(
        self, operation: str, token: str, query: str, variables: Mapping[str, str]
    ) -> Mapping[str, Any]:
        """A GraphQL query's ``data``; only NOT_FOUND errors get through (as null)."""

        async def send(transport: Transport) -> Any:
            try:
                data = await transport.graphql(
                    query, endpoint=self._graphql_url, **variables
                )
            except gidgethub.QueryError as exc:
                return exc.response  # data and errors: NOT_FOUND is an answer
            return {"data": data}

        response, reply = await self._call(operation, token, "graphql", send)
        limited = policy.graphql_rate_limited(response, reply, self._wall_clock())
        if limited is not None:
            self._block(token, "graphql", limited.reset_at)
            logger.warning("github %s rate limited: %s", operation, limited)
            raise limited
        return queries.graphql_data(response)

    def _block(self, token: str, resource: str, until: float) -> None:
        key = (token_digest(token), resource)
        self._rate_limits.block(key, until, "GitHub rate limit in force")

    async def _call(
        self, operation: str, token: str, resource: str, send: Send
    ) -> tuple[Any, policy.Reply]:
        """Send with retries; the answer and its reply, or a typed error."""
        book_key = (token_digest(token), resource)
        started = self._clock()
        attempt = 0
        while True:
            self._rate_limits.check(book_key, self._wall_clock())
            transport = Transport(
                self._session,
                self._user_agent,
                oauth_token=token,
                base_url=self._api_url,
                timeout=self._timeout,
            )
            began = time.perf_counter()
            answer, failure = await transport.attempt(send, self._wall_clock)
            elapsed_ms = (time.perf_counter() - began) * 1000
            reply = transport.reply
            if reply is not None:
                self._rate_limits.observe(book_key, reply.headers)
            if isinstance(failure, RateLimited):
                self._block(token, resource, failure.reset_at)
            self._log(operation, attempt, reply, elapsed_ms, failure)
            if failure is None:
                if reply is None:
                    raise GitHubQueryError("no answer recorded")
                return answer, reply
            delay = policy.retry_delay(
                failure,
                attempt,
                retries=self._retries,
                base=self._backoff_base,
                time_left=self._retry_max_time - (self._clock() - started),
                rand=self._rand,
            )
            if delay is None:
                raise policy.final(failure, attempt + 1)
            await self._sleep(delay)
            attempt += 1

    def _log(
        self,
        operation: str,
        attempt: int,
        reply: policy.Reply | None,
        elapsed_ms: float,
        failure: GitHubError | None,
    ) -> None:
        outcome = "ok" if failure is None else f"{type(failure).__name__}: {failure}"
        level = logging.INFO if failure is None else logging.WARNING
        logger.log(
            level,
            "github %s attempt=%d status=%s elapsed_ms=%.0f request_id=%s "
            "rate_remaining=%s outcome=%s",
            operation,
            attempt + 1,
            reply.status if reply is not None else "-",
            elapsed_ms,
            (reply.request_id if reply is not None else None) or "-",
            (reply.headers.get("X-RateLimit-Remaining") if reply else None) or "-",
            outcome,
        )
