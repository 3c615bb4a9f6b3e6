"""run_process against real subprocesses: outcomes, output and process groups."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from api.jobs.process import (
    CHUNK_SIZE,
    Outcome,
    ProcessResult,
    become_subreaper,
    kill_process_group,
    run_process,
    terminate_group,
)

HANG_LIMIT = 10.0
T = TypeVar("T")
ENV = {"PATH": os.environ["PATH"]}
PY = sys.executable
# Prints the pid of a backgrounded grandchild, then waits for it.
SPAWN_GRANDCHILD = ["sh", "-c", "sleep 1000 & echo $!; wait"]
IGNORE_TERM = (
    "import signal, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ready', flush=True)\n"
    "time.sleep(1000)\n"
)


async def bounded(awaitable: Awaitable[T]) -> T:
    """Fail instead of hanging when a kill does not work."""
    return await asyncio.wait_for(awaitable, HANG_LIMIT)


@pytest.fixture(autouse=True, scope="module")
def _subreaper() -> None:
    # The sandbox's PID 1 may not reap orphans; adopt them so that killed
    # grandchildren disappear instead of lingering as zombies.
    assert become_subreaper()


class Output:
    """A sink that keeps the output and signals each new line."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.chunks = 0
        self.line = asyncio.Event()

    def __call__(self, chunk: bytes) -> None:
        self.data += chunk
        self.chunks += 1
        if b"\n" in chunk:
            self.line.set()

    def first_int(self) -> int:
        return int(self.data.split()[0])


def run_grandchild(
    tmp_path: Path, sink: Callable[[bytes], None], started: list[int], **options: Any
) -> Coroutine[Any, Any, ProcessResult]:
    """``run_process`` of SPAWN_GRANDCHILD, recording its group id."""
    return run_process(
        SPAWN_GRANDCHILD,
        cwd=tmp_path,
        env=ENV,
        sink=sink,
        on_start=started.append,
        **options,
    )


def assert_group_gone(pgid: int) -> None:
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)


def assert_pid_gone(pid: int) -> None:
    assert not Path(f"/proc/{pid}").exists(), Path(f"/proc/{pid}/stat").read_text()


@pytest.mark.parametrize("code", [0, 1, 3, 255])
async def test_exit_code(tmp_path: Path, code: int) -> None:
    result = await run_process(
        [PY, "-c", f"raise SystemExit({code})"],
        cwd=tmp_path,
        env=ENV,
        sink=Output(),
        timeout=10,
    )
    assert result.outcome == Outcome.EXITED
    assert result.returncode == code
    assert 0 < result.elapsed < 5


async def test_stdout_and_stderr_interleaved_in_order(tmp_path: Path) -> None:
    out = Output()
    script = "echo o1; echo e1 >&2; echo o2; echo e2 >&2; printf tail"
    await run_process(["sh", "-c", script], cwd=tmp_path, env=ENV, sink=out, timeout=10)
    assert bytes(out.data) == b"o1\ne1\no2\ne2\ntail"


async def test_cwd_env_stdin_and_own_group(tmp_path: Path) -> None:
    out = Output()
    started: list[int] = []
    code = (
        "import os, sys\n"
        "names = sorted(set(os.environ) - {'LC_CTYPE'})\n"
        "print(os.getcwd(), os.environ['ONLY'], names)\n"
        "print(os.getpid() == os.getpgrp() == os.getsid(0), repr(sys.stdin.read()))\n"
        "print(os.getpgrp())\n"
    )
    env = {**ENV, "ONLY": "yes"}
    result = await run_process(
        [PY, "-c", code],
        cwd=tmp_path,
        env=env,
        sink=out,
        timeout=10,
        on_start=started.append,
    )
    lines = bytes(out.data).decode().splitlines()
    assert lines[0] == f"{tmp_path} yes ['ONLY', 'PATH']"  # (python adds LC_CTYPE)
    assert lines[1] == "True ''"
    assert started == [int(lines[2])]
    assert result.returncode == 0


