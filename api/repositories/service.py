"""Register, find and remove repositories."""

from __future__ import annotations

import asyncio
import secrets
import shutil

from aiosqlite import Connection

from api.crypto import SecretBox
from api.errors import Conflict, ValidationFailed
from api.github import GitHubClient, Permission, RepositoryAccess, RepositoryNotFound
from api.jobs import git
from api.jobs.runner import JobRunner, clone_dir, log_dir
from api.storage import RepositoryExists, Storage
from api.storage.records import (
    JobKind,
    JobRecord,
    RepositoryRecord,
    RepositoryStatus,
)

LIST_CONCURRENCY = 8


async def register(
    storage: Storage,
    box: SecretBox,
    runner: JobRunner,
    *,
    access: RepositoryAccess,
    login: str,
    token: str,
    branch: str | None,
) -> tuple[RepositoryRecord, JobRecord]:
    """Store the repository with the caller's token and queue its clone
    (a revoked one: registered again, see ``_register_again``)."""
    runner.ensure_accepting()
    if branch is not None:
        branch = git.short_branch(branch)
        if not branch:
            raise ValidationFailed(["body", "branch"], "is not a valid branch name")
    tracked = branch or access.default_branch
    if not tracked:
        raise Conflict(
            f"{access.owner}/{access.name} has no default branch on GitHub;"
            " name the branch to track"
        )
    if not git.safe_ref(tracked):
        if branch:  # the schema's BranchName is the same rule
            raise ValidationFailed(["body", "branch"], "is not a valid branch name")
        raise Conflict(
            f"{access.owner}/{access.name}: its default branch {tracked!r} is not"
            " a name Hobotnica passes to git; name the branch to track"
        )
    existing = await storage.repositories.get(access.owner, access.name)
    if existing is not None and existing.status is RepositoryStatus.REVOKED:
        if not existing.is_github_repository(access.node_id):
            raise Conflict(
                f"{access.owner}/{access.name} is another repository on GitHub now"
                " than the one registered: delete the registration first"
            )
        return await _register_again(
            storage,
            box,
            runner,
            existing,
            access,
            login=login,
            token=token,
            branch=tracked,
        )
    try:
        async with storage.db.transaction() as conn:
            repository = await storage.repositories.create(
                conn,
                owner=access.owner,
                name=access.name,
                branch=tracked,
                private=access.is_private,
                registered_by=login,
                token_encrypted=box.encrypt(token),
                webhook_uid=secrets.token_urlsafe(24),
                webhook_secret_encrypted=box.encrypt(secrets.token_hex(32)),
                github_id=access.node_id,
            )
            job = await _queue_clone(storage, conn, repository.id, tracked, login)
    except RepositoryExists:
        raise Conflict(f"{access.owner}/{access.name} is registered already") from None
    runner.announce(repository, job)
    return repository, job


async def _register_again(
    storage: Storage,
    box: SecretBox,
    runner: JobRunner,
    repository: RepositoryRecord,
    access: RepositoryAccess,
    *,
    login: str,
    token: str,
    branch: str,
) -> tuple[RepositoryRecord, JobRecord]:
    """A revoked repository registered again: the caller's token, a new
    clone; its webhook (URL and secret), env and jobs stay."""
    async with storage.db.transaction() as conn:
        again = await storage.repositories.register_again(
            conn,
            repository.id,
            branch=branch,
            registered_by=login,
            token_encrypted=box.encrypt(token),
            github_id=access.node_id,
        )
        if again is None:  # registered again (or deleted) meanwhile
            raise Conflict(f"{repository.full_name} is registered already")
        job = await _queue_clone(storage, conn, again.id, branch, login)
    runner.announce(again, job)
    return again, job


async def _queue_clone(
    storage: Storage, conn: Connection, repository_id: int, branch: str, login: str
) -> JobRecord:
    job, _ = await storage.jobs.enqueue(
        conn,
        repository_id=repository_id,
        kind=JobKind.CLONE,
        ref=branch,
        sha=None,
        trigger={"type": "register", "user": login},
    )
    return job


async def unregister(
    storage: Storage, runner: JobRunner, repository: RepositoryRecord
) -> None:
    """Stop its jobs, then remove its rows, clone and logs; no job of it
    starts here meanwhile (a push's job claimed during the removal is
    cancelled before it runs anything)."""
    async with runner.removing(repository):
        async with storage.db.transaction() as conn:
            await storage.repositories.delete(conn, repository.id)
        await asyncio.to_thread(remove_files, runner, repository)


def remove_files(runner: JobRunner, repository: RepositoryRecord) -> None:
    shutil.rmtree(clone_dir(runner.settings, repository.id), ignore_errors=True)
    shutil.rmtree(log_dir(runner.settings, repository.id), ignore_errors=True)


async def visible_to(
    storage: Storage, github: GitHubClient, token: str
) -> list[tuple[RepositoryRecord, bool]]:
    """Registered repositories the token can read, with whether it can push.

    One (cached) permission query per repository, a few at a time: plain
    ``repository(owner, name)`` queries, which every GitHub speaks.
    """
    limit = asyncio.Semaphore(LIST_CONCURRENCY)

    async def permission(repository: RepositoryRecord) -> Permission | None:
        async with limit:
            try:
                access = await github.repository_access(
                    token, repository.owner, repository.name
                )
            except RepositoryNotFound:
                return None
            return access.permission

    registered = await storage.repositories.list_all()
    permissions = await asyncio.gather(*(permission(r) for r in registered))
    return [
        (repository, permission.can_push)
        for repository, permission in zip(registered, permissions, strict=True)
        if permission is not None and permission.can_read
    ]


def webhook_secret(box: SecretBox, repository: RepositoryRecord) -> str:
    return box.decrypt(repository.webhook_secret_encrypted)
