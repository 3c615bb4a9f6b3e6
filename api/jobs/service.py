"""Queue deploys; find jobs and their logs."""

from __future__ import annotations

from pathlib import Path

from api.errors import Conflict, NotFound
from api.jobs import git
from api.jobs.runner import JobRunner, log_path
from api.storage import Storage
from api.storage.records import (
    JobKind,
    JobRecord,
    JobStatus,
    RepositoryRecord,
    RepositoryStatus,
)


async def queue_deploy(
    storage: Storage,
    runner: JobRunner,
    repository: RepositoryRecord,
    *,
    login: str,
    ref: str | None,
    sha: str | None,
    require_tests: bool,
) -> JobRecord:
    """Queue ``make deploy`` of ``sha``, else of ``ref``'s or the branch's head."""
    runner.ensure_accepting()
    if repository.status is RepositoryStatus.REVOKED:
        raise Conflict(f"{repository.full_name}: access was revoked; register it again")
    # Test jobs record the short name.
    ref = git.short_branch(ref or repository.branch)
    if require_tests:
        sha = await _tested_sha(storage, repository, ref, sha)
    async with storage.db.transaction() as conn:
        job, _ = await storage.jobs.enqueue(
            conn,
            repository_id=repository.id,
            kind=JobKind.DEPLOY,
            ref=ref,
            sha=sha,
            trigger={"type": "api", "user": login},
        )
    runner.announce(repository, job)
    return job


async def _tested_sha(
    storage: Storage, repository: RepositoryRecord, ref: str, sha: str | None
) -> str:
    """The sha to deploy when tests must have passed on it."""
    if sha is None:
        latest = await storage.jobs.latest_test_of_ref(repository.id, ref)
        if latest is None or latest.sha is None:
            raise Conflict(f"No test job has run on {ref} yet")
        sha = latest.sha
    status = await storage.jobs.latest_test_status(repository.id, sha)
    if status is not JobStatus.SUCCESS:
        state = "no test job" if status is None else f"its latest test job is {status}"
        raise Conflict(f"Refusing to deploy {sha}: {state}")
    return sha


async def get_job(
    storage: Storage, repository: RepositoryRecord, number: int
) -> JobRecord:
    job = await storage.jobs.get(repository.id, number)
    if job is None:
        raise NotFound(f"{repository.full_name} has no job #{number}")
    return job


async def cancel(
    storage: Storage, runner: JobRunner, repository: RepositoryRecord, job: JobRecord
) -> JobRecord:
    updated = await runner.cancel(repository, job)
    if updated is None:
        raise Conflict(f"Job #{job.number} has ended already ({job.status})")
    return updated


def job_log_path(
    runner: JobRunner, repository: RepositoryRecord, job: JobRecord
) -> Path:
    return log_path(runner.settings, repository.id, job.number)