async def test_timeout_kills_the_whole_group(tmp_path: Path) -> None:
    out = Output()
    started: list[int] = []
    result = await bounded(
        run_grandchild(tmp_path, out, started, timeout=0.5, kill_grace=3.0)
    )
    assert result.outcome == Outcome.TIMED_OUT
    assert result.returncode == -signal.SIGTERM
    assert 0.5 <= result.elapsed < 2.5  # all obey TERM: the grace is not used up
    assert_group_gone(started[0])
    assert_pid_gone(out.first_int())


async def test_cancel_event(tmp_path: Path) -> None:
    out = Output()
    cancel = asyncio.Event()
    started: list[int] = []
    task = asyncio.create_task(
        run_grandchild(
            tmp_path, out, started, timeout=None, cancel=cancel, kill_grace=0.3
        )
    )
    await asyncio.wait_for(out.line.wait(), 5)
    cancel.set()
    result = await bounded(task)
    assert result.outcome == Outcome.CANCELLED
    assert result.returncode == -signal.SIGTERM
    assert_group_gone(started[0])
    assert_pid_gone(out.first_int())


async def test_term_ignoring_child_gets_killed_after_grace(tmp_path: Path) -> None:
    out = Output()
    cancel = asyncio.Event()

    def sink(chunk: bytes) -> None:
        out(chunk)
        if b"ready" in out.data:  # handler installed: now ask it to stop
            cancel.set()

    started: list[int] = []
    result = await bounded(
        run_process(
            [PY, "-c", IGNORE_TERM],
            cwd=tmp_path,
            env=ENV,
            sink=sink,
            timeout=10,
            cancel=cancel,
            kill_grace=0.4,
            on_start=started.append,
        )
    )
    assert result.outcome == Outcome.CANCELLED
    assert result.returncode == -signal.SIGKILL
    assert result.elapsed >= 0.4
    assert_group_gone(started[0])


async def test_term_ignoring_grandchild_gets_its_grace_then_kill(
    tmp_path: Path,
) -> None:
    out = Output()
    cancel = asyncio.Event()

    def sink(chunk: bytes) -> None:
        out(chunk)
        if b"ready" in out.data:
            cancel.set()

    started: list[int] = []
    script = f'{PY} -c "$0" & echo $!; wait'
    result = await bounded(
        run_process(
            ["sh", "-c", script, IGNORE_TERM],
            cwd=tmp_path,
            env=ENV,
            sink=sink,
            timeout=None,
            cancel=cancel,
            kill_grace=0.4,
            on_start=started.append,
        )
    )
    assert result.outcome == Outcome.CANCELLED
    assert result.returncode == -signal.SIGTERM  # sh itself obeyed at once
    assert result.elapsed >= 0.4  # the python got the whole grace
    assert_group_gone(started[0])
    assert_pid_gone(out.first_int())


async def test_orphan_left_by_make_is_killed_after_exit(tmp_path: Path) -> None:
    (tmp_path / "Makefile").write_text("test:\n\tsleep 1000 & echo $$! > sleep.pid\n")
    started: list[int] = []
    result = await bounded(
        run_process(
            ["make", "test"],
            cwd=tmp_path,
            env=ENV,
            sink=Output(),
            timeout=10,
            kill_grace=5,
            on_start=started.append,
        )
    )
    assert result.outcome == Outcome.EXITED
    assert result.returncode == 0
    assert result.elapsed < 1.5  # no wait for the orphan's end of output
    assert_group_gone(started[0])
    assert_pid_gone(int((tmp_path / "sleep.pid").read_text()))


async def test_make_failure_exit_code(tmp_path: Path) -> None:
    (tmp_path / "Makefile").write_text("test:\n\t@echo running\n\t@false\n")
    out = Output()
    result = await run_process(
        ["make", "test"], cwd=tmp_path, env=ENV, sink=out, timeout=10
    )
    assert result.returncode == 2  # GNU make's status when a recipe fails
    assert bytes(out.data).startswith(b"running\nmake: *** [Makefile:")


