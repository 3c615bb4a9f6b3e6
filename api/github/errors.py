"""Typed outcomes of talking to GitHub; the rest of the app maps only these."""

from __future__ import annotations


class GitHubError(Exception):
    """Base class of every GitHub failure the client raises."""


class InvalidCredentials(GitHubError):
    """GitHub rejected the token, or it belongs to another login."""


class RepositoryNotFound(GitHubError):
    """The repository does not exist or the token cannot see it."""


class OwnerNotFound(GitHubError):
    """Neither a user nor an organization of that login is visible."""


class GitHubUnavailable(GitHubError):
    """GitHub could not be reached or kept failing (after retries)."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class GitHubQueryError(GitHubUnavailable):
    """GitHub answered, but not with something usable (unknown error, 4xx).

    A subclass of :class:`GitHubUnavailable` so that callers that map only the
    public classes answer 502; it is never retried.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class RateLimited(GitHubError):
    """A primary or secondary rate limit is in force for this token."""

    def __init__(self, message: str, *, reset_at: float, retry_after: float) -> None:
        super().__init__(message)
        self.reset_at = reset_at
        self.retry_after = retry_after


class InvalidSignature(Exception):
    """A webhook's ``X-Hub-Signature-256`` is missing, malformed or wrong."""
