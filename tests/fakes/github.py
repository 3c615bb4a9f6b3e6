"""A fake GitHub on loopback that speaks GitHub's real shapes.

Usage::

    async with FakeGitHub.running() as gh:
        gh.add_user("octocat", token="t0k3n")
        gh.add_repo("octocat", "hello", permissions={"octocat": "ADMIN"})
        client = GitHubClient(session, api_url=gh.url)
        ...
        assert gh.statuses[0]["state"] == "success"

or take the ``fake_github`` fixture (pytest-asyncio) from this module.

Served: ``POST /graphql``, executed by graphql-core against a slice of
GitHub's schema (``viewer``, ``repository``, ``organization``, ``user``;
what the viewer cannot see is null with a ``{"type": "NOT_FOUND"}`` error),
and ``POST /repos/{owner}/{repo}/statuses/{sha}`` (201; 404 without push
rights; 422 for a bad state, a description over 140 characters or a sha that
is not 40 hex digits). Tokens come as ``Authorization: bearer <t>`` or
``token <t>``; unknown ones get 401 ``Bad credentials``. Every answer carries
``X-RateLimit-*`` and ``X-GitHub-Request-Id``; every request is recorded in
:attr:`FakeGitHub.calls`. Failure switches: :meth:`~FakeGitHub.fail_next`,
:meth:`~FakeGitHub.rate_limit_exhausted`,
:meth:`~FakeGitHub.secondary_rate_limit`, :meth:`~FakeGitHub.delay`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import graphql
import pytest_asyncio
from aiohttp import web

__all__ = ["FakeCall", "FakeGitHub", "FakeOrg", "FakeRepo", "fake_github"]

DOCS = "https://docs.github.com/rest"
RATE_LIMIT = 5000
PUSH = ("ADMIN", "MAINTAIN", "WRITE")
STATES = ("error", "failure", "pending", "success")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class FakeRepo:
    """A repository; ``permissions`` maps a lower-cased login to a permission."""

    owner: str
    name: str
    default_branch: str | None = "main"
    private: bool = False
    permissions: dict[str, str] = field(default_factory=dict)
    exists: bool = True
    # GitHub's node id: a new repository gets a new one, a rename keeps it.
    node_id: str = field(default_factory=lambda: f"R_{uuid.uuid4().hex[:16]}")

    def permission_of(self, login: str) -> str | None:
        """The viewer's permission, or None when the repository is invisible."""
        if not self.exists:
            return None
        granted = self.permissions.get(login.lower())
        return granted or (None if self.private else "READ")


@dataclass
class FakeOrg:
    login: str
    admins: set[str] = field(default_factory=set)  # lower-cased logins


@dataclass(frozen=True)
class FakeCall:
    """One request; ``json`` is its parsed body (GraphQL: query and variables)."""

    method: str
    path: str
    token: str | None
    json: Any


