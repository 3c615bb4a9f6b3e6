"""Notice when a stored token lost access, and revoke the repository then."""

from __future__ import annotations

import asyncio
import logging
import shutil

from api.background import stop_task
from api.crypto import SecretBox
from api.github import (
    GitHubClient,
    GitHubError,
    InvalidCredentials,
    RepositoryNotFound,
)
from api.jobs.events import EventType, JobEvent
from api.jobs.runner import JobRunner, clone_dir
from api.settings import Settings
from api.storage import Storage
from api.storage.records import RepositoryRecord, RepositoryStatus

logger = logging.getLogger(__name__)


class AccessChecker:
    """Re-checks every stored token periodically and after git auth failures."""

    def __init__(
        self,
        settings: Settings,
        storage: Storage,
        box: SecretBox,
        github: GitHubClient,
        runner: JobRunner,
    ) -> None:
        self.settings = settings
        self.storage = storage
        self.box = box
        self.github = github
        self.runner = runner
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._periodic(), name="access-checks")

    async def close(self) -> None:
        await stop_task(self._task)
        self._task = None

    async def on_event(self, event: JobEvent) -> None:
        if event.type is EventType.GIT_AUTH_FAILED:
            repository = await self.storage.repositories.get_by_id(event.repository.id)
            if repository is not None:
                await self.check(repository)

    async def _periodic(self) -> None:
        while True:
            await asyncio.sleep(self.settings.access_check_interval)
            try:
                await self.check_all()
            except Exception:
                logger.exception("Access check round failed")

    async def check_all(self) -> int:
        """Check every repository; returns how many were revoked."""
        revoked = 0
        for repository in await self.storage.repositories.list_all():
            if repository.status is not RepositoryStatus.REVOKED:
                revoked += await self.check(repository)
        return revoked

    async def check(self, repository: RepositoryRecord) -> bool:
        """Ask GitHub afresh; revoke when the token can no longer read it."""
        token = self.box.decrypt(repository.token_encrypted)
        self.github.forget_token(token)
        try:
            access = await self.github.repository_access(
                token, repository.owner, repository.name
            )
        except (RepositoryNotFound, InvalidCredentials) as err:
            reason = (
                "the stored token was rejected by GitHub"
                if isinstance(err, InvalidCredentials)
                else "the repository is no longer visible to the stored token"
            )
        except GitHubError as err:
            logger.warning(
                "Cannot check access to %s now: %s",
                repository.full_name,
                type(err).__name__,
            )
            return False
        else:
            if not repository.is_github_repository(access.node_id):
                reason = "another repository on GitHub has its name now"
            elif access.permission is not None and access.permission.can_read:
                async with self.storage.db.transaction() as conn:
                    await self.storage.repositories.mark_access_checked(
                        conn, repository.id, access.node_id
                    )
                return False
            else:
                reason = "the stored token has no access to the repository"
        await self.revoke(repository, reason)
        return True

    async def revoke(self, repository: RepositoryRecord, reason: str) -> None:
        logger.warning("Revoking %s: %s", repository.full_name, reason)
        async with self.storage.db.transaction() as conn:
            await self.storage.repositories.set_status(
                conn, repository.id, RepositoryStatus.REVOKED, reason
            )
        async with self.runner.removing(repository):
            await asyncio.to_thread(
                shutil.rmtree, clone_dir(self.settings, repository.id), True
            )
