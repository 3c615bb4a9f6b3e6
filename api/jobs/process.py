"""Run one command in its own process group, streaming its output.

The command gets a fresh session (so its process group id equals its pid),
``/dev/null`` as stdin and one pipe for both stdout and stderr, so the two
streams arrive interleaved in the order the command wrote them. Output goes to
a synchronous ``sink`` chunk by chunk; nothing is accumulated here.

Whatever way a run ends (exit, timeout, cancel event, cancelled coroutine),
the whole process group is killed before ``run_process`` returns or raises:
a ``make`` that left ``sleep 1000 &`` behind leaves no orphan.

No asyncio subprocess transport: the child is a plain ``subprocess.Popen``
(vfork + exec, as asyncio does too), its exit is watched through a pidfd in
the event loop (no watcher thread per child, whose wake-ups would wait for
the GIL), and the pipe is read by an ``add_reader`` callback straight into
the sink, one read of up to ``CHUNK_SIZE`` bytes per callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import enum
import fcntl
import functools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHUNK_SIZE = 256 * 1024
# Pause after a read that emptied the pipe (see _Pump): at most this much
# delay for the log, a few large reads instead of one per 4 KiB written.
COALESCE = 0.001
PIPE_SIZE = 1 << 20
# How long to keep reading after the group is gone: only a process that left
# the group (setsid) can still hold the pipe open at that point.
DRAIN_TIMEOUT = 2.0
# How long to wait for SIGKILLed members to be reaped (subreaper only).
REAP_TIMEOUT = 2.0
_POLL = 0.01

_PR_SET_CHILD_SUBREAPER = 36
_PR_GET_CHILD_SUBREAPER = 37


class Outcome(enum.StrEnum):
    EXITED = "exited"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class ProcessResult:
    outcome: Outcome
    # The leader's exit status; negative (-signal) when it was killed.
    returncode: int | None
    elapsed: float


def kill_process_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to the group; False when the group no longer exists."""
    if pgid <= 1 or pgid == os.getpgrp():
        raise ValueError(f"refusing to signal process group {pgid}")
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


async def terminate_group(pgid: int, grace: float) -> None:
    """SIGTERM the group, wait up to ``grace`` for it to vanish, then SIGKILL.

    For groups whose ``run_process`` is not around (it kills its own group).
    Zombies count as members until someone reaps them.
    """
    if not kill_process_group(pgid, signal.SIGTERM):
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        await asyncio.sleep(_POLL * 5)
        if not kill_process_group(pgid, 0):
            return
    kill_process_group(pgid, signal.SIGKILL)


def become_subreaper() -> bool:
    """Adopt orphaned descendants (Linux), so that killed job members get
    reaped by ``run_process`` even when PID 1 does not reap zombies."""
    return _prctl(_PR_SET_CHILD_SUBREAPER, 1) == 0


def is_subreaper() -> bool:
    value = ctypes.c_int(0)
    return _prctl(_PR_GET_CHILD_SUBREAPER, ctypes.addressof(value)) == 0 and bool(
        value.value
    )


def _prctl(option: int, arg: int) -> int:
    if sys.platform != "linux":
        return -1
    result: int = _libc().prctl(option, ctypes.c_ulong(arg), 0, 0, 0)
    return result


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


async def run_process(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    sink: Callable[[bytes], None],
    timeout: float | None,  # noqa: ASYNC109 - the timeout also kills the group
    cancel: asyncio.Event | None = None,
    kill_grace: float = 5.0,
    on_start: Callable[[int], None] | None = None,
) -> ProcessResult:
    """Run ``argv`` to its end, a timeout or ``cancel``; see the module doc.

    Raises OSError when the command cannot be started, and whatever ``sink``
    or ``on_start`` raise (after killing the group).
    """
    args = _checked_argv(argv)
    read_fd, write_fd = _open_pipe()
    try:
        # Not blocking on the child: vfork + exec, as asyncio's transport does.
        proc = subprocess.Popen(  # noqa: ASYNC220
            args,
            stdin=subprocess.DEVNULL,
            stdout=write_fd,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=dict(env),
            cwd=cwd,
        )
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    return await _supervise(
        _Child(proc),
        read_fd,
        sink=sink,
        limit=timeout,
        cancel=cancel,
        kill_grace=kill_grace,
        on_start=on_start,
    )


