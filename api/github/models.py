"""Data read from GitHub's answers."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Permission(enum.StrEnum):
    """A viewer's permission on a repository (GraphQL ``RepositoryPermission``)."""

    ADMIN = "ADMIN"
    MAINTAIN = "MAINTAIN"
    WRITE = "WRITE"
    TRIAGE = "TRIAGE"
    READ = "READ"

    @property
    def can_push(self) -> bool:
        return self in _PUSH

    @property
    def can_read(self) -> bool:
        return True


_PUSH = frozenset({Permission.ADMIN, Permission.MAINTAIN, Permission.WRITE})


@dataclass(frozen=True)
class GitHubUser:
    login: str
    name: str | None


@dataclass(frozen=True)
class RepositoryAccess:
    """What a token may do with a repository; owner/name spelled as GitHub does."""

    owner: str
    name: str
    permission: Permission | None
    default_branch: str | None
    is_private: bool
    # GitHub's node id: the repository, whatever its name (None if unknown).
    node_id: str | None = None


@dataclass(frozen=True)
class WebhookEvent:
    """The verified headers of a webhook delivery (``event`` may be ``""``)."""

    event: str
    delivery_id: str | None
