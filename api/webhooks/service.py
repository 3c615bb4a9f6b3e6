"""GitHub webhook intake: verify, deduplicate, queue test jobs."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from api.crypto import SecretBox
from api.errors import Gone, NotFound, Unauthorized, ValidationFailed
from api.github import InvalidSignature, signature_digest, verify_webhook
from api.github.models import WebhookEvent
from api.github.webhooks import DELIVERY_HEADER, EVENT_HEADER
from api.jobs.runner import JobRunner
from api.storage import Storage
from api.storage.records import JobKind, JobRecord, RepositoryRecord, RepositoryStatus
from api.webhooks.payloads import parse_body, parse_push

_P = ParamSpec("_P")
_T = TypeVar("_T")

# Bodies above this size are hashed and parsed off the event loop.
LARGE_BODY = 2**20
# GitHub sends a GUID and names like ``pull_request``. The signature does not
# cover headers, so they are checked before they are stored: printable ASCII
# (any other event is ignored, as is a delivery without one).
_DELIVERY_ID_RE = re.compile(r"[ -~]{1,128}")
_EVENT_RE = re.compile(r"[ -~]{0,64}")

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


async def receive(
    storage: Storage,
    box: SecretBox,
    runner: JobRunner,
    *,
    uid: str,
    headers: Mapping[str, str],
    read_body: Callable[[], Awaitable[bytes]],
    content_type: str,
) -> Intake:
    repository = await storage.repositories.get_by_webhook_uid(uid)
    if repository is None:
        raise NotFound("Unknown webhook")
    try:
        # Refused on its headers: an unsigned body is never read.
        signature_digest(headers)
    except InvalidSignature:
        raise Unauthorized("Invalid signature") from None
    body = await read_body()
    secret = box.decrypt(repository.webhook_secret_encrypted)
    try:
        event = await _run(body, verify_webhook, headers, body, secret)
    except InvalidSignature:
        raise Unauthorized("Invalid signature") from None
    _check_headers(event)
    if repository.status is RepositoryStatus.REVOKED:
        raise Gone(f"Access to {repository.full_name} was revoked")
    if event.event == "ping":
        await _record(storage, repository, event.delivery_id, event.event, PONG)
        return Intake(200, repository, detail=PONG)
    if event.event != "push":
        await _record(storage, repository, event.delivery_id, event.event, IGNORED)
        return Intake(202, repository, detail=IGNORED)

    push = parse_push(await _run(body, parse_body, body, content_type))
    if push.branch != repository.branch or push.removes_branch:
        await _record(storage, repository, event.delivery_id, event.event, IGNORED)
        return Intake(202, repository, detail=IGNORED)
    early = runner.fetch_early(repository, push.after)
    try:
        return await _queue_test(
            storage=storage,
            runner=runner,
            repository=repository,
            delivery_id=event.delivery_id,
            sha=push.after,
            sender=push.sender,
        )
    finally:
        if early is not None:  # adopted by the push's job, or stopped here
            await runner.discard_early_fetch(early)


def _check_headers(event: WebhookEvent) -> None:
    if event.delivery_id is not None and not _DELIVERY_ID_RE.fullmatch(
        event.delivery_id
    ):
        raise ValidationFailed(
            ["header", DELIVERY_HEADER], "must be 1-128 printable ASCII characters"
        )
    if not _EVENT_RE.fullmatch(event.event):
        raise ValidationFailed(
            ["header", EVENT_HEADER], "must be at most 64 printable ASCII characters"
        )


async def _run(
    body: bytes, function: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs
) -> _T:
    """``function(*args)``; in a thread for a large body, so the loop keeps serving."""
    if len(body) > LARGE_BODY:
        return await asyncio.to_thread(function, *args, **kwargs)
    return function(*args, **kwargs)


async def _record(
    storage: Storage,
    repository: RepositoryRecord,
    delivery_id: str | None,
    event: str,
    result: str,
) -> None:
    """Record a delivery that queues nothing (once: redeliveries are no-ops)."""
    await storage.deliveries.record_once(
        repository_id=repository.id,
        delivery_id=delivery_id or _local_delivery_id(),
        event=event,
        result=result,
    )


def _local_delivery_id() -> str:
    """An id for a delivery without ``X-GitHub-Delivery`` (never a redelivery)."""
    return f"local-{uuid.uuid4().hex}"


async def _queue_test(
    *,
    storage: Storage,
    runner: JobRunner,
    repository: RepositoryRecord,
    delivery_id: str | None,
    sha: str,
    sender: str | None,
) -> Intake:
    delivery = delivery_id or _local_delivery_id()
    trigger: dict[str, Any] = {"type": "push", "delivery": delivery}
    if sender:
        trigger["user"] = sender
    # Claimed in the same transaction when there is room: the job starts
    # without waiting for a round of the runner's loop.
    room = runner.reserve()
    try:
        async with storage.db.transaction() as conn:
            earlier = await storage.deliveries.find(conn, repository.id, delivery)
            if earlier is not None:
                job = None
                if earlier.job_id is not None:
                    job = await storage.jobs.get_by_id_in(conn, earlier.job_id)
                if job is None:
                    return Intake(202, repository, detail=IGNORED)
                return Intake(202, repository, job=job)
            runner.ensure_accepting()  # 503 while draining; a redelivery still works
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
            claimed = (
                await storage.jobs.claim(runner.instance_id, conn) if room else None
            )
        ours = claimed is not None and claimed.id == job.id
        runner.announce(repository, job, superseded, claimed=ours)
        if claimed is not None:
            await runner.start_claimed(claimed, repository)
    finally:
        if room:
            runner.release()
    return Intake(202, repository, job=job)