async def _supervise(
    child: _Child,
    read_fd: int,
    *,
    sink: Callable[[bytes], None],
    limit: float | None,
    cancel: asyncio.Event | None,
    kill_grace: float,
    on_start: Callable[[int], None] | None,
) -> ProcessResult:
    started = time.monotonic()
    pump: _Pump | None = None
    try:
        pump = _Pump(read_fd, sink)
        if on_start is not None:
            on_start(child.pid)
        outcome = await _wait_for_end(child, pump, limit, cancel)
        await _stop_group(child, kill_grace if outcome != Outcome.EXITED else 0.0)
        elapsed = time.monotonic() - started
        await pump.drain(DRAIN_TIMEOUT)
    except BaseException:
        # Cancelled coroutine, failing sink or on_start: never leave the group.
        await asyncio.shield(_stop_group(child, kill_grace))
        raise
    finally:
        if pump is not None:
            pump.close()
        else:
            os.close(read_fd)
    return ProcessResult(outcome, child.returncode, elapsed)


def _checked_argv(argv: Sequence[str]) -> list[str]:
    if isinstance(argv, str | bytes) or not argv:
        raise TypeError("argv must be a non-empty list of arguments, not a string")
    return [str(arg) for arg in argv]


def _open_pipe() -> tuple[int, int]:
    read_fd, write_fd = os.pipe()  # both ends are close-on-exec
    if sys.platform == "linux":
        with contextlib.suppress(OSError):  # above pipe-max-size: keep default
            fcntl.fcntl(read_fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    return read_fd, write_fd


async def _wait_for_end(
    child: _Child,
    pump: _Pump,
    limit: float | None,
    cancel: asyncio.Event | None,
) -> Outcome:
    loop = asyncio.get_running_loop()
    deadline = None if limit is None else loop.time() + limit
    cancelled = asyncio.ensure_future(cancel.wait()) if cancel else None
    watched: set[asyncio.Future[Any]] = {child.exited, pump.done}
    if cancelled is not None:
        watched.add(cancelled)
    try:
        while True:
            if child.exited.done():
                return Outcome.EXITED
            if cancelled is not None and cancelled.done():
                return Outcome.CANCELLED
            if pump.done.done():
                pump.done.result()  # a failing sink ends the run
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return Outcome.TIMED_OUT
            pending = {future for future in watched if not future.done()}
            await asyncio.wait(
                pending, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
            )
    finally:
        if cancelled is not None:
            cancelled.cancel()


async def _stop_group(child: _Child, grace: float) -> None:
    """SIGTERM the group and give it ``grace`` seconds (0: none) to end,
    then SIGKILL whatever is left, reap the leader and the orphans."""
    pgid = child.pid
    if grace > 0 and kill_process_group(pgid, signal.SIGTERM):
        deadline = time.monotonic() + grace
        await asyncio.wait({child.exited}, timeout=grace)
        if child.returncode is not None:  # leader reaped: wait for the rest
            await _wait_group_gone(pgid, deadline)
    members = kill_process_group(pgid, signal.SIGKILL)
    await asyncio.shield(child.exited)
    # An empty group (the usual end) has no zombies to reap either.
    if members and is_subreaper():
        await _wait_group_gone(pgid, time.monotonic() + REAP_TIMEOUT)


async def _wait_group_gone(pgid: int, deadline: float) -> None:
    """Poll until the group is empty, reaping the members re-parented to us.

    Only once the leader is reaped: every remaining member is then an orphan
    that asyncio's child watcher knows nothing about (reaping the leader here
    would steal its exit status).
    """
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            # WNOHANG: never blocks.
            while os.waitid(os.P_PGID, pgid, os.WEXITED | os.WNOHANG):  # noqa: ASYNC222
                pass
        if not kill_process_group(pgid, 0):
            return
        await asyncio.sleep(_POLL)


class _Child:
    """The leader: its exit is ``exited``, resolved once it has been reaped."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.pid = proc.pid
        self._loop = asyncio.get_running_loop()
        self.exited: asyncio.Future[None] = self._loop.create_future()
        self._pidfd: int | None = None
        self._poller: asyncio.Task[None] | None = None
        try:
            self._pidfd = os.pidfd_open(proc.pid)
            self._loop.add_reader(self._pidfd, self._on_exit)
        except (AttributeError, OSError, NotImplementedError):
            # Not Linux 5.3+ (or a loop without readers): poll instead.
            if self._pidfd is not None:
                os.close(self._pidfd)
                self._pidfd = None
            self._poller = self._loop.create_task(self._poll())

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def _on_exit(self) -> None:
        if self.proc.poll() is None:  # reaps the leader once it has exited
            return
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        if not self.exited.done():
            self.exited.set_result(None)

    async def _poll(self) -> None:
        while self.proc.poll() is None:  # noqa: ASYNC110 - no pidfd to wait on
            await asyncio.sleep(_POLL)
        if not self.exited.done():
            self.exited.set_result(None)


class _Pump:
    """Reads the pipe into the sink from a loop callback.

    Owns ``read_fd`` once constructed (``close`` closes it); if the
    constructor raises, the caller still owns it.

    One read per callback keeps other work on the loop going during a flood
    of output; memory is one chunk at a time. After a read that emptied the
    pipe, reading pauses for ``COALESCE`` seconds, so that a command writing
    in small pieces (4-8 KiB from stdio) is read in large chunks rather than
    woken up for at every piece: the pipe (``PIPE_SIZE``) holds what comes
    meanwhile. ``done`` resolves at EOF, or with the exception of a failing
    read or sink.
    """

    def __init__(self, read_fd: int, sink: Callable[[bytes], None]) -> None:
        self._fd: int | None = read_fd
        self._sink = sink
        self._loop = asyncio.get_running_loop()
        self.done: asyncio.Future[None] = self._loop.create_future()
        self._paused: asyncio.TimerHandle | None = None
        self._draining = False
        os.set_blocking(read_fd, False)
        self._loop.add_reader(read_fd, self._on_readable)

    def _on_readable(self) -> None:
        assert self._fd is not None
        try:
            chunk = os.read(self._fd, CHUNK_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as err:
            self._finish(err)
            return
        if not chunk:
            self._finish(None)
            return
        try:
            self._sink(chunk)
        except Exception as err:
            self._finish(err)
            return
        if len(chunk) < CHUNK_SIZE and COALESCE > 0 and not self._draining:
            self._loop.remove_reader(self._fd)
            self._paused = self._loop.call_later(COALESCE, self._resume)

    def _resume(self) -> None:
        self._paused = None
        if self._fd is not None:
            self._loop.add_reader(self._fd, self._on_readable)

    def _finish(self, error: BaseException | None) -> None:
        self._close_fd()
        if self.done.done():
            return
        if error is None:
            self.done.set_result(None)
        else:
            self.done.set_exception(error)

    def _close_fd(self) -> None:
        if self._paused is not None:
            self._paused.cancel()
            self._paused = None
        if self._fd is not None:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = None

    async def drain(self, limit: float) -> None:
        """Wait up to ``limit`` for EOF, then surface any sink error."""
        self._draining = True  # the command has ended: read on without pauses
        if self._paused is not None:
            self._paused.cancel()
            self._resume()
        if not self.done.done():  # a wait costs a round of the loop
            await asyncio.wait({self.done}, timeout=limit)
        if self.done.done():
            self.done.result()

    def close(self) -> None:
        self._close_fd()
        if not self.done.done():
            self.done.cancel()
        elif not self.done.cancelled():
            self.done.exception()  # retrieved: no "never retrieved" warning
