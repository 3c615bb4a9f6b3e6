"""Fixtures shared by every test: a fake GitHub, real git remotes, the app."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from api.app import create_app
from api.settings import Settings
from tests.fakes.github import FakeGitHub, fake_github
from tests.servers import ServerFactory, ServerProcess
from tests.support import (
    OWNER,
    PASSING_MAKEFILE,
    READER,
    READER_TOKEN,
    REPO,
    TOKEN,
    USER,
    Client,
    GitRemote,
    clone_url_template,
)

__all__ = ["fake_github"]

AiohttpClient = Callable[..., Awaitable[Client]]


@pytest.fixture
def github(fake_github: FakeGitHub) -> FakeGitHub:
    """The fake GitHub with the usual cast: a writer and a reader."""
    fake_github.add_user(USER, token=TOKEN)
    fake_github.add_user(READER, token=READER_TOKEN)
    fake_github.add_repo(OWNER, REPO, permissions={USER: "ADMIN", READER: "READ"})
    return fake_github


@pytest.fixture
def remote(tmp_path: Path) -> GitRemote:
    """``octocat/hello`` as a bare repository with a passing Makefile."""
    repository = GitRemote(tmp_path, OWNER, REPO)
    repository.commit({"Makefile": PASSING_MAKEFILE}, "initial")
    return repository


@pytest.fixture
def settings(tmp_path: Path, github: FakeGitHub) -> Settings:
    return Settings(
        data_dir=tmp_path / "var",
        secret_key="test-secret-key",
        public_url="http://hobotnica.test",
        github_api_url=github.url,
        github_clone_url=clone_url_template(tmp_path),
        kill_grace=1.0,
        shutdown_timeout=10.0,
    )


@pytest.fixture
async def client(
    aiohttp_client: AiohttpClient, settings: Settings
) -> AsyncIterator[Client]:
    yield await aiohttp_client(create_app(settings=settings))


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session for servers running as processes."""
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=30)
    ) as session:
        yield session


@pytest.fixture
def servers(tmp_path: Path, github: FakeGitHub) -> Iterator[ServerFactory]:
    """Start ``python -m api serve`` processes on one data dir (by default),
    against the fake GitHub; each is killed at the end of the test."""
    started: list[ServerProcess] = []

    def start(data_dir: Path | None = None, **env: str) -> ServerProcess:
        process = ServerProcess(
            data_dir or tmp_path / "var",
            {
                "HOBOTNICA_GITHUB_API_URL": github.url,
                "HOBOTNICA_GITHUB_CLONE_URL": clone_url_template(tmp_path),
                "HOBOTNICA_KILL_GRACE": "1",
                "HOBOTNICA_SHUTDOWN_TIMEOUT": "30",
                **env,
            },
        )
        started.append(process)
        return process.start()

    yield start
    for process in started:
        process.stop()
