"""Deciding what GitHub's answers mean: typed errors, retries, rate limits.

Pure functions and bookkeeping; the client feeds them what the transport saw.
Times given as ``now`` are epoch seconds (GitHub's reset headers are epoch).
"""

from __future__ import annotations

import email.utils
import json
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gidgethub import sansio
from multidict import CIMultiDict, CIMultiDictProxy

from .errors import (
    GitHubError,
    GitHubQueryError,
    GitHubUnavailable,
    InvalidCredentials,
    RateLimited,
    RepositoryNotFound,
)
from .queries import error_message, error_type, graphql_errors

# GitHub asks to wait at least a minute after a secondary limit without Retry-After
DEFAULT_RATE_LIMIT_WAIT = 60.0
_GRAPHQL_RATE_LIMIT_TYPES = frozenset({"RATE_LIMITED", "RATE_LIMIT"})


@dataclass(frozen=True)
class Reply:
    """What the transport saw of one HTTP answer."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes = b""

    @classmethod
    def of(cls, status: int, headers: Mapping[str, str], body: bytes = b"") -> Reply:
        return cls(status, CIMultiDictProxy(CIMultiDict(headers)), body)

    @property
    def request_id(self) -> str | None:
        return self.headers.get("X-GitHub-Request-Id")

    @property
    def message(self) -> str:
        """GitHub's ``message`` from a JSON error body, or ``""``."""
        try:
            data = json.loads(self.body)
        except ValueError:
            return ""
        message = data.get("message") if isinstance(data, dict) else None
        return message if isinstance(message, str) else ""


def retry_after(headers: Mapping[str, str], now: float) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or an HTTP date)."""
    value = CIMultiDict(headers).get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError):
        return None


def rate_limit_of(headers: Mapping[str, str]) -> sansio.RateLimit | None:
    try:
        return sansio.RateLimit.from_http(CIMultiDict(headers))
    except ValueError:
        return None


def rate_limited(headers: Mapping[str, str], now: float, message: str) -> RateLimited:
    """A :class:`RateLimited` dated from Retry-After, else X-RateLimit-Reset."""
    wait = retry_after(headers, now)
    limit = rate_limit_of(headers)
    if wait is None and limit is not None and limit.remaining == 0:
        reset_at = limit.reset_datetime.timestamp()
        return RateLimited(
            message, reset_at=reset_at, retry_after=max(0.0, reset_at - now)
        )
    if wait is None:
        wait = DEFAULT_RATE_LIMIT_WAIT
    return RateLimited(message, reset_at=now + wait, retry_after=wait)


def _is_rate_limit(reply: Reply) -> bool:
    if reply.status == 429:
        return True
    if reply.status != 403:
        return False
    if reply.headers.get("X-RateLimit-Remaining") == "0":
        return True
    if "Retry-After" in reply.headers:
        return True
    message = reply.message.lower()
    return "rate limit" in message or "abuse" in message


def classify_reply(reply: Reply, now: float, *, graphql: bool = False) -> GitHubError:
    """The typed error for a non-success HTTP answer (REST or GraphQL).

    GraphQL says "not found" in a 200 answer; a 404 of its endpoint means
    the endpoint is wrong or failing (a proxy, a wrong Enterprise URL), never
    that a repository is gone: that must not revoke anything.
    """
    message = reply.message
    if reply.status == 401:
        return InvalidCredentials(message or "Bad credentials")
    if _is_rate_limit(reply):
        return rate_limited(reply.headers, now, message or "rate limit exceeded")
    if reply.status == 404 and graphql:
        return GitHubQueryError("GitHub's GraphQL endpoint answered 404", status=404)
    if reply.status == 404:
        return RepositoryNotFound(message or "Not Found")
    if reply.status >= 500:
        return GitHubUnavailable(
            f"GitHub answered {reply.status}",
            retry_after=retry_after(reply.headers, now),
        )
    if 200 <= reply.status < 300:
        return GitHubQueryError(
            "GitHub's answer could not be read", status=reply.status
        )
    detail = f": {message}" if message else ""
    return GitHubQueryError(
        f"GitHub answered {reply.status}{detail}", status=reply.status
    )


def unreachable(exc: BaseException) -> GitHubUnavailable:
    """A connection error or timeout; only the class name, never request details."""
    return GitHubUnavailable(f"cannot reach GitHub: {type(exc).__name__}")


def graphql_rate_limited(response: Any, reply: Reply, now: float) -> RateLimited | None:
    """GraphQL reports its primary limit as a 200 with a RATE_LIMITED error."""
    for error in graphql_errors(response):
        if error_type(error) in _GRAPHQL_RATE_LIMIT_TYPES:
            return rate_limited(reply.headers, now, error_message(error))
    return None


def is_retryable(failure: GitHubError) -> bool:
    return isinstance(failure, GitHubUnavailable) and not isinstance(
        failure, GitHubQueryError
    )


def retry_delay(
    failure: GitHubError,
    attempt: int,
    *,
    retries: int,
    base: float,
    time_left: float,
    rand: Callable[[], float],
) -> float | None:
    """Seconds to wait before retry number ``attempt + 1``, or None to give up.

    Exponential backoff with full jitter, at least Retry-After, and never
    beyond the time left of the call's retry budget.
    """
    if not is_retryable(failure) or attempt >= retries:
        return None
    delay = rand() * min(time_left, base * 2.0**attempt)
    hint = failure.retry_after if isinstance(failure, GitHubUnavailable) else None
    if hint is not None:
        delay = max(delay, hint)
    if delay > time_left:
        return None
    return delay


def final(failure: GitHubError, attempts: int) -> GitHubError:
    """The error to raise once retries are over."""
    if not isinstance(failure, GitHubUnavailable) or not is_retryable(failure):
        return failure
    if attempts < 2:
        return failure
    return GitHubUnavailable(
        f"{failure} (gave up after {attempts} attempts)",
        retry_after=failure.retry_after,
    )


@dataclass
class RateLimitBook:
    """Last seen rate limits, per (token digest, resource), bounded in size.

    ``check`` refuses before sending while a limit is known to be in force.
    """

    size: int = 4096
    remaining: int | None = None
    reset: float | None = None
    _blocked: OrderedDict[tuple[str, str], tuple[float, str]] = field(
        default_factory=OrderedDict
    )

    def observe(self, key: tuple[str, str], headers: Mapping[str, str]) -> None:
        limit = rate_limit_of(headers)
        if limit is None:
            return
        self.remaining = limit.remaining
        self.reset = limit.reset_datetime.timestamp()
        if limit.remaining == 0:
            self.block(key, self.reset, "API rate limit exhausted")

    def block(self, key: tuple[str, str], until: float, reason: str) -> None:
        self._blocked[key] = (until, reason)
        self._blocked.move_to_end(key)
        while len(self._blocked) > self.size:
            self._blocked.popitem(last=False)

    def check(self, key: tuple[str, str], now: float) -> None:
        entry = self._blocked.get(key)
        if entry is None:
            return
        until, reason = entry
        if until <= now:
            del self._blocked[key]
            return
        raise RateLimited(
            f"{reason}; not asking GitHub", reset_at=until, retry_after=until - now
        )
