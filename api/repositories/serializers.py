"""Repositories as the API shows them."""

from __future__ import annotations

from typing import Any

from api.jobs.serializers import isoformat, repository_url
from api.storage.records import RepositoryRecord


def webhook_url(base_url: str, repository: RepositoryRecord) -> str:
    return f"{base_url}/api/webhooks/{repository.webhook_uid}"


def repository_to_dict(
    repository: RepositoryRecord,
    base_url: str,
    *,
    webhook_secret: str | None = None,
) -> dict[str, Any]:
    """``webhook_secret`` is given only to callers with push rights."""
    url = repository_url(base_url, repository)
    webhook: dict[str, Any] = {
        "url": webhook_url(base_url, repository),
        "content_type": "json",
        "events": ["push"],
    }
    if webhook_secret is not None:
        webhook["secret"] = webhook_secret
    return {
        "owner": repository.owner,
        "name": repository.name,
        "full_name": repository.full_name,
        "branch": repository.branch,
        "private": repository.private,
        "status": str(repository.status),
        "status_detail": repository.status_detail,
        "registered_by": repository.registered_by,
        "created_at": isoformat(repository.created_at),
        "updated_at": isoformat(repository.updated_at),
        "url": url,
        "jobs_url": f"{url}/jobs",
        "webhook": webhook,
    }
