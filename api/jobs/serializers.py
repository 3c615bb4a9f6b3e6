"""Jobs as the API shows them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from api.storage.records import JobRecord, RepositoryRecord


def isoformat(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


def repository_url(base_url: str, repository: RepositoryRecord) -> str:
    owner = quote(repository.owner, safe="")
    name = quote(repository.name, safe="")
    return f"{base_url}/api/repositories/{owner}/{name}"


def job_url(base_url: str, repository: RepositoryRecord, number: int) -> str:
    return f"{repository_url(base_url, repository)}/jobs/{number}"


def job_to_dict(
    job: JobRecord, repository: RepositoryRecord, base_url: str
) -> dict[str, Any]:
    url = job_url(base_url, repository, job.number)
    return {
        "number": job.number,
        "repository": repository.full_name,
        "kind": str(job.kind),
        "status": str(job.status),
        "ref": job.ref,
        "sha": job.sha,
        "exit_code": job.exit_code,
        "reason": job.reason,
        "created_at": isoformat(job.created_at),
        "started_at": isoformat(job.started_at),
        "finished_at": isoformat(job.finished_at),
        "duration": job.duration,
        "trigger": job.trigger,
        "url": url,
        "log_url": f"{url}/log",
    }
