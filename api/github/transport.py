"""The only I/O: gidgethub's aiohttp adapter with a timeout and a record."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import gidgethub
from gidgethub import aiohttp as gh_aiohttp

from . import policy
from .errors import GitHubError
from .policy import Reply

Send = Callable[["Transport"], Awaitable[Any]]
# what gidgethub raises while reading an answer it does not like
_READ_ERRORS = (gidgethub.GitHubException, ValueError, LookupError, TypeError)


class Transport(gh_aiohttp.GitHubAPI):
    """One token's requests, each bounded by ``timeout``.

    Keeps the last answer as :attr:`reply` so that the policy can decide on
    the status, headers and body whatever gidgethub made of them. Built per
    call and dropped after it, so the token lives no longer than the call.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        requester: str,
        *,
        oauth_token: str,
        base_url: str,
        timeout: aiohttp.ClientTimeout,
    ) -> None:
        super().__init__(session, requester, oauth_token=oauth_token, base_url=base_url)
        self._timeout = timeout
        self.reply: Reply | None = None
        self.last_was_graphql = False  # the last request went to /graphql

    def __repr__(self) -> str:
        return f"<Transport {self.base_url}>"

    async def _request(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes = b""
    ) -> tuple[int, Mapping[str, str], bytes]:
        self.reply = None
        self.last_was_graphql = url.rstrip("/").endswith("/graphql")
        async with self._session.request(
            method, url, headers=headers, data=body, timeout=self._timeout
        ) as response:
            data = await response.read()
            self.reply = Reply.of(response.status, response.headers, data)
            return response.status, self.reply.headers, data

    def _classify(self, reply: Reply, now: float) -> GitHubError:
        return policy.classify_reply(reply, now, graphql=self.last_was_graphql)

    async def attempt(
        self, send: Send, now: Callable[[], float]
    ) -> tuple[Any, GitHubError | None]:
        """One try of ``send``: its result, or the typed failure (not raised)."""
        try:
            return await send(self), None
        except aiohttp.ClientResponseError as exc:  # a session raising for status
            reply = Reply.of(exc.status, exc.headers or {})
            return None, self._classify(reply, now())
        except (aiohttp.ClientError, TimeoutError) as exc:
            return None, policy.unreachable(exc)
        except _READ_ERRORS:
            if self.reply is None:
                raise
            return None, self._classify(self.reply, now())
