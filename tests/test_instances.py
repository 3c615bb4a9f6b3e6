"""Instance locks: a starting instance is never taken for a dead one."""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import time
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path

import pytest

from api.jobs import instances
from api.jobs.instances import InstanceLock, is_alive, others_alive

STRESS_SECONDS = 1.5


def test_a_probe_between_create_and_lock_leaves_the_lock_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another instance probes right before the starting one takes its lock."""
    folder = tmp_path / "instances"
    real_flock = fcntl.flock

    def probing_flock(fd: int, operation: int) -> None:
        monkeypatch.setattr(fcntl, "flock", real_flock)
        assert not others_alive(folder, "prober")
        real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", probing_flock)
    lock = InstanceLock(folder, "starting")
    lock.acquire()
    try:
        assert os.listdir(folder) == ["starting.lock"]
        assert is_alive(folder, "starting")
        assert others_alive(folder, "prober")
    finally:
        lock.release()
    assert os.listdir(folder) == []


def _start_and_stop(folder: Path, seconds: float, results: Queue) -> None:  # type: ignore[type-arg]
    failed = unseen = rounds = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        rounds += 1
        lock = InstanceLock(folder, f"starter-{rounds}")
        try:
            lock.acquire()
        except BlockingIOError:
            failed += 1
            continue
        if not is_alive(folder, lock.instance_id):
            unseen += 1
        lock.release()
    results.put((rounds, failed, unseen))


def _probe(folder: Path, stop: Event) -> None:
    while not stop.is_set():
        others_alive(folder, "prober")


def test_probing_in_a_loop_never_breaks_starting_instances(tmp_path: Path) -> None:
    folder = tmp_path / "instances"
    folder.mkdir()
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    stop = context.Event()
    prober = context.Process(target=_probe, args=(folder, stop))
    starter = context.Process(
        target=_start_and_stop, args=(folder, STRESS_SECONDS, results)
    )
    prober.start()
    starter.start()
    try:
        rounds, failed, unseen = results.get(timeout=STRESS_SECONDS + 10)
    finally:
        stop.set()
        starter.join(5)
        prober.join(5)
    assert rounds > 100
    assert (failed, unseen) == (0, 0), (
        f"of {rounds} starts, {failed} could not take their own lock and "
        f"{unseen} ran with a lock other instances took for dead"
    )
    assert os.listdir(folder) == []


def test_temporary_files_left_by_a_crash_are_removed_once_stale(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "instances"
    folder.mkdir()
    crashed = folder / f"{instances.TEMP_PREFIX}crashed-1234"
    fresh = folder / f"{instances.TEMP_PREFIX}starting-5678"
    held = (
        folder / f"{instances.TEMP_PREFIX}stopped-9012"
    )  # a creator stopped, not dead
    for path in (crashed, fresh, held):
        path.write_text("1234\n")
    old = time.time() - instances.STALE_TEMP_SECONDS - 1
    for path in (crashed, held):
        os.utime(path, (old, old))
    fd = os.open(held, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert not others_alive(folder, "me")
        assert sorted(os.listdir(folder)) == sorted([fresh.name, held.name])
    finally:
        os.close(fd)
    assert not others_alive(folder, "me")
    assert os.listdir(folder) == [fresh.name]


def test_a_failed_acquire_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "instances"

    def failing_replace(source: Path, target: Path) -> None:
        raise PermissionError(target)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(PermissionError):
        InstanceLock(folder, "me").acquire()
    assert os.listdir(folder) == []
