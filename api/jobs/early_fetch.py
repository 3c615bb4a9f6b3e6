"""A push's ``git fetch``, started while its delivery is still being recorded.

A signed push to the tracked branch almost always starts a test job at once,
and that job's first step, fetching the branch and the pushed commit, is
most of the time between the push and ``make``. Recording the delivery,
claiming the job and preparing its plan take a few milliseconds more, one
after the other. So the runner starts the fetch as soon as the delivery is
verified, and the job adopts the running process as its first step once it
is claimed: the job's log shows the step and its output as if the job had
started it, and a cancel or timeout of the job stops it.

The runner starts one only where nothing else can be using the clone (see
``JobRunner.fetch_early``). A fetch that no job adopts (a redelivery, no
room to start the job, an older queued job of the repository went first) is
stopped before anything else runs git in the clone; what a stopped git
leaves behind (lock files) the next job removes, as after any killed git.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from pathlib import Path

from api.jobs import git
from api.jobs.process import ProcessResult, run_process
from api.storage.records import JobKind, JobRecord

# Output kept until a job adopts the fetch (git prints a few lines).
MAX_BUFFERED = 1 << 20


class EarlyFetch:
    """One running ``git fetch`` that a job may adopt as its first step."""

    def __init__(
        self,
        *,
        repository_id: int,
        branch: str,
        sha: str,
        argv: list[str],
        notes: list[str],
    ) -> None:
        self.repository_id = repository_id
        self.branch = branch
        self.sha = sha
        self.argv = argv
        # Lines for the job's log before the step (stale locks removed).
        self.notes = notes
        self._stop = asyncio.Event()
        self._buffered: list[bytes] = []
        self._room = MAX_BUFFERED
        self._dropped = 0
        self._sink: Callable[[bytes], None] | None = None
        self._task: asyncio.Task[ProcessResult] | None = None

    @classmethod
    def start(
        cls,
        *,
        repository_id: int,
        clone: Path,
        branch: str,
        sha: str,
        env: Mapping[str, str],
        timeout: float,
        kill_grace: float,
    ) -> EarlyFetch:
        """Remove stale git locks (nothing runs git in ``clone`` now), then
        start the fetch that ``git.checkout_steps`` would start first."""
        argv = git.checkout_steps(clone, branch=branch, ref=None, sha=sha)[0]
        notes = [
            f"[hobotnica] removed a stale git lock: {lock.name}"
            for lock in git.remove_stale_locks(clone)
        ]
        fetch = cls(
            repository_id=repository_id,
            branch=branch,
            sha=sha,
            argv=argv,
            notes=notes,
        )
        fetch._task = asyncio.ensure_future(
            run_process(
                argv,
                cwd=clone,
                env=env,
                sink=fetch._receive,
                timeout=timeout,
                cancel=fetch._stop,
                kill_grace=kill_grace,
            )
        )
        fetch._task.add_done_callback(_retrieve)
        return fetch

    def serves(self, job: JobRecord) -> bool:
        """Whether ``job`` would start with exactly this fetch."""
        return (
            job.kind is JobKind.TEST
            and job.repository_id == self.repository_id
            and job.ref == self.branch
            and job.sha == self.sha
        )

    async def join(
        self, sink: Callable[[bytes], None], cancel: asyncio.Event
    ) -> ProcessResult:
        """Adopt the fetch: its output so far and from now on goes to
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
        """Stop the fetch (its process group is gone when this returns)."""
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
    # Whoever awaits the fetch sees its error; this only keeps asyncio from
    # warning about a fetch that was stopped and never awaited again.
    if not task.cancelled():
        task.exception()
