"""SQLite storage: migrations, concurrent starts, atomic claims, keys."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from api.crypto import SecretBox, load_or_create_key
from api.storage import Storage
from api.storage import db as db_module
from api.storage.db import migration_scripts
from api.storage.records import JobKind, JobStatus

ROOT = Path(__file__).parent.parent

MIGRATIONS = [version for version, _, _ in migration_scripts()]


async def add_repository(storage: Storage, name: str) -> int:
    async with storage.db.transaction() as conn:
        repository = await storage.repositories.create(
            conn,
            owner="octocat",
            name=name,
            branch="main",
            private=False,
            registered_by="octocat",
            token_encrypted="x",
            webhook_uid=f"uid-{name}",
            webhook_secret_encrypted="y",
        )
    return repository.id


async def test_a_second_start_keeps_the_data(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    first = Storage(path)
    await first.open()
    repository_id = await add_repository(first, "hello")
    await first.close()
    second = Storage(path)
    await second.open()
    again = await second.repositories.get("OCTOCAT", "HELLO")
    assert again is not None
    assert again.id == repository_id
    versions = await second.db.fetch_all("SELECT version FROM schema_migrations")
    assert [row[0] for row in versions] == MIGRATIONS
    assert await second.db.fetch_value("PRAGMA journal_mode") == "wal"
    await second.close()


@pytest.mark.parametrize("yields", [0, 1, 2, 3, 4, 6, 8])
async def test_a_cancelled_transaction_never_leaves_the_connection_in_one(
    tmp_path: Path, yields: int
) -> None:
    """Cancelled at any point (BEGIN, the statement, COMMIT): afterwards the
    shared connection is outside any transaction and later writes stick."""
    path = tmp_path / "db.sqlite3"
    storage = Storage(path)
    await storage.open()
    repository_id = await add_repository(storage, "hello")

    async def rename() -> None:
        async with storage.db.transaction() as conn:
            await conn.execute(
                "UPDATE repositories SET branch = 'renamed' WHERE id = ?",
                (repository_id,),
            )

    task = asyncio.create_task(rename())
    for _ in range(yields):
        await asyncio.sleep(0)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert not storage.db.connection.in_transaction
    await storage.db.execute_write(
        "UPDATE repositories SET private = 1 WHERE id = ?", (repository_id,)
    )
    await storage.close()

    reopened = Storage(path)
    await reopened.open()
    row = await reopened.db.fetch_one(
        "SELECT branch, private FROM repositories WHERE id = ?", (repository_id,)
    )
    await reopened.close()
    assert row is not None
    assert row["private"] == 1
    assert row["branch"] in {"main", "renamed"}


def test_processes_starting_at_once_all_come_up(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    script = (
        "import asyncio, sys\n"
        "from api.storage import Storage\n"
        "async def main():\n"
        "    s = Storage(__import__('pathlib').Path(sys.argv[1]))\n"
        "    await s.open()\n"
        "    print(await s.db.fetch_value('SELECT count(*) FROM schema_migrations'))\n"
        "    await s.close()\n"
        "asyncio.run(main())\n"
    )
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(path)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(4)
    ]
    outputs = [process.communicate(timeout=60) for process in processes]
    assert [process.returncode for process in processes] == [0] * 4, outputs
    assert [out.strip() for out, _ in outputs] == [str(len(MIGRATIONS)).encode()] * 4


async def test_claims_from_two_connections_never_overlap(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    blue, green = Storage(path), Storage(path)
    await blue.open()
    await green.open()
    repositories = [await add_repository(blue, f"r{i}") for i in range(3)]
    queued = []
    for i in range(12):
        async with blue.db.transaction() as conn:
            job, _ = await blue.jobs.enqueue(
                conn,
                repository_id=repositories[i % 3],
                kind=JobKind.DEPLOY,
                ref="main",
                sha=None,
                trigger={"type": "api"},
            )
        queued.append(job.id)

    claimed: list[tuple[str, int]] = []

    async def worker(storage: Storage, name: str) -> None:
        while True:
            job = await storage.jobs.claim(name)
            if job is None:
                running = await storage.jobs.running()
                if not running and not await storage.jobs.has_claimable():
                    return
                await asyncio.sleep(0.001)
                continue
            # While it runs, no other job of its repository may be claimed.
            others = [
                j
                for j in await storage.jobs.running()
                if j.repository_id == job.repository_id and j.id != job.id
            ]
            assert others == []
            claimed.append((name, job.id))
            await asyncio.sleep(0.002)
            async with storage.db.transaction() as conn:
                await storage.jobs.finish(conn, job.id, JobStatus.SUCCESS, exit_code=0)

    await asyncio.gather(worker(blue, "blue"), worker(green, "green"))
    assert sorted(job_id for _, job_id in claimed) == sorted(queued)
    await blue.close()
    await green.close()


def test_generated_key_is_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "secret.key"
    key = load_or_create_key(None, path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_or_create_key(None, path) == key
    box = SecretBox(key)
    token = box.encrypt("ghp_value")
    assert "ghp_value" not in token
    assert box.decrypt(token) == "ghp_value"
    assert load_or_create_key("passphrase", path) != key


@pytest.mark.integrational
def test_the_built_wheel_ships_the_schema_and_migrations(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        env={**os.environ, "PIP_NO_INPUT": "1"},
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("hobotnica-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert "api/openapi.yaml" in names
        assert archive.read("api/openapi.yaml") == (ROOT / "openapi.yaml").read_bytes()
        for migration in (ROOT / "api" / "storage" / "migrations").glob("*.sql"):
            assert f"api/storage/migrations/{migration.name}" in names
        assert any(name.endswith("entry_points.txt") for name in names)


async def test_reads_on_the_loop_see_commits_and_never_wait_for_a_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``fetch_one_now`` reads without aiosqlite's thread; a read that would
    have to wait for a lock goes to the thread instead (which may wait)."""
    storage = Storage(tmp_path / "db.sqlite3")
    await storage.open()
    through_thread: list[str] = []
    fetch_one = storage.db.fetch_one

    async def recording(sql: str, params: Sequence[object] = ()) -> object:
        through_thread.append(sql)
        return await fetch_one(sql, params)

    monkeypatch.setattr(storage.db, "fetch_one", recording)
    assert await storage.repositories.get_by_webhook_uid("uid-hello") is None
    repository_id = await add_repository(storage, "hello")
    found = await storage.repositories.get_by_webhook_uid("uid-hello")
    assert found is not None and found.id == repository_id
    assert through_thread == []

    class LockedReader:
        def __init__(self, code: int) -> None:
            self.code = code

        def execute(self, sql: str, params: object) -> None:
            error = sqlite3.OperationalError("database is locked")
            error.sqlite_errorcode = self.code
            raise error

    monkeypatch.setattr(storage.db, "_reader", LockedReader(sqlite3.SQLITE_BUSY))
    found = await storage.repositories.get_by_webhook_uid("uid-hello")
    assert found is not None and found.id == repository_id
    assert len(through_thread) == 1
    # Any other error is an error.
    monkeypatch.setattr(storage.db, "_reader", LockedReader(sqlite3.SQLITE_IOERR))
    with pytest.raises(sqlite3.OperationalError):
        await storage.repositories.get_by_webhook_uid("uid-hello")
    monkeypatch.undo()
    await storage.close()


