"""1,000 signed deliveries for 50 repositories, 50 at a time, against one server.

A real server process with real SQLite and 50 real bare remotes. Every
delivery must be recorded exactly once, every push to a tracked branch must
make exactly one job, redeliveries must change nothing, and the server must
stay healthy.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.fakes.github import FakeGitHub
from tests.fuzz_support import (
    Answer,
    Api,
    add_remote,
    integrity_check,
    query,
    server_env,
)
from tests.servers import ServerProcess
from tests.support import OWNER, USER, git, push_payload

pytestmark = pytest.mark.integrational

REPOSITORIES = 50
PER_REPOSITORY = 20  # 50 x 20 = 1,000 deliveries
CONCURRENCY = 50
MAKEFILE = "test:\n\t@echo ok\n"
# Per repository: pushes to the tracked branch (all of one commit: queued
# test jobs supersede each other), pushes elsewhere, pings, other events.
MIX = ["main"] * 12 + ["other"] * 5 + ["ping"] * 2 + ["issues"]
assert len(MIX) == PER_REPOSITORY


@dataclass(frozen=True)
class Delivery:
    repository: str
    webhook: dict[str, str]
    kind: str
    sha: str
    delivery_id: str

    @property
    def event(self) -> str:
        return self.kind if self.kind in ("ping", "issues") else "push"

    def payload(self) -> dict[str, Any]:
        branch = "other" if self.kind == "other" else "main"
        return {
            **push_payload(self.sha, branch),
            "repository": {"full_name": self.repository},
        }


@dataclass
class Fleet:
    server: ServerProcess
    api: Api
    deliveries: list[Delivery]


@pytest.fixture
def server(tmp_path: Path, github: FakeGitHub) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path / "var", server_env(tmp_path, github)).start()
    yield server
    server.stop()


@pytest.fixture
async def fleet(
    tmp_path: Path, github: FakeGitHub, server: ServerProcess
) -> AsyncIterator[Fleet]:
    names = [f"load-{index:02d}" for index in range(REPOSITORIES)]
    remotes = [
        add_remote(
            tmp_path,
            github,
            OWNER,
            name,
            makefile=MAKEFILE,
            permissions={USER: "ADMIN"},
        )
        for name in names
    ]
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=60)
    ) as session:
        api = Api(session, server.url)
        limit = asyncio.Semaphore(10)

        async def register(name: str) -> dict[str, str]:
            async with limit:
                webhook: dict[str, str] = (await api.register(OWNER, name))["webhook"]
                return webhook

        webhooks = await asyncio.gather(*(register(name) for name in names))
        await wait_until_idle(server.data_dir, timeout=60)
        clones = query(server.data_dir, "SELECT status, count(*) FROM jobs GROUP BY 1")
        assert clones == [("success", REPOSITORIES)], clones

        rng = random.Random(20261122)
        heads = [git("rev-parse", "HEAD", cwd=remote.work) for remote in remotes]
        deliveries = [
            Delivery(
                f"{OWNER}/{name}",
                webhook,
                kind,
                head,
                str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            )
            for name, webhook, head in zip(names, webhooks, heads, strict=True)
            for kind in MIX
        ]
        rng.shuffle(deliveries)
        yield Fleet(server, api, deliveries)


async def wait_until_idle(data_dir: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while query(
        data_dir, "SELECT count(*) FROM jobs WHERE status IN ('queued', 'running')"
    ) != [(0,)]:
        assert time.monotonic() < deadline, "jobs still queued or running"
        await asyncio.sleep(0.2)


async def send_all(api: Api, deliveries: list[Delivery]) -> list[Answer]:
    limit = asyncio.Semaphore(CONCURRENCY)

    async def send(delivery: Delivery) -> Answer:
        async with limit:
            return await api.post_webhook(
                delivery.webhook,
                delivery.payload(),
                event=delivery.event,
                delivery=delivery.delivery_id,
            )

    return await asyncio.gather(*(send(delivery) for delivery in deliveries))


def check_answer(delivery: Delivery, answer: Answer) -> None:
    if delivery.kind == "main":
        assert answer.status == 202 and answer.body["kind"] == "test", answer
        assert answer.body["sha"] == delivery.sha, answer
    elif delivery.kind == "ping":
        assert answer.status == 200, answer
    else:
        assert (answer.status, answer.body) == (202, {"detail": "ignored"}), answer


def snapshot(data_dir: Path) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    deliveries = query(
        data_dir,
        "SELECT repository_id, delivery_id, event, result, job_id FROM deliveries"
        " ORDER BY repository_id, delivery_id",
    )
    jobs = query(
        data_dir, "SELECT id, repository_id, number, kind FROM jobs ORDER BY id"
    )
    return deliveries, jobs


async def test_1000_concurrent_deliveries_are_each_recorded_once(fleet: Fleet) -> None:
    data_dir = fleet.server.data_dir
    started = time.monotonic()
    answers = await send_all(fleet.api, fleet.deliveries)
    elapsed = time.monotonic() - started
    rate = len(answers) / elapsed
    print(f"\n{len(answers)} deliveries in {elapsed:.2f} s: {rate:.0f} deliveries/s")
    for delivery, answer in zip(fleet.deliveries, answers, strict=True):
        check_answer(delivery, answer)

    pushes = [d for d in fleet.deliveries if d.kind == "main"]
    deliveries, jobs = snapshot(data_dir)
    assert len(deliveries) == len(fleet.deliveries)
    assert len({(row[0], row[1]) for row in deliveries}) == len(fleet.deliveries)
    assert {row[1] for row in deliveries} == {d.delivery_id for d in fleet.deliveries}
    job_ids = [row[4] for row in deliveries if row[4] is not None]
    assert len(job_ids) == len(set(job_ids)) == len(pushes)  # one job per push
    test_jobs = [job for job in jobs if job[3] == "test"]
    assert len(test_jobs) == len(pushes)
    assert set(job_ids) == {job[0] for job in test_jobs}
    # The job each push answered with is the one its delivery points to.
    recorded = dict(
        query(
            data_dir,
            "SELECT d.delivery_id, r.name || '#' || j.number FROM deliveries d"
            " JOIN jobs j ON j.id = d.job_id"
            " JOIN repositories r ON r.id = d.repository_id",
        )
    )
    for delivery, answer in zip(fleet.deliveries, answers, strict=True):
        if delivery.kind == "main":
            name = delivery.repository.split("/")[1]
            assert recorded[delivery.delivery_id] == f"{name}#{answer.body['number']}"
    events = Counter((row[2], row[3]) for row in deliveries)
    assert events == {
        ("push", "queued"): len(pushes),
        ("push", "ignored"): 5 * REPOSITORIES,
        ("ping", "pong"): 2 * REPOSITORIES,
        ("issues", "ignored"): REPOSITORIES,
    }, events

    # Redeliveries, some of them at once: the same answers, nothing new.
    first = dict(zip((d.delivery_id for d in fleet.deliveries), answers, strict=True))
    again = random.Random(7).sample(fleet.deliveries, 100)
    again += again[:20]
    for delivery, answer in zip(again, await send_all(fleet.api, again), strict=True):
        before = first[delivery.delivery_id]
        assert answer.status == before.status, (delivery, answer, before)
        if delivery.kind == "main":
            assert answer.body["number"] == before.body["number"], (answer, before)
        else:
            assert answer.body == before.body
    assert snapshot(data_dir) == (deliveries, jobs)

    # Every job ends; of each repository's pushes the last one is tested.
    await wait_until_idle(data_dir, timeout=90)
    outcomes = Counter(
        status
        for (status,) in query(data_dir, "SELECT status FROM jobs WHERE kind = 'test'")
    )
    assert set(outcomes) <= {"success", "superseded"}, outcomes
    last = query(
        data_dir,
        "SELECT j.status FROM jobs j WHERE j.kind = 'test' AND j.number ="
        " (SELECT max(number) FROM jobs WHERE repository_id = j.repository_id)",
    )
    assert last == [("success",)] * REPOSITORIES, last
    print(f"test jobs: {dict(outcomes)}")

    assert (await fleet.api.call("GET", "/api/health")).status == 200
    assert integrity_check(data_dir) == ["ok"]
