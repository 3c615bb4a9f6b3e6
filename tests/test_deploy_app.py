"""Blue-green switch of the real app: nginx, two `hobotnica serve`, real jobs.

Two instances share one data dir behind nginx (the real site config). A test
job runs on the old instance while clients keep reading through nginx; the
switch moves traffic to the new instance, the job still finishes `success`
on the old one, which then exits, and the next push runs on the new one.

Which process ran a job is read from the job's own log: its Makefile prints
the pid of make's parent, which is the Hobotnica instance.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.deploy_helpers import rig
from tests.fakes.github import FakeGitHub
from tests.support import (
    FINISHED,
    OWNER,
    REPO,
    GitRemote,
    auth_headers,
    clone_url_template,
    push_payload,
    webhook_headers,
)

pytestmark = pytest.mark.integrational

JOB_SECONDS = 3
# `make test` sleeps, then names the process that ran make (the instance).
SLOW_MAKEFILE = (
    "test:\n"
    f"\t@sleep {JOB_SECONDS}\n"
    '\t@read -r _ _ _ server _ < /proc/$$PPID/stat; echo "ran-by=$$server"\n'
)
REPOSITORY = f"/api/repositories/{OWNER}/{REPO}"


@pytest.fixture(scope="module")
def nginx_binary() -> str:
    binary, reason = rig.ensure_nginx()
    if binary is None:
        pytest.skip(f"nginx is not available: {reason}")
    return binary


@pytest.fixture
async def deployment(
    nginx_binary: str, tmp_path: Path, github: FakeGitHub, remote: GitRemote
) -> AsyncIterator[rig.Deployment]:
    hobotnica = Path(sys.executable).with_name("hobotnica")
    serve = [str(hobotnica), "serve", "--host", "127.0.0.1", "--port", "{port}"]
    deployment = rig.Deployment.create(
        tmp_path / "deploy",
        nginx_binary,
        serve,
        {
            "HOBOTNICA_DATA_DIR": str(tmp_path / "var"),
            "HOBOTNICA_SECRET_KEY": "test-secret-key",
            "HOBOTNICA_GITHUB_API_URL": github.url,
            "HOBOTNICA_GITHUB_CLONE_URL": clone_url_template(tmp_path),
            "HOBOTNICA_SHUTDOWN_TIMEOUT": "30",
            "HOBOTNICA_KILL_GRACE": "1",
            "HOBOTNICA_LOG_LEVEL": "INFO",
        },
    )
    deployment.env["HOBOTNICA_PUBLIC_URL"] = deployment.nginx.url
    try:
        deployment.instance("start", deployment.active)
        healthy = await asyncio.to_thread(rig.wait_port, deployment.active, 20)
        assert healthy, deployment.log(deployment.active)
        deployment.nginx.start()
        yield deployment
    finally:
        deployment.close()


class Api:
    """Hobotnica through nginx, as the writer of octocat/hello."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self.session = session
        self.base_url = base_url

    async def request(self, method: str, path: str, expect: int, **kwargs: Any) -> Any:
        kwargs.setdefault("headers", auth_headers())
        async with self.session.request(
            method, self.base_url + path, **kwargs
        ) as response:
            text = await response.text()
            assert response.status == expect, f"{method} {path}: {text}"
            return json.loads(text) if "json" in response.content_type else text

    async def push(self, webhook: dict[str, str], sha: str) -> dict[str, Any]:
        body = json.dumps(push_payload(sha)).encode()
        path = "/api/" + webhook["url"].split("/api/", 1)[1]
        job: dict[str, Any] = await self.request(
            "POST",
            path,
            202,
            data=body,
            headers=webhook_headers(body, webhook["secret"]),
        )
        return job

    async def wait_job(
        self, number: int, statuses: set[str] | frozenset[str], timeout: float = 30
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job: dict[str, Any] = await self.request(
                "GET", f"{REPOSITORY}/jobs/{number}", 200
            )
            if job["status"] in statuses:
                return job
            assert time.monotonic() < deadline, f"job {number}: {job}"
            await asyncio.sleep(0.1)

    async def ran_by(self, number: int) -> int:
        log: str = await self.request("GET", f"{REPOSITORY}/jobs/{number}/log", 200)
        lines = [line for line in log.splitlines() if line.startswith("ran-by=")]
        assert len(lines) == 1, log
        return int(lines[0].removeprefix("ran-by="))


async def test_switch_keeps_requests_and_running_jobs(
    deployment: rig.Deployment, remote: GitRemote
) -> None:
    old, new = deployment.active, deployment.idle
    old_pid = deployment.pid(old)
    timeout = aiohttp.ClientTimeout(total=20)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        api = Api(session, deployment.nginx.url)
        registered = await api.request(
            "POST", "/api/repositories", 202, json={"owner": OWNER, "name": REPO}
        )
        webhook = registered["webhook"]
        assert webhook["url"].startswith(deployment.nginx.url + "/api/webhooks/")
        assert (await api.wait_job(1, FINISHED))["status"] == "success"

        sha = await asyncio.to_thread(remote.commit, {"Makefile": SLOW_MAKEFILE})
        job = await api.push(webhook, sha)
        running = await api.wait_job(job["number"], {"running"} | FINISHED)
        assert running["status"] == "running"

        load = rig.Load(
            deployment.nginx.url,
            ["/api/health", REPOSITORY],
            headers=auth_headers(),
        )
        load.start()
        try:
            await asyncio.sleep(0.3)
            switched = await rig.run_switch(deployment.env)
            assert switched.returncode == 0, switched.stdout + switched.stderr
            # The old instance drains: alive, its job still running.
            assert rig.alive(old_pid)
            job_now = await api.request(
                "GET", f"{REPOSITORY}/jobs/{job['number']}", 200
            )
            assert job_now["status"] == "running"

            # A push now is taken by the new instance and waits for the
            # repository's running job (one job per repository at a time).
            next_sha = await asyncio.to_thread(
                remote.commit, {"NEWS": "after the switch\n"}
            )
            next_job = await api.push(webhook, next_sha)

            finished = await api.wait_job(job["number"], FINISHED)
            assert finished["status"] == "success", finished
            assert await asyncio.to_thread(rig.wait_exit, old_pid, 15), deployment.log(
                old
            )
            after = await api.wait_job(next_job["number"], FINISHED)
            assert after["status"] == "success", after
        finally:
            await load.stop()

        new_pid = deployment.pid(new)
        assert await api.ran_by(job["number"]) == old_pid
        assert await api.ran_by(next_job["number"]) == new_pid

    print(
        f"switch {old}->{new} in {switched.seconds:.2f} s; requests through nginx "
        f"during switch and drain: {load.total}, outcomes: {dict(load.outcomes)}"
    )
    assert load.failures == []
    assert load.outcomes.keys() == {"200"}
    assert load.total > 50


async def test_new_instance_with_bad_settings_rolls_back(
    deployment: rig.Deployment,
) -> None:
    hobotnica = Path(sys.executable).with_name("hobotnica")
    deployment.env[f"DEPLOY_TEST_SERVE_CMD_{deployment.idle}"] = (
        f"env HOBOTNICA_PORT=not-a-port {hobotnica} serve --port {{port}}"
    )
    deployment.env["HOBOTNICA_HEALTH_TIMEOUT"] = "3"
    before = deployment.upstream.read_bytes()
    switched, load = await rig.switch_under_health_load(
        deployment.env, deployment.nginx.url
    )

    assert switched.returncode == 1, switched.stdout + switched.stderr
    assert "was not healthy within 3 s" in switched.stderr
    assert "HOBOTNICA_PORT='not-a-port' is invalid" in deployment.log(deployment.idle)
    assert deployment.upstream.read_bytes() == before
    assert load.failures == []
    assert load.total > 0
    # Every request went to the old instance (nginx logs the upstream).
    access = deployment.nginx.access_log.read_text().splitlines()
    assert access
    assert all(f"upstream=127.0.0.1:{deployment.active} " in line for line in access)
    assert rig.alive(deployment.pid(deployment.active))
