"""GitHub webhook intake: verify, deduplicate, queue test jobs."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from api.crypto import SecretBox
from api.errors import Gone, NotFound, Unauthorized
from api.github import InvalidSignature, verify_webhook
from api.jobs.runner import JobRunner
from api.storage import Storage
from api.storage.records import JobKind, JobRecord, RepositoryRecord, RepositoryStatus
from api.webhooks.payloads import parse_body, parse_push

IGNORED = "ignored"
QUEUED = "queued"
PONG = "pong"


@dataclass(frozen=True)
class Intake:
    """What a delivery led to: a queued job, or a detail like ``ignored``."""

    status: int
    repository: RepositoryRecord
    job: JobRecord | None = None
    detail: str | None = None


@functools.lru_cache(maxsize=4096)
def _secret(box: SecretBox, encrypted: str) -> str:
    return box.decrypt(encrypted)


async def receive(
    storage: Storage,
    box: SecretBox,
    runner: JobRunner,
    *,
    uid: str,
    headers: Mapping[str, str],
    body: bytes,
    content_type: str,
) -> Intake:
    repository = await storage.repositories.get_by_webhook_uid(uid)
    if repository is None:
        raise NotFound("Unknown webhook")
    try:
        event = verify_webhook(
            headers, body, _secret(box, repository.webhook_secret_encrypted)
        )
    except InvalidSignature:
        raise Unauthorized("Invalid signature") from None
    if repository.status is RepositoryStatus.REVOKED:
        raise Gone(f"Access to {repository.full_name} was revoked")
    if event.event == "ping":
        return Intake(200, repository, detail=PONG)
    if event.event != "push":
        return await _record_ignored(
            storage, repository, event.delivery_id, event.event
        )

    push = parse_push(parse_body(body, content_type))
    if push.branch != repository.branch or push.removes_branch:
        return await _record_ignored(storage, repository, event.delivery_id, "push")
    runner.ensure_accepting()
    return await _queue_test(
        storage=storage,
        runner=runner,
        repository=repository,
        delivery_id=event.delivery_id,
        sha=push.after,
        sender=push.sender,
    )


async def _record_ignored(
    storage: Storage, repository: RepositoryRecord, delivery_id: str | None, event: str
) -> Intake:
    async with storage.db.transaction() as conn:
        delivery = delivery_id or f"local-{uuid.uuid4().hex}"
        if await storage.deliveries.find(conn, repository.id, delivery) is None:
            await storage.deliveries.record(
                conn,
                repository_id=repository.id,
                delivery_id=delivery,
                event=event,
                result=IGNORED,
                job_id=None,
            )
    return Intake(202, repository, detail=IGNORED)


async def _queue_test(
    *,
    storage: Storage,
    runner: JobRunner,
    repository: RepositoryRecord,
    delivery_id: str | None,
    sha: str,
    sender: str | None,
) -> Intake:
    delivery = delivery_id or f"local-{uuid.uuid4().hex}"
    trigger: dict[str, Any] = {"type": "push", "delivery": delivery}
    if sender:
        trigger["user"] = sender
    async with storage.db.transaction() as conn:
        earlier = await storage.deliveries.find(conn, repository.id, delivery)
        if earlier is not None:
            job = None
            if earlier.job_id is not None:
                job = await storage.jobs.get_by_id_in(conn, earlier.job_id)
            if job is None:
                return Intake(202, repository, detail=IGNORED)
            return Intake(202, repository, job=job)
        job, superseded = await storage.jobs.enqueue(
            conn,
            repository_id=repository.id,
            kind=JobKind.TEST,
            ref=repository.branch,
            sha=sha,
            trigger=trigger,
            supersede=True,
        )
        await storage.deliveries.record(
            conn,
            repository_id=repository.id,
            delivery_id=delivery,
            event="push",
            result=QUEUED,
            job_id=job.id,
        )
    runner.announce(repository, job, superseded)
    return Intake(202, repository, job=job)