async def record_delivery(storage: Storage, repository_id: int, delivery: str) -> bool:
    return await storage.deliveries.record_once(
        repository_id=repository_id, delivery_id=delivery, event="ping", result="pong"
    )


def record_thread_statements(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> list[str]:
    """The statements sent to aiosqlite's thread from now on."""
    statements: list[str] = []
    connection = storage.db.connection
    execute = connection.execute

    def recording(sql: str, *args: Any) -> Any:
        statements.append(sql)
        return execute(sql, *args)

    monkeypatch.setattr(connection, "execute", recording)
    return statements


async def test_writes_on_the_loop_queue_behind_another_process_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delivery is recorded on the event loop; while another process holds
    SQLite's write lock, the write waits on aiosqlite's thread instead of
    failing, and the loop keeps running meanwhile."""
    path = tmp_path / "db.sqlite3"
    storage = Storage(path)
    await storage.open()
    repository_id = await add_repository(storage, "hello")
    through_thread = record_thread_statements(storage, monkeypatch)
    assert await record_delivery(storage, repository_id, "first")
    assert not await record_delivery(storage, repository_id, "first")
    assert through_thread == []

    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    loop = asyncio.get_running_loop()
    loop.call_later(0.3, other.execute, "COMMIT")
    started = loop.time()
    assert await record_delivery(storage, repository_id, "second")
    assert loop.time() - started >= 0.25  # it waited for the commit above
    assert len(through_thread) == 1
    other.close()
    assert await storage.deliveries.count(repository_id) == 2
    await storage.close()


async def test_every_so_many_loop_writes_one_checkpoints_on_the_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db_module, "LOOP_WRITES_PER_CHECKPOINT", 5)
    storage = Storage(tmp_path / "db.sqlite3")
    await storage.open()
    repository_id = await add_repository(storage, "hello")
    through_thread = record_thread_statements(storage, monkeypatch)
    for number in range(12):
        await record_delivery(storage, repository_id, f"delivery-{number}")
    checkpoint = "PRAGMA wal_checkpoint(RESTART)"
    assert [sql.split()[0] for sql in through_thread] == [*["PRAGMA", "INSERT"] * 2]
    assert through_thread[0] == checkpoint
    assert await storage.deliveries.count(repository_id) == 12

    # Writes that come while it runs wait for it, then go on the loop.
    for number in range(5):  # the next write checkpoints
        await record_delivery(storage, repository_id, f"before-{number}")
    through_thread.clear()
    await asyncio.gather(
        *(record_delivery(storage, repository_id, f"during-{n}") for n in range(6))
    )
    assert through_thread == [checkpoint, through_thread[1]]
    assert through_thread[1].startswith("INSERT")
    assert await storage.deliveries.count(repository_id) == 23
    await storage.close()


SYNCING_SCRIPT = """
import asyncio, os, sys
from pathlib import Path
from api.storage import Storage

async def main():
    storage = Storage(Path(sys.argv[1]))
    await storage.open()
    async with storage.db.transaction() as conn:
        repository = await storage.repositories.create(
            conn, owner="octocat", name="hello", branch="main", private=False,
            registered_by="octocat", token_encrypted="x", webhook_uid="uid",
            webhook_secret_encrypted="y",
        )
    print(os.getpid(), flush=True)
    for number in range(int(sys.argv[2])):
        await storage.deliveries.record_once(
            repository_id=repository.id, delivery_id=f"d{number}",
            event="push", result="ignored",
        )
    await storage.close()

asyncio.run(main())
"""


def test_writes_on_the_loop_never_sync_the_disk_there(tmp_path: Path) -> None:
    """fsync and fdatasync (checkpoints, the WAL header after a restart) happen
    on aiosqlite's thread, never on the event loop's: a slow disk must not
    freeze the server. Traced with strace, per thread."""
    trace = tmp_path / "trace"
    result = subprocess.run(
        [
            "strace",
            "-f",
            "-qq",
            "--seccomp-bpf",
            "-e",
            "trace=fsync,fdatasync",
            "-o",
            str(trace),
            sys.executable,
            "-c",
            SYNCING_SCRIPT,
            str(tmp_path / "db.sqlite3"),
            "3000",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    main_thread = result.stdout.split()[0]
    # Lines after the first of the loop's writes: "TID fdatasync(7) = 0".
    syncs = [line.split()[0] for line in trace.read_text().splitlines()]
    assert len(syncs) >= 10  # 3,000 writes: several checkpoints
    assert main_thread not in syncs


async def test_writes_on_the_loop_wait_for_an_open_transaction(
    tmp_path: Path,
) -> None:
    storage = Storage(tmp_path / "db.sqlite3")
    await storage.open()
    repository_id = await add_repository(storage, "hello")
    async with storage.db.transaction() as conn:
        await conn.execute(
            "UPDATE repositories SET branch = 'next' WHERE id = ?", (repository_id,)
        )
        write = asyncio.create_task(record_delivery(storage, repository_id, "one"))
        await asyncio.sleep(0.05)
        assert not write.done()
    assert await write
    assert await storage.deliveries.count(repository_id) == 1
    await storage.close()


async def test_writes_on_the_loop_keep_the_wal_small(tmp_path: Path) -> None:
    """The loop's writes checkpoint the WAL as they go: it stays near SQLite's
    1,000-page mark instead of growing with every delivery."""
    path = tmp_path / "db.sqlite3"
    storage = Storage(path)
    await storage.open()
    repository_id = await add_repository(storage, "hello")
    for number in range(3000):  # about 9,000 pages written to the WAL
        await record_delivery(storage, repository_id, f"delivery-{number}")
    page_size = await storage.db.fetch_value("PRAGMA page_size")
    wal = path.with_name(path.name + "-wal")
    assert wal.stat().st_size < 1500 * (page_size + 24)
    assert await storage.deliveries.count(repository_id) == 3000
    await storage.close()
