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

from collections.abc import Mapping
from pathlib import Path

from api.jobs import git
from api.jobs.started import StartedProcess
from api.storage.records import JobKind, JobRecord


class EarlyFetch(StartedProcess):
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
        super().__init__(argv)
        self.repository_id = repository_id
        self.branch = branch
        self.sha = sha
        # Lines for the job's log before the step (what was restored).
        self.notes = notes

    @classmethod
    def begin(
        cls,
        *,
        repository_id: int,
        clone: Path,
        url: str,
        branch: str,
        sha: str,
        env: Mapping[str, str],
        timeout: float,
        kill_grace: float,
    ) -> EarlyFetch:
        """Restore the clone's git state (``git.restore_git_state``: nothing
        runs git in ``clone`` now), then start the fetch of
        ``git.checkout_steps``."""
        argv = git.checkout_steps(clone, branch=branch, ref=None, sha=sha).fetch
        notes = git.restore_git_state(clone, url=url, branch=branch)
        fetch = cls(
            repository_id=repository_id,
            branch=branch,
            sha=sha,
            argv=argv,
            notes=notes,
        )
        fetch.start(cwd=clone, env=env, timeout=timeout, kill_grace=kill_grace)
        return fetch

    def serves(self, job: JobRecord) -> bool:
        """Whether ``job`` would start with exactly this fetch."""
        return (
            job.kind is JobKind.TEST
            and job.repository_id == self.repository_id
            and job.ref == self.branch
            and job.sha == self.sha
        )
