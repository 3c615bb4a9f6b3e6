"""A job step's process, started before the job gets to that step.

The job adopts it when it gets there (``join``): the output so far, kept
here, and from then on goes to the job's log, and the job's cancel event
stops it. A process that no job adopts is stopped with ``stop``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from api.jobs.process import ProcessResult, run_process

# Output kept until the process is adopted (git prints a few lines).
MAX_BUFFERED = 1 << 20


class StartedProcess:
    """One running command that a job step may adopt."""

    def __init__(self, argv: Sequence[str]) -> None:
        self.argv = list(argv)
        self._stop = asyncio.Event()
        self._buffered: list[bytes] = []
        self._room = MAX_BUFFERED
        self._dropped = 0
        self._sink: Callable[[bytes], None] | None = None
        self._task: asyncio.Task[ProcessResult] | None = None

    def start(
        self,
        *,
        cwd: Path,
        env: Mapping[str, str],
        timeout: float,
        kill_grace: float,
    ) -> None:
        """Start the process (``run_process``); errors surface in ``join``."""
        self._task = asyncio.ensure_future(
            run_process(
                self.argv,
                cwd=cwd,
                env=env,
                sink=self._receive,
                timeout=timeout,
                cancel=self._stop,
                kill_grace=kill_grace,
            )
        )
        self._task.add_done_callback(_retrieve)

    async def join(
        self, sink: Callable[[bytes], None], cancel: asyncio.Event
    ) -> ProcessResult:
        """Adopt the process: its output so far and from now on goes to
        ``sink``; ``cancel`` stops it. Returns how it ended."""
        assert self._task is not None
        self._sink = sink
        buffered, self._buffered = self._buffered, []
        for chunk in buffered:
            sink(chunk)
        if self._dropped:
            sink(f"\n[hobotnica] {self._dropped} bytes of output dropped\n".encode())
        if not self._task.done():
            cancelled = asyncio.ensure_future(cancel.wait())
            try:
                await asyncio.wait(
                    {self._task, cancelled}, return_when=asyncio.FIRST_COMPLETED
                )
            except asyncio.CancelledError:
                self._stop.set()
                raise
            finally:
                cancelled.cancel()
            if cancel.is_set():
                self._stop.set()
        return await self._task

    async def stop(self) -> None:
        """Stop the process (its process group is gone when this returns)."""
        if self._task is None:
            return
        self._stop.set()
        with contextlib.suppress(Exception):
            await asyncio.shield(self._task)

    def _receive(self, chunk: bytes) -> None:
        if self._sink is not None:
            self._sink(chunk)
        elif len(chunk) <= self._room:
            self._buffered.append(chunk)
            self._room -= len(chunk)
        else:
            self._dropped += len(chunk)


def _retrieve(task: asyncio.Task[ProcessResult]) -> None:
    # Whoever joins sees the error; this only keeps asyncio from warning
    # about a process that was stopped and never joined.
    if not task.cancelled():
        task.exception()
