"""The one place that talks to GitHub: GraphQL + REST + webhook signatures.

``queries`` and ``policy`` do no I/O (building queries, reading answers,
deciding errors, retries and rate limits); ``transport`` is gidgethub's
aiohttp adapter; ``client`` combines them.
"""

from .client import GitHubClient
from .errors import (
    GitHubError,
    GitHubQueryError,
    GitHubUnavailable,
    InvalidCredentials,
    InvalidSignature,
    OwnerNotFound,
    RateLimited,
    RepositoryNotFound,
)
from .models import GitHubUser, Permission, RepositoryAccess, WebhookEvent
from .webhooks import signature_digest, verify_webhook

__all__ = [
    "GitHubClient",
    "GitHubError",
    "GitHubQueryError",
    "GitHubUnavailable",
    "GitHubUser",
    "InvalidCredentials",
    "InvalidSignature",
    "OwnerNotFound",
    "Permission",
    "RateLimited",
    "RepositoryAccess",
    "RepositoryNotFound",
    "WebhookEvent",
    "signature_digest",
    "verify_webhook",
]
