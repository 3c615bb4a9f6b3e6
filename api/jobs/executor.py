"""Run one job: bring the clone to the wanted commit, then run make."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from api.jobs import environment, git
from api.jobs.early_fetch import EarlyFetch
from api.jobs.logs import LogWriter
from api.jobs.process import Outcome, ProcessResult, run_process
from api.jobs.started import StartedProcess
from api.storage.records import JobKind, JobRecord, JobStatus, RepositoryRecord

logger = logging.getLogger(__name__)

TAIL_BYTES = 8192
# Every process of a job carries this variable, so that a restarted server
# can tell a dead instance's leftover processes from unrelated ones.
MARKER_NAME = "HOBOTNICA_RUN"


@dataclass
class JobPlan:
    """Everything a job needs, decrypted and resolved before it starts."""

    job: JobRecord
    repository: RepositoryRecord
    token: str
    clone_url: str
    clone_dir: Path
    log_path: Path
    env_layers: Sequence[Mapping[str, str]]
    secrets: Sequence[str]
    timeout: float
    kill_grace: float
    log_max_bytes: int
    marker: str
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    stop_status: JobStatus = JobStatus.CANCELLED
    # The job's first step, already running (see api/jobs/early_fetch.py).
    early_fetch: EarlyFetch | None = None


@dataclass(frozen=True)
class JobResult:
    status: JobStatus
    exit_code: int | None = None
    reason: str | None = None
    sha: str | None = None
    git_auth_failed: bool = False


class _StepFailed(Exception):
    def __init__(self, result: JobResult, *, clone_is_fine: bool = False) -> None:
        super().__init__(result.reason)
        self.result = result
        # Failed for what was asked (a ref not on the remote), not the clone.
        self.clone_is_fine = clone_is_fine


class JobExecutor:
    """Runs the steps of one job, writing everything to its log."""

    def __init__(
        self,
        plan: JobPlan,
        *,
        host_env: Mapping[str, str],
        on_sha: Callable[[str], None],
        on_output: Callable[[], None],
        on_make: Callable[[], None] = lambda: None,
    ) -> None:
        self.plan = plan
        self.host_env = host_env
        self.on_make = on_make
        self.on_sha = on_sha
        self.on_output = on_output
        self.started = time.monotonic()
        self.log = LogWriter(
            plan.log_path,
            secrets=[plan.token, *plan.secrets],
            max_bytes=plan.log_max_bytes,
        )
        self._tail: collections.deque[bytes] = collections.deque()
        self._tail_size = 0

    async def run(self) -> JobResult:
        job = self.plan.job
        self.log.line(
            f"[hobotnica] {job.kind} job #{job.number} of "
            f"{self.plan.repository.full_name}"
            + (f" at {job.ref}" if job.ref else "")
            + (f" ({job.sha})" if job.sha else "")
        )
        try:
            result = await self._run_steps()
        except _StepFailed as failed:
            result = failed.result
        except OSError as err:
            logger.exception("Job #%s failed on the file system", job.number)
            result = JobResult(JobStatus.ERROR, reason=f"file system error: {err}")
        finally:
            elapsed = time.monotonic() - self.started
        self.log.line(
            f"[hobotnica] {result.status}"
            + (
                f" (exit code {result.exit_code})"
                if result.exit_code is not None
                else ""
            )
            + (f": {result.reason}" if result.reason else "")
            + f" in {elapsed:.1f} s"
        )
        self.log.close()
        self.on_output()
        return result

    async def _run_steps(self) -> JobResult:
        job = self.plan.job
        if job.kind is JobKind.CLONE:
            await self._clone()
            sha = await self._head()
            return JobResult(JobStatus.SUCCESS, exit_code=0, sha=sha)
        if not git.is_clone(self.plan.clone_dir):
            self.log.line("[hobotnica] no usable clone: cloning again")
            await self._clone()
        try:
            await self._checkout()
        except _StepFailed as failed:
            if (
                failed.result.git_auth_failed
                or failed.clone_is_fine
                or failed.result.status is not JobStatus.ERROR
            ):
                raise
            self.log.line("[hobotnica] the clone looks broken: cloning again")
            await self._clone()
            await self._checkout()
        # A checked-out sha is HEAD: no need to ask git again.
        sha = job.sha or await self._head()
        target = "test" if job.kind is JobKind.TEST else "deploy"
        env = environment.build_job_env(
            self.host_env,
            job_id=str(job.number),
            job_kind=str(job.kind),
            repository=self.plan.repository.full_name,
            sha=sha,
            branch=job.ref or self.plan.repository.branch,
            layers=self.plan.env_layers,
        )
        env[MARKER_NAME] = self.plan.marker
        result = await self._process(
            ["make", target], env, on_start=lambda _pgid: self.on_make()
        )
        if result.outcome is not Outcome.EXITED:
            return self._stopped(result, sha)
        status = JobStatus.SUCCESS if result.returncode == 0 else JobStatus.FAILED
        return JobResult(status, exit_code=result.returncode, sha=sha)

    async def _checkout(self) -> None:
        job = self.plan.job
        clone = self.plan.clone_dir
        ref = None if job.ref == self.plan.repository.branch else job.ref
        with _refused_by_git():
            steps = git.checkout_steps(
                clone, branch=self.plan.repository.branch, ref=ref, sha=job.sha
            )
        early, self.plan.early_fetch = self.plan.early_fetch, None
        if early is not None and early.argv != steps.fetch:
            await early.stop()
            early = None
        notes = early.notes if early is not None else self._restore_git_state()
        for note in notes:
            self.log.line(note)
        # The clean runs beside the fetch (see git.CheckoutSteps); its part
        # of the log comes after the fetch's.
        cleaning = StartedProcess(steps.clean)
        cleaning.start(
            cwd=clone,
            env=self._git_env,
            timeout=max(self._remaining(), 0.0),
            kill_grace=self.plan.kill_grace,
        )
        try:
            await self._git(steps.fetch, started=early)
            await self._git(steps.clean, started=cleaning)
        finally:
            await cleaning.stop()  # after a failed fetch; else a no-op
        await self._git(steps.checkout)

    async def _clone(self) -> None:
        target = self.plan.clone_dir
        temporary = target.with_name(f"{target.name}.clone-{self.plan.job.number}")
        shutil.rmtree(temporary, ignore_errors=True)
        temporary.parent.mkdir(parents=True, exist_ok=True)
        with _refused_by_git():
            steps = git.clone_steps(
                self.plan.clone_url, temporary, self.plan.repository.branch
            )
        for argv in steps:
            await self._git(argv, cwd=temporary.parent)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(temporary, target)
        self._restore_git_state()  # .git/config in the form later jobs check

    def _restore_git_state(self) -> list[str]:
        return git.restore_git_state(
            self.plan.clone_dir,
            url=self.plan.clone_url,
            branch=self.plan.repository.branch,
        )

    async def _head(self) -> str:
        sha = await git.rev_parse(self.plan.clone_dir, "HEAD", self._git_env)
        if sha is None:
            raise _StepFailed(
                JobResult(JobStatus.ERROR, reason="the clone has no commit")
            )
        self.on_sha(sha)
        return sha

    @functools.cached_property
    def _git_env(self) -> dict[str, str]:
        """One per job: cleaning PATH stats every entry of it."""
        return git_environment(self.host_env, self.plan.token, self.plan.marker)

    async def _git(
        self,
        argv: Sequence[str],
        cwd: Path | None = None,
        started: StartedProcess | None = None,
    ) -> None:
        """Run a git step (or adopt its ``started`` process); a failure is
        a ``_StepFailed`` with the reason."""
        self._tail.clear()
        self._tail_size = 0
        if started is None:
            result = await self._process(argv, self._git_env, cwd=cwd)
        else:
            self.log.line("$ " + " ".join(argv))
            try:
                result = await started.join(self._sink, self.plan.cancel)
            except FileNotFoundError as err:
                raise _not_found(argv, err) from None
        if result.outcome is not Outcome.EXITED:
            raise _StepFailed(self._stopped(result, None))
        if result.returncode != 0:
            output = b"".join(self._tail).decode("utf-8", "replace")
            auth = git.is_auth_failure(output)
            step = _subcommand(argv)
            missing = step == "fetch" and git.is_missing_on_remote(output)
            raise _StepFailed(
                JobResult(
                    JobStatus.ERROR,
                    reason=f"git {step} failed (exit code {result.returncode})"
                    + ("; GitHub refused the stored token" if auth else "")
                    + ("; the ref or commit is not on GitHub" if missing else ""),
                    git_auth_failed=auth,
                ),
                clone_is_fine=missing,
            )

    async def _process(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        cwd: Path | None = None,
        on_start: Callable[[int], None] | None = None,
    ) -> ProcessResult:
        remaining = self._remaining()
        if remaining <= 0:
            return ProcessResult(Outcome.TIMED_OUT, None, 0.0)
        self.log.line("$ " + " ".join(argv))
        try:
            return await run_process(
                argv,
                cwd=cwd or self.plan.clone_dir,
                env=env,
                sink=self._sink,
                timeout=remaining,
                cancel=self.plan.cancel,
                kill_grace=self.plan.kill_grace,
                on_start=on_start,
            )
        except FileNotFoundError as err:
            raise _not_found(argv, err) from None

    def _remaining(self) -> float:
        """Seconds left of the job's timeout."""
        return self.plan.timeout - (time.monotonic() - self.started)

    def _sink(self, chunk: bytes) -> None:
        self.log.write(chunk)
        self._tail.append(chunk)
        self._tail_size += len(chunk)
        while self._tail_size - len(self._tail[0]) >= TAIL_BYTES:
            self._tail_size -= len(self._tail.popleft())
        self.on_output()

    def _stopped(self, result: ProcessResult, sha: str | None) -> JobResult:
        if result.outcome is Outcome.TIMED_OUT:
            return JobResult(
                JobStatus.TIMED_OUT,
                reason=f"killed after the {self.plan.timeout:g} s job timeout",
                sha=sha,
            )
        status = self.plan.stop_status
        reason = (
            "cancelled on request"
            if status is JobStatus.CANCELLED
            else "stopped by a server shutdown"
        )
        return JobResult(status, reason=reason, sha=sha)


def git_environment(
    host_env: Mapping[str, str], token: str, marker: str
) -> dict[str, str]:
    """The environment of a job's git commands."""
    return {
        **git.git_base_env(environment.host_env(host_env)),
        **git.auth_env(token),
        MARKER_NAME: marker,
    }


@contextlib.contextmanager
def _refused_by_git() -> Iterator[None]:
    """A ref or URL that ``git.py`` will not pass to git (stored before the
    API checked it as it does now) fails the job with the reason."""
    try:
        yield
    except ValueError as err:
        raise _StepFailed(JobResult(JobStatus.ERROR, reason=str(err))) from None


def _not_found(argv: Sequence[str], err: FileNotFoundError) -> _StepFailed:
    missing = argv[0] if err.filename in (None, argv[0]) else err.filename
    return _StepFailed(
        JobResult(JobStatus.ERROR, reason=f"cannot run {missing}: not found")
    )


def _subcommand(argv: Sequence[str]) -> str:
    """``fetch`` for ``git -C dir fetch --force ...``."""
    words = iter(argv[1:])
    for word in words:
        if word == "-C":
            next(words, None)
        elif not word.startswith("-"):
            return word
    return "command"
