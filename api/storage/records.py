"""Plain records read from and written to the database."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Any

from api.storage.db import Row


class RepositoryStatus(enum.StrEnum):
    CLONING = "cloning"
    READY = "ready"
    FAILED = "failed"
    REVOKED = "revoked"


class JobKind(enum.StrEnum):
    CLONE = "clone"
    TEST = "test"
    DEPLOY = "deploy"


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    ERROR = "error"
    CANCELLED = "cancelled"
    SUPERSEDED = "superseded"
    TIMED_OUT = "timed_out"
    INTERRUPTED = "interrupted"

    @property
    def is_finished(self) -> bool:
        return self not in (JobStatus.QUEUED, JobStatus.RUNNING)


@dataclass(frozen=True)
class RepositoryRecord:
    id: int
    owner: str
    name: str
    branch: str
    status: RepositoryStatus
    status_detail: str | None
    private: bool
    registered_by: str
    token_encrypted: str
    webhook_uid: str
    webhook_secret_encrypted: str
    created_at: float
    updated_at: float
    github_id: str | None = None  # GitHub's node id (see migration 0002)

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"

    def is_github_repository(self, node_id: str | None) -> bool:
        """Whether GitHub's repository ``node_id`` (the one that has this
        name now) is the registered one; unknown ids (registrations from
        before they were stored) count as the same."""
        return self.github_id is None or node_id is None or self.github_id == node_id

    @classmethod
    def from_row(cls, row: Row) -> RepositoryRecord:
        return cls(
            id=row["id"],
            owner=row["owner"],
            name=row["name"],
            branch=row["branch"],
            status=RepositoryStatus(row["status"]),
            status_detail=row["status_detail"],
            private=bool(row["private"]),
            registered_by=row["registered_by"],
            token_encrypted=row["token_encrypted"],
            webhook_uid=row["webhook_uid"],
            webhook_secret_encrypted=row["webhook_secret_encrypted"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            github_id=row["github_id"],
        )


@dataclass(frozen=True)
class JobRecord:
    """A row of ``jobs``. Its ``pgid`` column is no longer used: a dead
    instance's processes are found by the marker in their environment
    (api/jobs/leftovers.py); it stays for the previous version, which may
    share the database during a switch."""

    id: int
    repository_id: int
    number: int
    kind: JobKind
    status: JobStatus
    ref: str | None
    sha: str | None
    exit_code: int | None
    reason: str | None
    trigger: dict[str, Any] = field(hash=False)
    created_at: float
    started_at: float | None
    finished_at: float | None
    runner: str | None
    cancel_requested: bool

    @property
    def duration(self) -> float | None:
        if self.started_at is None:
            return None
        if self.finished_at is None:
            return None
        return round(self.finished_at - self.started_at, 3)

    @classmethod
    def from_row(cls, row: Row) -> JobRecord:
        return cls(
            id=row["id"],
            repository_id=row["repository_id"],
            number=row["number"],
            kind=JobKind(row["kind"]),
            status=JobStatus(row["status"]),
            ref=row["ref"],
            sha=row["sha"],
            exit_code=row["exit_code"],
            reason=row["reason"],
            trigger=json.loads(row["trigger"]),
            created_at=row["created_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            runner=row["runner"],
            cancel_requested=bool(row["cancel_requested"]),
        )


@dataclass(frozen=True)
class EnvEntry:
    name: str
    value: str
    is_secret: bool


@dataclass(frozen=True)
class OutboxItem:
    id: int
    job_id: int
    state: str
    context: str
    description: str
    target_url: str
    attempts: int
    next_attempt_at: float