class FakeGitHub:
    """State of the fake plus the aiohttp app serving it (see module docstring)."""

    def __init__(self) -> None:
        self.users: dict[str, str] = {}  # token -> login
        self.logins: dict[str, str] = {}  # lower login -> login, users that exist
        self.names: dict[str, str | None] = {}  # lower login -> display name
        self.orgs: dict[str, FakeOrg] = {}  # lower login -> org
        self.repos: dict[tuple[str, str], FakeRepo] = {}  # lower (owner, name)
        self.statuses: list[dict[str, Any]] = []
        self.calls: list[FakeCall] = []
        self.url = ""
        self._failures: list[tuple[int, bool, float | None]] = []
        self._secondary: list[float] = []
        self._exhausted_until = 0.0
        self._delay = 0.0
        self._used = 0
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None

    def add_user(
        self, login: str, token: str | None = None, name: str | None = None
    ) -> None:
        self.logins[login.lower()] = login
        self.names[login.lower()] = name
        if token is not None:
            self.users[token] = login

    def add_org(self, login: str, admins: tuple[str, ...] = ()) -> FakeOrg:
        org = FakeOrg(login, {admin.lower() for admin in admins})
        self.orgs[login.lower()] = org
        return org

    def add_repo(
        self,
        owner: str,
        name: str,
        default_branch: str | None = "main",
        private: bool = False,
        permissions: dict[str, str] | None = None,
    ) -> FakeRepo:
        """Add a repository; its owner becomes a user unless it is an org."""
        if owner.lower() not in self.orgs and owner.lower() not in self.logins:
            self.add_user(owner)
        grants = {login.lower(): perm for login, perm in (permissions or {}).items()}
        repo = FakeRepo(owner, name, default_branch, private, grants)
        self.repos[owner.lower(), name.lower()] = repo
        return repo

    def find_repo(self, owner: str, name: str) -> FakeRepo | None:
        return self.repos.get((owner.lower(), name.lower()))

    def revoke(self, token: str, owner: str, name: str) -> None:
        """The token's user loses its grant (a private repository disappears)."""
        repo = self.find_repo(owner, name)
        if repo is not None:
            repo.permissions.pop(self.users[token].lower(), None)

    def revoke_token(self, token: str) -> None:
        """GitHub forgets the token: 401 Bad credentials from now on."""
        self.users.pop(token, None)

    def fail_next(
        self,
        n: int = 1,
        status: int = 502,
        *,
        html: bool = False,
        retry_after: float | None = None,
    ) -> None:
        """Answer the next ``n`` requests with ``status`` (an HTML body if ``html``)."""
        self._failures.extend([(status, html, retry_after)] * n)

    def rate_limit_exhausted(self, reset_in: float = 60.0) -> None:
        """Primary limit used up for ``reset_in`` s: REST 403, GraphQL RATE_LIMITED."""
        self._exhausted_until = time.time() + reset_in

    def secondary_rate_limit(self, retry_after: float = 60.0, times: int = 1) -> None:
        """The next ``times`` requests hit a secondary limit (403 + Retry-After)."""
        self._secondary.extend([retry_after] * times)

    def delay(self, seconds: float) -> None:
        """Every following answer waits this long (0 to stop)."""
        self._delay = seconds

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_post("/graphql", self._graphql)
        app.router.add_post("/repos/{owner}/{repo}/statuses/{sha}", self._post_status)
        return app

    async def start(self) -> str:
        """Serve on 127.0.0.1 at a free port; returns (and sets) :attr:`url`."""
        self._runner = web.AppRunner(self.app())
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self.url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @classmethod
    @asynccontextmanager
    async def running(cls) -> AsyncIterator[FakeGitHub]:
        fake = cls()
        await fake.start()
        try:
            yield fake
        finally:
            await fake.close()

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Handler
    ) -> web.StreamResponse:
        token = _token(request.headers.get("Authorization", ""))
        try:
            body = await request.json() if request.can_read_body else None
        except ValueError:
            body = None
        self.calls.append(FakeCall(request.method, request.path, token, body))
        resource = "graphql" if request.path == "/graphql" else "core"
        if self._delay:
            await asyncio.sleep(self._delay)
        response: web.StreamResponse | None = self._switched(token, resource)
        if response is None:
            self._used += 1
            response = await handler(request)
        exhausted = self._exhausted_until > time.time()
        reset = self._exhausted_until if exhausted else time.time() + 3600
        response.headers.update(
            {
                "X-RateLimit-Limit": str(RATE_LIMIT),
                "X-RateLimit-Remaining": str(
                    0 if exhausted else RATE_LIMIT - self._used
                ),
                "X-RateLimit-Reset": str(int(reset) + 1),
                "X-RateLimit-Used": str(RATE_LIMIT if exhausted else self._used),
                "X-RateLimit-Resource": resource,
                "X-GitHub-Request-Id": uuid.uuid4().hex[:20].upper(),
            }
        )
        return response

    def _switched(self, token: str | None, resource: str) -> web.Response | None:
        """The answer a failure switch or a bad token imposes, if any."""
        if self._failures:
            status, html, wait = self._failures.pop(0)
            headers = {} if wait is None else {"Retry-After": str(wait)}
            if html:
                page = f"<html><body><h1>{status}</h1></body></html>"
                return web.Response(
                    status=status, text=page, content_type="text/html", headers=headers
                )
            return _error("Server Error", status, headers)
        if token is None or token not in self.users:
            return _error("Bad credentials", 401)
        if self._secondary:
            wait = self._secondary.pop(0)
            return _error(
                "You have exceeded a secondary rate limit. Please wait a few minutes "
                "before you try again.",
                403,
                {"Retry-After": str(int(wait))},
            )
        if self._exhausted_until > time.time():
            message = f"API rate limit exceeded for user ID {self._id(token)}."
            if resource == "core":
                return _error(message, 403)
            error = {"type": "RATE_LIMITED", "code": "graphql_rate_limit"}
            return _json({"errors": [{**error, "message": message}]}, 200)
        return None

    def _id(self, token: str) -> int:
        return sorted(self.logins).index(self.users[token].lower()) + 1

    async def _graphql(self, request: web.Request) -> web.Response:
        payload = self.calls[-1].json
        if not isinstance(payload, dict) or not isinstance(payload.get("query"), str):
            return _error("Problems parsing JSON", 400)
        token = self.calls[-1].token or ""
        root = _Root(self, self.users[token])
        result = graphql.graphql_sync(
            SCHEMA, payload["query"], root, variable_values=payload.get("variables")
        )
        body: dict[str, Any] = {}
        if result.data is not None:
            body["data"] = result.data
        if result.errors:
            body["errors"] = [_github_error(error) for error in result.errors]
        return _json(body, 200)

    async def _post_status(self, request: web.Request) -> web.Response:
        token = self.calls[-1].token or ""
        owner, name, sha = (request.match_info[k] for k in ("owner", "repo", "sha"))
        repo = self.find_repo(owner, name)
        if repo is None or repo.permission_of(self.users[token]) not in PUSH:
            return _error("Not Found", 404)
        data = self.calls[-1].json
        invalid = _invalid_status(data, sha)
        if invalid is not None:
            error = {"resource": "Status", "code": "custom", "field": invalid[0]}
            errors = [{**error, "message": invalid[1]}]
            return _error("Validation Failed", 422, errors=errors)
        record: dict[str, Any] = {"owner": repo.owner, "name": repo.name, "sha": sha}
        record.update(
            state=data["state"],
            context=data.get("context") or "default",
            target_url=data.get("target_url"),
            description=data.get("description"),
        )
        self.statuses.append(record)
        number = next(self._ids)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        body = {k: record[k] for k in ("state", "context", "target_url", "description")}
        body.update(
            url=f"{self.url}/repos/{repo.owner}/{repo.name}/statuses/{sha}",
            id=number,
            node_id=f"SC_kwDO{number:08d}",
            created_at=stamp,
            updated_at=stamp,
            creator={"login": self.users[token], "id": self._id(token), "type": "User"},
        )
        return _json(body, 201)


