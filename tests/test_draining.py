"""Jobs between instances: a draining runner's starts under way go back to
the queue, cancels that another instance records still stop its running
jobs, and an instance that cannot run jobs leaves them to one that can."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from pytest_aiohttp import AiohttpClient

from api.app import create_app
from api.jobs.instances import InstanceLock
from api.keys import RUNNER, STORAGE
from api.settings import Settings
from api.storage.records import JobRecord, JobStatus
from tests.support import (
    Client,
    GitRemote,
    auth_headers,
    only_git_on_path,
    push_payload,
    register,
    wait_for_job,
    webhook_headers,
)

pytestmark = pytest.mark.integrational

REPO = "/api/repositories/octocat/hello"


def slow_job_layers(client: Client, entered: asyncio.Event, seconds: float) -> None:
    """Stretch a start's database read (claimed, not started yet) so that a
    drain begins inside it; the logic is unchanged."""
    storage = client.app[STORAGE]
    original = storage.env.job_layers

    async def slow(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        await asyncio.sleep(seconds)
        return await original(*args, **kwargs)

    storage.env.job_layers = slow  # type: ignore[method-assign]


async def job_of(client: Client, number: int) -> JobRecord:
    storage = client.app[STORAGE]
    repository = await storage.repositories.get("octocat", "hello")
    assert repository is not None
    job = await storage.jobs.get(repository.id, number)
    assert job is not None
    return job


async def test_a_job_claimed_as_the_drain_begins_goes_back_to_the_queue(
    client: Client,
    remote: GitRemote,
    aiohttp_client: AiohttpClient,
    settings: Settings,
) -> None:
    await register(client)
    entered = asyncio.Event()
    slow_job_layers(client, entered, 0.3)
    response = await client.post(f"{REPO}/deploys", json={}, headers=auth_headers())
    assert response.status == 202
    number = (await response.json())["number"]
    await asyncio.wait_for(entered.wait(), 5)

    await client.app[RUNNER].drain(10)
    handed_back = await job_of(client, number)
    assert (handed_back.status, handed_back.runner) == (JobStatus.QUEUED, None)
    assert handed_back.started_at is None

    successor = await aiohttp_client(create_app(settings))
    done = await wait_for_job(successor, number)
    assert done["status"] == "success", done


async def test_a_push_claimed_in_its_transaction_as_the_drain_begins_stays_queued(
    client: Client, remote: GitRemote
) -> None:
    webhook = (await register(client))["webhook"]
    entered = asyncio.Event()
    slow_job_layers(client, entered, 1.0)  # longer than the drain takes alone
    body = json.dumps(push_payload(remote.commit({"NEWS": "x\n"}))).encode()
    path = "/api/" + webhook["url"].split("/api/", 1)[1]
    push = asyncio.create_task(
        client.post(path, data=body, headers=webhook_headers(body, webhook["secret"]))
    )
    await asyncio.wait_for(entered.wait(), 5)

    runner = client.app[RUNNER]
    await runner.drain(10)
    assert runner.running == {}
    response = await push
    assert response.status == 202
    job = await job_of(client, (await response.json())["number"])
    assert (job.status, job.runner) == (JobStatus.QUEUED, None)


async def test_a_cancel_recorded_by_another_instance_stops_a_draining_job(
    client: Client, remote: GitRemote
) -> None:
    """After a switch the cancel reaches the new instance, which can only
    record it; the old one, draining, stops the job."""
    remote.commit({"Makefile": "deploy:\n\t@echo started\n\tsleep 30\n"})
    await register(client)
    response = await client.post(f"{REPO}/deploys", json={}, headers=auth_headers())
    number = (await response.json())["number"]
    runner = client.app[RUNNER]
    for _ in range(200):
        if any(r.plan.job.number == number for r in runner.running.values()):
            break
        await asyncio.sleep(0.05)
    job = await job_of(client, number)
    drain = asyncio.create_task(runner.drain(30))
    await asyncio.sleep(0.2)
    storage = client.app[STORAGE]
    async with storage.db.transaction() as conn:
        assert await storage.jobs.request_cancel(conn, job.id) is not None
    started = time.monotonic()
    await asyncio.wait_for(drain, 10)
    assert time.monotonic() - started < 5
    assert (await job_of(client, number)).status is JobStatus.CANCELLED


async def test_without_make_an_instance_leaves_jobs_to_another_one(
    client: Client, remote: GitRemote, settings: Settings, tmp_path: Path
) -> None:
    """An upgrade's new instance that its health check turns down (no make
    on its PATH) takes no job while the old one is alive; alone, it takes
    them, and they fail with the reason."""
    await register(client)
    client.app[RUNNER].host_env["PATH"] = only_git_on_path(tmp_path)
    other = InstanceLock(settings.instances_dir, "other-instance")
    other.acquire()
    try:
        response = await client.post(f"{REPO}/deploys", json={}, headers=auth_headers())
        number = (await response.json())["number"]
        await asyncio.sleep(2.5)  # two rounds of the runner's loop
        assert (await job_of(client, number)).status is JobStatus.QUEUED
    finally:
        other.release()
    client.app[RUNNER].wake()
    done = await wait_for_job(client, number)
    assert (done["status"], done["reason"]) == ("error", "cannot run make: not found")
