"""A dead instance's processes are found by their marker and killed."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from api.jobs.executor import MARKER_NAME
from api.jobs.leftovers import kill_marked, marked_processes

SCRIPT = (
    # An unmarked member of the group, and a marked process in a session of
    # its own (as a daemon started by make would be).
    f"env -u {MARKER_NAME} sleep 61 & echo $!; setsid sleep 62 & echo $!; wait"
)


# Every marker of these tests starts with it (and nothing else's does).
MARKER_PREFIX = f"test-leftovers-{os.getpid()}-"


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_dead(pids: list[int], timeout: float = 5.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(pid) for pid in pids):
        time.sleep(0.02)
    return [pid for pid in pids if alive(pid)]


Started = list[tuple[subprocess.Popen[str], list[int]]]


@pytest.fixture
def started() -> Iterator[Started]:
    processes: Started = []
    yield processes
    for process, children in processes:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()


def start(
    started: Started, marker: str | None
) -> tuple[subprocess.Popen[str], list[int]]:
    env = dict(os.environ)
    if marker is not None:
        env[MARKER_NAME] = marker
    process = subprocess.Popen(
        ["sh", "-c", SCRIPT],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert process.stdout is not None
    children = [int(process.stdout.readline()) for _ in range(2)]
    started.append((process, children))
    # $! is known before the child has exec'd `sleep`: until then (and
    # during the exec) its /proc entry is still the shell's or unreadable.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not all(
        command(pid) == "sleep" for pid in children
    ):
        time.sleep(0.01)
    return process, children


def command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except FileNotFoundError:
        return ""


def test_kill_marked_takes_the_groups_and_escaped_sessions_of_one_instance(
    started: Started,
) -> None:
    dead = f"{MARKER_PREFIX}dead"
    leader, (unmarked_member, own_session) = start(started, f"{dead}/7")
    other, other_children = start(started, f"{MARKER_PREFIX}alive/7")
    plain, plain_children = start(started, None)
    found = marked_processes(f"{dead}/")
    assert sorted(found) == sorted([leader.pid, own_session])

    assert kill_marked(f"{dead}/") == 2
    assert leader.wait(timeout=5) == -9
    assert wait_dead([unmarked_member, own_session]) == []
    survivors = [other.pid, *other_children, plain.pid, *plain_children]
    assert all(alive(pid) for pid in survivors)
    assert marked_processes(f"{dead}/") == []


def test_a_prefix_is_a_whole_instance_id(
    started: Started,
) -> None:
    process, (_, own_session) = start(started, f"{MARKER_PREFIX}10/1")
    assert marked_processes(f"{MARKER_PREFIX}1/") == []
    found = marked_processes(f"{MARKER_PREFIX}10/")
    assert sorted(found) == sorted([process.pid, own_session])
