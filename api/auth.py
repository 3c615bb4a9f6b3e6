"""Who is calling, and what may they do with a repository or an owner."""

from __future__ import annotations

import re
from dataclasses import dataclass

from aiohttp import web
from rororo import openapi_context

from api.errors import Forbidden, NotAuthenticated, NotFound
from api.github import GitHubClient, RepositoryAccess
from api.keys import GITHUB, STORAGE
from api.storage.records import RepositoryRecord

USERNAME_HEADER = "X-GitHub-Username"
AUTHORIZATION_HEADER = "Authorization"
# Classic (40 hex), fine-grained and prefixed GitHub tokens: no spaces or
# punctuation that could break a header or a log line.
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_.\-]{8,255}$")


@dataclass(frozen=True)
class Caller:
    login: str
    token: str

    def __repr__(self) -> str:
        return f"Caller(login={self.login!r})"


@dataclass(frozen=True)
class RepositoryCaller:
    caller: Caller
    access: RepositoryAccess

    @property
    def can_push(self) -> bool:
        return self.access.permission is not None and self.access.permission.can_push


def _credentials(request: web.Request) -> tuple[str, str]:
    # Two identities in one request are malformed, whichever one a proxy or
    # the schema validation would pick.
    for header in (USERNAME_HEADER, AUTHORIZATION_HEADER):
        if len(request.headers.getall(header, [])) > 1:
            raise NotAuthenticated()
    with openapi_context(request) as context:
        token = context.security.get("bearer")
        username = context.parameters.header.get(USERNAME_HEADER)
    if not isinstance(token, str) or not _TOKEN_RE.match(token.strip()):
        raise NotAuthenticated()
    if not isinstance(username, str):
        raise NotAuthenticated()
    return username, token.strip()


async def authenticate(request: web.Request) -> Caller:
    """Ask GitHub who owns the token; it must be ``X-GitHub-Username``."""
    username, token = _credentials(request)
    user = await request.app[GITHUB].authenticate(username, token)
    return Caller(login=user.login, token=token)


async def authorize_repository(
    request: web.Request, owner: str, name: str, *, push: bool
) -> RepositoryCaller:
    """The caller and their access; 404 if invisible, 403 without push."""
    caller = await authenticate(request)
    access = await request.app[GITHUB].repository_access(caller.token, owner, name)
    if access.permission is None or not access.permission.can_read:
        raise NotFound(f"Repository {owner}/{name} is not visible to you")
    if push and not access.permission.can_push:
        raise Forbidden(
            f"Push access to {access.owner}/{access.name} is required"
            f" (you have {access.permission.value})"
        )
    return RepositoryCaller(caller, access)


async def authorize_registered(
    request: web.Request, *, push: bool, also_replaced: bool = False
) -> tuple[RepositoryCaller, RepositoryRecord]:
    """Authorize on the path's ``owner``/``name`` and find its registration.

    GitHub answers for the repository that has this name now: a registration
    made for another one (renamed away) is not its own, except to remove it
    (``also_replaced``, with push rights), so that the name can be
    registered again.
    """
    owner, name = request.match_info["owner"], request.match_info["name"]
    allowed = await authorize_repository(request, owner, name, push=push)
    repository = await request.app[STORAGE].repositories.get(owner, name)
    if repository is None or not (
        (also_replaced and push)
        or repository.is_github_repository(allowed.access.node_id)
    ):
        raise NotFound(f"{owner}/{name} is not registered with Hobotnica")
    return allowed, repository


async def authorize_owner(request: web.Request, owner: str) -> Caller:
    """The caller must be ``owner`` or an administrator of that organization."""
    caller = await authenticate(request)
    github: GitHubClient = request.app[GITHUB]
    if not await github.can_administer_owner(caller.login, caller.token, owner):
        raise Forbidden(f"Only {owner} or its administrators may do this")
    return caller
