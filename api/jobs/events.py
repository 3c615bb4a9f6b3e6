"""Job lifecycle events, delivered in order to every subscriber."""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from api.storage.records import JobRecord, RepositoryRecord

logger = logging.getLogger(__name__)


class EventType(enum.StrEnum):
    QUEUED = "queued"
    STARTED = "started"
    # A job queued without a commit (a deploy of a branch head) now has one.
    RESOLVED = "resolved"
    FINISHED = "finished"
    GIT_AUTH_FAILED = "git_auth_failed"


@dataclass(frozen=True)
class JobEvent:
    type: EventType
    job: JobRecord
    repository: RepositoryRecord


Subscriber = Callable[[JobEvent], Awaitable[None]]


class JobEvents:
    """A small in-process bus: each subscriber gets its own ordered queue.

    ``emit`` never blocks the caller; a slow subscriber delays only itself.
    """

    def __init__(self) -> None:
        self._queues: list[asyncio.Queue[JobEvent | None]] = []
        self._tasks: list[asyncio.Task[None]] = []

    def subscribe(self, subscriber: Subscriber, *, name: str) -> None:
        queue: asyncio.Queue[JobEvent | None] = asyncio.Queue()
        self._queues.append(queue)
        self._tasks.append(
            asyncio.create_task(self._deliver(queue, subscriber), name=name)
        )

    def emit(self, event: JobEvent) -> None:
        for queue in self._queues:
            queue.put_nowait(event)

    async def close(self) -> None:
        """Deliver what is queued, then stop the subscribers."""
        for queue in self._queues:
            queue.put_nowait(None)
        for task in self._tasks:
            try:
                await asyncio.wait_for(task, timeout=5)
            except (TimeoutError, asyncio.CancelledError):
                task.cancel()
        self._queues.clear()
        self._tasks.clear()

    @staticmethod
    async def _deliver(
        queue: asyncio.Queue[JobEvent | None], subscriber: Subscriber
    ) -> None:
        while (event := await queue.get()) is not None:
            try:
                await subscriber(event)
            except Exception:
                logger.exception("Job event subscriber failed on %s", event.type)
