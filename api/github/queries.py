"""GraphQL queries Hobotnica sends and pure readers of GitHub's answers."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any, TypeVar

from .errors import GitHubQueryError, InvalidCredentials, OwnerNotFound
from .models import GitHubUser, Permission, RepositoryAccess

K = TypeVar("K", bound=Hashable)

VIEWER_QUERY = "query Viewer { viewer { login name } }"

_REPOSITORY_FIELDS = (
    "id name owner { login } viewerPermission isPrivate defaultBranchRef { name }"
)
REPOSITORY_QUERY = (
    "query Repository($owner: String!, $name: String!) "
    f"{{ repository(owner: $owner, name: $name) {{ {_REPOSITORY_FIELDS} }} }}"
)
# organization/user that do not exist come back null with a NOT_FOUND error
OWNER_QUERY = (
    "query Owner($login: String!) { viewer { login } "
    "organization(login: $login) { viewerCanAdminister } "
    "user(login: $login) { login } }"
)
BATCH_SIZE = 50


def graphql_endpoint(api_url: str) -> str:
    """``{api_url}/graphql``; GitHub Enterprise serves it at ``/api/graphql``."""
    base = api_url.rstrip("/")
    if base.endswith("/api/v3"):
        return base.removesuffix("/v3") + "/graphql"
    return base + "/graphql"


def repositories_query(
    repos: Sequence[tuple[str, str]],
) -> tuple[str, dict[str, str], list[str]]:
    """One query with an alias per repository: ``(query, variables, aliases)``.

    Owners and names travel as variables, never spliced into the query text.
    """
    params: list[str] = []
    fields: list[str] = []
    variables: dict[str, str] = {}
    aliases: list[str] = []
    for index, (owner, name) in enumerate(repos):
        alias = f"r{index}"
        params.append(f"$o{index}: String!, $n{index}: String!")
        fields.append(
            f"{alias}: repository(owner: $o{index}, name: $n{index}) "
            f"{{ {_REPOSITORY_FIELDS} }}"
        )
        variables[f"o{index}"] = owner
        variables[f"n{index}"] = name
        aliases.append(alias)
    query = f"query Repositories({', '.join(params)}) {{ {' '.join(fields)} }}"
    return query, variables, aliases


def graphql_errors(response: Any) -> list[Mapping[str, Any]]:
    errors = response.get("errors") if isinstance(response, Mapping) else None
    if not isinstance(errors, list):
        return []
    return [error for error in errors if isinstance(error, Mapping)]


def error_type(error: Mapping[str, Any]) -> str:
    return str(error.get("type") or "")


def error_message(error: Mapping[str, Any]) -> str:
    return str(error.get("message") or "GraphQL error")


# field errors that mean "the viewer cannot see this": the field is null
_ABSENT = frozenset({"NOT_FOUND", "FORBIDDEN"})


def graphql_data(response: Any) -> Mapping[str, Any]:
    """``data`` of a GraphQL answer, if its only errors say a field is absent.

    NOT_FOUND, and FORBIDDEN (e.g. an organization's SAML enforcement), leave
    that field null; the readers below turn null into "absent". Any other
    error fails. Rate-limit errors are decided by the caller before this.
    """
    for error in graphql_errors(response):
        if error_type(error) not in _ABSENT or not error.get("path"):
            raise GitHubQueryError(f"GitHub GraphQL error: {error_message(error)}")
    data = response.get("data") if isinstance(response, Mapping) else None
    if not isinstance(data, Mapping):
        raise GitHubQueryError("GitHub GraphQL answer has no data")
    return data


def _text(node: Mapping[str, Any], key: str) -> str:
    value = node.get(key)
    if not isinstance(value, str) or not value:
        raise GitHubQueryError(f"GitHub answer lacks {key!r}")
    return value


def _node(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise GitHubQueryError(f"GitHub answer lacks {what!r}")
    return value


def read_viewer(data: Mapping[str, Any]) -> GitHubUser:
    viewer = _node(data.get("viewer"), "viewer")
    name = viewer.get("name")
    return GitHubUser(login=_text(viewer, "login"), name=name or None)


def check_login(user: GitHubUser, username: str) -> GitHubUser:
    """The token's user, if it is ``username`` (GitHub logins ignore case)."""
    if user.login.casefold() != username.casefold():
        raise InvalidCredentials("the token belongs to another GitHub user")
    return user


def _permission(value: Any) -> Permission | None:
    try:
        return Permission(value)
    except ValueError:
        return None


def read_repository(node: Any) -> RepositoryAccess | None:
    """A ``repository`` node, or ``None`` when GitHub answered null."""
    if node is None:
        return None
    node = _node(node, "repository")
    branch = node.get("defaultBranchRef")
    return RepositoryAccess(
        owner=_text(_node(node.get("owner"), "owner"), "login"),
        name=_text(node, "name"),
        permission=_permission(node.get("viewerPermission")),
        default_branch=_text(branch, "name") if isinstance(branch, Mapping) else None,
        is_private=bool(node.get("isPrivate")),
        node_id=node["id"] if isinstance(node.get("id"), str) else None,
    )


def read_repositories(
    data: Mapping[str, Any], aliases: Mapping[str, K]
) -> dict[K, RepositoryAccess]:
    """The visible repositories of a batch answer, keyed as the caller asked."""
    found: dict[K, RepositoryAccess] = {}
    for alias, key in aliases.items():
        access = read_repository(data.get(alias))
        if access is not None:
            found[key] = access
    return found


def read_owner_admin(data: Mapping[str, Any], username: str, owner: str) -> bool:
    """Whether the viewer administers ``owner``, from an OWNER_QUERY answer."""
    viewer = _text(_node(data.get("viewer"), "viewer"), "login")
    if viewer.casefold() != username.casefold():
        raise InvalidCredentials("the token belongs to another GitHub user")
    if viewer.casefold() == owner.casefold():
        return True
    organization = data.get("organization")
    if isinstance(organization, Mapping):
        return organization.get("viewerCanAdminister") is True
    if isinstance(data.get("user"), Mapping):
        return False  # another user's account: only they administer it
    raise OwnerNotFound(f"no GitHub user or organization {owner!r}")