SCHEMA = graphql.build_schema("""
enum RepositoryPermission { ADMIN MAINTAIN WRITE TRIAGE READ }
type User { login: String! name: String }
type Organization { login: String! name: String viewerCanAdminister: Boolean! }
type RepositoryOwner { login: String! }
type Ref { name: String! }
type Repository {
  id: ID!
  name: String! nameWithOwner: String! owner: RepositoryOwner! isPrivate: Boolean!
  viewerPermission: RepositoryPermission defaultBranchRef: Ref
}
type Query {
  viewer: User!
  repository(owner: String!, name: String!, followRenames: Boolean = true): Repository
  organization(login: String!): Organization
  user(login: String!): User
}
""")


class _NotFound(Exception):
    pass


class _Root:
    """Resolvers of the top-level fields, as one viewer sees them."""

    def __init__(self, fake: FakeGitHub, login: str) -> None:
        self.fake = fake
        self.login = login

    def viewer(self, _info: Any) -> dict[str, Any]:
        return {"login": self.login, "name": self.fake.names.get(self.login.lower())}

    def repository(self, _info: Any, owner: str, name: str, **_: Any) -> dict[str, Any]:
        repo = self.fake.find_repo(owner, name)
        permission = repo.permission_of(self.login) if repo else None
        if repo is None or permission is None:
            raise _NotFound(
                f"Could not resolve to a Repository with the name '{owner}/{name}'."
            )
        branch = {"name": repo.default_branch} if repo.default_branch else None
        return {
            "id": repo.node_id,
            "name": repo.name,
            "nameWithOwner": f"{repo.owner}/{repo.name}",
            "owner": {"login": repo.owner},
            "isPrivate": repo.private,
            "viewerPermission": permission,
            "defaultBranchRef": branch,
        }

    def organization(self, _info: Any, login: str) -> dict[str, Any]:
        org = self.fake.orgs.get(login.lower())
        if org is None:
            raise _NotFound(
                f"Could not resolve to an Organization with the login of '{login}'."
            )
        admin = self.login.lower() in org.admins
        return {"login": org.login, "name": None, "viewerCanAdminister": admin}

    def user(self, _info: Any, login: str) -> dict[str, Any]:
        found = self.fake.logins.get(login.lower())
        if found is None:
            raise _NotFound(f"Could not resolve to a User with the login of '{login}'.")
        return {"login": found, "name": self.fake.names.get(login.lower())}


def _github_error(error: graphql.GraphQLError) -> dict[str, Any]:
    if isinstance(error.original_error, _NotFound):
        return {"type": "NOT_FOUND", **error.formatted}
    return dict(error.formatted)


def _invalid_status(data: Any, sha: str) -> tuple[str, str] | None:
    if not re.fullmatch(r"[0-9a-fA-F]{40}", sha):
        return "sha", f"No commit found for SHA: {sha}"
    if not isinstance(data, dict) or data.get("state") not in STATES:
        return "state", "state is not included in the list"
    if len(data.get("description") or "") > 140:
        return "description", "description is too long (maximum is 140 characters)"
    return None


def _token(header: str) -> str | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() in ("bearer", "token") and value.strip():
        return value.strip()
    return None


def _json(
    body: Any, status: int, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps(body),
        headers=headers,
        content_type="application/json",
    )


def _error(
    message: str, status: int, headers: dict[str, str] | None = None, **extra: Any
) -> web.Response:
    return _json(
        {"message": message, **extra, "documentation_url": DOCS}, status, headers
    )


@pytest_asyncio.fixture
async def fake_github() -> AsyncIterator[FakeGitHub]:
    """A running :class:`FakeGitHub`; point the app's GitHub API URL at ``.url``."""
    async with FakeGitHub.running() as fake:
        yield fake