async def test_cancelled_coroutine_kills_the_group(tmp_path: Path) -> None:
    out = Output()
    started: list[int] = []
    task = asyncio.create_task(
        run_grandchild(tmp_path, out, started, timeout=None, kill_grace=0.3)
    )
    await asyncio.wait_for(out.line.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await bounded(task)
    assert_group_gone(started[0])
    assert_pid_gone(out.first_int())


async def test_failing_sink_kills_the_group_and_raises(tmp_path: Path) -> None:
    started: list[int] = []

    def sink(chunk: bytes) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        await bounded(
            run_grandchild(tmp_path, sink, started, timeout=None, kill_grace=0.3)
        )
    assert_group_gone(started[0])


async def test_large_output_streams_with_bounded_memory(tmp_path: Path) -> None:
    size = 20_000_000
    total = 0
    biggest = 0

    def count(chunk: bytes) -> None:
        nonlocal total, biggest
        total += len(chunk)
        biggest = max(biggest, len(chunk))

    tracemalloc.start()
    try:
        began = time.monotonic()
        result = await run_process(
            ["head", "-c", str(size), "/dev/zero"],
            cwd=tmp_path,
            env=ENV,
            sink=count,
            timeout=30,
        )
        took = time.monotonic() - began
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.returncode == 0
    assert total == size
    assert biggest <= CHUNK_SIZE
    assert peak < 4 * 2**20, peak
    assert took < 10


async def test_output_still_in_the_pipe_at_exit_is_kept(tmp_path: Path) -> None:
    size = 4 * 2**20  # more than the pipe holds: some is unread at exit
    total = 0

    def slow_count(chunk: bytes) -> None:
        nonlocal total
        total += len(chunk)
        time.sleep(0.002)  # a slow disk

    result = await run_process(
        ["head", "-c", str(size), "/dev/zero"],
        cwd=tmp_path,
        env=ENV,
        sink=slow_count,
        timeout=30,
    )
    assert result.returncode == 0
    assert total == size


async def test_shell_string_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        await run_process("echo hi", cwd=tmp_path, env=ENV, sink=Output(), timeout=1)


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


async def test_missing_program_raises_without_leaking_fds(tmp_path: Path) -> None:
    before = open_fds()
    with pytest.raises(FileNotFoundError):
        await run_process(
            ["no-such-program-xyz"], cwd=tmp_path, env=ENV, sink=Output(), timeout=1
        )
    await run_process(["true"], cwd=tmp_path, env=ENV, sink=Output(), timeout=5)
    assert open_fds() <= before


@pytest.mark.parametrize("pgid", [0, 1, -5])
def test_kill_process_group_refuses_special_groups(pgid: int) -> None:
    with pytest.raises(ValueError):
        kill_process_group(pgid, 0)


def test_kill_process_group_refuses_own_group() -> None:
    with pytest.raises(ValueError):
        kill_process_group(os.getpgrp(), 0)


@pytest.fixture
def lone_group() -> Iterator[list[int]]:
    pids: list[int] = []
    yield pids
    for pid in pids:  # in case the test failed half-way
        if Path(f"/proc/{pid}").exists():
            os.killpg(pid, signal.SIGKILL)


async def test_terminate_group(lone_group: list[int]) -> None:
    proc = await asyncio.create_subprocess_exec(
        PY, "-c", IGNORE_TERM, stdout=asyncio.subprocess.PIPE, start_new_session=True
    )
    lone_group.append(proc.pid)
    assert proc.stdout is not None
    assert await proc.stdout.readline() == b"ready\n"
    assert kill_process_group(proc.pid, 0)
    await terminate_group(proc.pid, grace=0.2)
    assert await bounded(proc.wait()) == -signal.SIGKILL
    assert not kill_process_group(proc.pid, 0)
    await terminate_group(proc.pid, grace=0.2)  # gone: a no-op
