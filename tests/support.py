"""Helpers shared by the tests: real git remotes, signed webhooks, waiting."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from api.keys import STORAGE
from api.storage.records import RepositoryStatus
from tests.fakes.github import FakeGitHub

Client = TestClient[web.Request, web.Application]

USER = "octocat"
TOKEN = "ghp_" + "T0k3nValue" * 3 + "abcdef"
READER = "reader"
READER_TOKEN = "ghp_" + "R3ad3rToken" * 3 + "xyz"
OWNER = "octocat"
REPO = "hello"

GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
}

PASSING_MAKEFILE = (
    "test:\n\t@echo testing $(GIT_BRANCH)\n\ndeploy:\n\t@echo deploying\n"
)


def git(*args: str, cwd: Path | None = None) -> str:
    env = {**os.environ, **GIT_ENV}
    result = subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    )
    return result.stdout.strip()


class GitRemote:
    """A bare repository served over ``file://`` plus a work tree to push from."""

    def __init__(self, root: Path, owner: str, name: str, branch: str = "main") -> None:
        self.bare = root / "remotes" / owner / f"{name}.git"
        self.work = root / "work" / owner / name
        self.branch = branch
        self.bare.parent.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        git("init", "--bare", "-q", "-b", branch, str(self.bare))
        git("init", "-q", "-b", branch, str(self.work))
        git("remote", "add", "origin", str(self.bare), cwd=self.work)

    def commit(
        self,
        files: Mapping[str, str],
        message: str = "change",
        branch: str | None = None,
    ) -> str:
        branch = branch or self.branch
        current = git("symbolic-ref", "--short", "HEAD", cwd=self.work)
        if current != branch:
            exists = git("branch", "--list", branch, cwd=self.work)
            git("checkout", "-q", *(() if exists else ("-b",)), branch, cwd=self.work)
        for path, content in files.items():
            target = self.work / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
        git("add", "-A", cwd=self.work)
        git("commit", "-q", "--allow-empty", "-m", message, cwd=self.work)
        git(
            "push",
            "-q",
            "--force",
            "origin",
            f"HEAD:refs/heads/{branch}",
            cwd=self.work,
        )
        return git("rev-parse", "HEAD", cwd=self.work)


def clone_url_template(root: Path) -> str:
    return f"file://{root}/remotes/{{owner}}/{{name}}.git"


def auth_headers(user: str = USER, token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "X-GitHub-Username": user}


def sign(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def push_payload(sha: str, branch: str = "main", **extra: Any) -> dict[str, Any]:
    return {
        "ref": f"refs/heads/{branch}",
        "before": "0" * 40,
        "after": sha,
        "deleted": False,
        "repository": {"full_name": f"{OWNER}/{REPO}"},
        "sender": {"login": USER},
        **extra,
    }


def webhook_headers(
    body: bytes, secret: str, event: str = "push", delivery: str | None = None
) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "X-Hub-Signature-256": sign(body, secret),
    }


async def send_push(
    client: Client,
    webhook: Mapping[str, str],
    sha: str,
    branch: str = "main",
    delivery: str | None = None,
) -> tuple[int, dict[str, Any]]:
    body = json.dumps(push_payload(sha, branch)).encode()
    path = webhook["url"].split("/api/", 1)[1]
    response = await client.post(
        f"/api/{path}",
        data=body,
        headers=webhook_headers(body, webhook["secret"], delivery=delivery),
    )
    return response.status, await response.json()


FINISHED = {
    "success",
    "failed",
    "error",
    "cancelled",
    "superseded",
    "timed_out",
    "interrupted",
}


async def wait_for_job(
    client: Client,
    number: int,
    *,
    owner: str = OWNER,
    name: str = REPO,
    timeout: float = 30.0,
    statuses: frozenset[str] | set[str] = FINISHED,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        response = await client.get(
            f"/api/repositories/{owner}/{name}/jobs/{number}", headers=auth_headers()
        )
        assert response.status == 200, await response.text()
        job: dict[str, Any] = await response.json()
        if job["status"] in statuses:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(
                f"job #{number} still {job['status']} after {timeout} s"
            )
        await asyncio.sleep(0.05)


async def register(
    client: Client, owner: str = OWNER, name: str = REPO, **body: Any
) -> dict[str, Any]:
    response = await client.post(
        "/api/repositories",
        json={"owner": owner, "name": name, **body},
        headers=auth_headers(),
    )
    assert response.status == 202, await response.text()
    data: dict[str, Any] = await response.json()
    await wait_for_job(client, 1, owner=owner, name=name)
    return data


async def wait_for_statuses(
    github: FakeGitHub,
    sha: str,
    context: str,
    final: str,
    timeout: float = 15.0,
) -> list[dict[str, Any]]:
    """The statuses posted for ``sha`` once the last one is in ``final`` state."""
    deadline = time.monotonic() + timeout
    while True:
        posted = [
            s for s in github.statuses if s["sha"] == sha and s["context"] == context
        ]
        if posted and posted[-1]["state"] == final:
            return posted
        if time.monotonic() > deadline:
            raise AssertionError(f"statuses of {sha} {context}: {posted}")
        await asyncio.sleep(0.02)


async def revoke(client: Client, owner: str = OWNER, name: str = REPO) -> None:
    """Mark a registered repository revoked, as a failed access check does."""
    storage = client.app[STORAGE]
    repository = await storage.repositories.get(owner, name)
    assert repository is not None
    async with storage.db.transaction() as conn:
        await storage.repositories.set_status(
            conn, repository.id, RepositoryStatus.REVOKED, "lost access"
        )


def only_git_on_path(tmp_path: Path) -> str:
    """A PATH with git and nothing else (no make)."""
    tools = tmp_path / "only-git"
    tools.mkdir()
    git_path = shutil.which("git")
    assert git_path is not None
    (tools / "git").symlink_to(git_path)
    return str(tools)
