"""SQLite storage: one :class:`Storage` per process."""

from __future__ import annotations

from pathlib import Path

from api.storage.db import Database
from api.storage.deliveries import DeliveryStore
from api.storage.env import EnvStore
from api.storage.jobs import JobStore
from api.storage.outbox import StatusOutbox
from api.storage.repositories import RepositoryExists, RepositoryGone, RepositoryStore

__all__ = ["RepositoryExists", "RepositoryGone", "Storage"]


class Storage:
    def __init__(self, path: Path) -> None:
        self.db = Database(path)
        self.repositories = RepositoryStore(self.db)
        self.jobs = JobStore(self.db)
        self.env = EnvStore(self.db)
        self.deliveries = DeliveryStore(self.db)
        self.outbox = StatusOutbox(self.db)

    async def open(self) -> None:
        await self.db.open()

    async def close(self) -> None:
        await self.db.close()
