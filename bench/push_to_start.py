"""Push-to-start and push-to-finish of a `make test` job, three subjects.

K sequential pushes per subject, each a new commit in a bare repository
served over ``file://``. The Makefile's first ``test`` line writes
``date +%s.%N``; push-to-start is from sending the webhook (or starting the
script) to that stamp. Subjects, run side by side in rotating order:

- floor: a shell script doing fetch / checkout --force / clean -ffdx / make,
  started directly (no HTTP), timed from its start;
- peer: adnanh/webhook (Debian ``webhook``) with a payload-hmac-sha256
  trigger rule, running the same script;
- hobotnica: the real server (``python -m api serve``) with the repository
  registered through the API against the fake GitHub, signed pushes to its
  webhook URL.

Push-to-finish: floor and peer, the script's last line (after make);
Hobotnica, the job's ``finished_at`` (after its result is recorded).

The bench waits for a stamp it needs (peer: finish, Hobotnica: start)
through a FIFO (``StampPipe``), asleep in ``poll()``: polling the file
would take CPU from the subject on this 2-core machine, and the floor,
which the bench simply waits for, has no such cost.

``--compare DIR`` adds a fourth subject, ``compared``: the server of another
checkout (say, the previous commit in a ``git worktree``), pushed to in the
same rounds, for a before/after that the VM's changing speed cannot skew.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import (
    FakeGitHubProcess,
    GitRemote,
    Http,
    PeerWebhook,
    Server,
    StampPipe,
    Summary,
    base_parser,
    hmac_rule,
    iso_to_epoch,
    machine,
    push_body,
    ratio,
    read_stamp,
    rotate,
    use_source,
    webhook_headers,
    webhook_path,
    work_dir,
)
from tests.support import git

OWNER = "octocat"
BRANCH = "main"
TARGET = 1.15
MAKEFILE = """\
test:
\t@date +%s.%N > $(CURDIR).start
\t@echo testing $(GIT_BRANCH)

deploy:
\t@echo deploying
"""
# The floor: what any CI has to do for a push, minus HTTP and bookkeeping;
# the same git commands as Hobotnica's (api/jobs/git.py checkout_steps), one
# after the other (Hobotnica runs the clean beside the fetch).
SCRIPT = """\
#!/bin/sh
set -e
clone="$1"
branch="$2"
sha="$3"
export GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null LC_ALL=C \\
    GIT_TERMINAL_PROMPT=0 GIT_ASKPASS= GIT_EDITOR=true GIT_PAGER=cat
git -C "$clone" fetch --force --no-recurse-submodules origin -- \\
    "+refs/heads/$branch:refs/remotes/origin/$branch" "$sha"
git -C "$clone" checkout --force --detach "$sha^{commit}" --
git -C "$clone" clean -ffdx
cd "$clone"
make test
date +%s.%N > "$clone.finish"
"""
PEER_SECRET = "peer-webhook-secret-0123456789"
COMPARED = "compared"

Result = tuple[float, float]  # push-to-start, push-to-finish (s)


def cloned_remote(root: Path, name: str) -> tuple[GitRemote, Path]:
    """A remote with the bench's Makefile and a clone of it (``root/name``)."""
    remote = GitRemote(root, OWNER, name)
    remote.commit({"Makefile": MAKEFILE}, "initial")
    clone = root / name / "clone"
    clone.parent.mkdir(parents=True)
    git("clone", "-q", str(remote.bare), str(clone))
    return remote, clone


class Floor:
    name = "floor"

    def __init__(self, root: Path, script: Path) -> None:
        self.remote, self.clone = cloned_remote(root, "floor")
        self.script = script
        self.output = (root / "floor" / "output").open("ab")

    def push(self, number: int) -> Result:
        sha = self.remote.commit({"counter": str(number)}, f"push {number}")
        stamps = clear_stamps(self.clone)
        started = time.time()
        subprocess.run(
            [str(self.script), str(self.clone), BRANCH, sha],
            check=True,
            stdout=self.output,
            stderr=subprocess.STDOUT,
        )
        start, finish = (read_stamp(path) for path in stamps)
        assert start is not None and finish is not None
        return start - started, finish - started


class Peer:
    name = "peer"

    def __init__(self, root: Path, hooks: PeerWebhook) -> None:
        self.remote, self.clone = cloned_remote(root, "peer")
        self.hooks = hooks
        self.http = Http(hooks.port)

    @staticmethod
    def hook(root: Path, script: Path) -> dict[str, object]:
        clone = root / "peer" / "clone"
        return {
            "id": "ci",
            "execute-command": str(script),
            "command-working-directory": str(root),
            "pass-arguments-to-command": [
                {"source": "string", "name": str(clone)},
                {"source": "string", "name": BRANCH},
                {"source": "payload", "name": "after"},
            ],
            "trigger-rule": hmac_rule(PEER_SECRET, BRANCH),
            "trigger-rule-mismatch-http-response-code": 400,
        }

    def push(self, number: int) -> Result:
        sha = self.remote.commit({"counter": str(number)}, f"push {number}")
        body = push_body(sha, BRANCH, OWNER, "peer")
        headers = webhook_headers(body, PEER_SECRET)
        stamps = clear_stamps(self.clone)
        with StampPipe(stamps[1]) as finished:
            started = time.time()
            status, answer = self.http.request(
                "POST", self.hooks.path("ci"), body, headers
            )
            if status != 200:
                raise RuntimeError(f"webhook answered {status}: {answer!r}")
            finish = finished.wait(60, "peer finish")
        start = read_stamp(stamps[0])
        assert start is not None
        return start - started, finish - started


class Hobotnica:
    def __init__(
        self, root: Path, server: Server, name: str = "hobotnica", repo: str = "pts"
    ) -> None:
        self.name = name
        self.repo = repo
        self.remote = GitRemote(root, OWNER, repo)
        self.remote.commit({"Makefile": MAKEFILE}, "initial")
        self.server = server
        self.repository = server.register(OWNER, repo)
        self.clone = server.data_dir / "clones" / str(self.repository_id())
        self.path = webhook_path(self.repository)
        self.secret = str(self.repository["webhook"]["secret"])
        self.http = Http(server.port)

    def repository_id(self) -> int:
        clones = [p for p in (self.server.data_dir / "clones").iterdir() if p.is_dir()]
        assert len(clones) == 1, clones
        return int(clones[0].name)

    def push(self, number: int) -> Result:
        sha = self.remote.commit({"counter": str(number)}, f"push {number}")
        body = push_body(sha, BRANCH, OWNER, self.repo)
        headers = webhook_headers(body, self.secret)
        stamps = clear_stamps(self.clone)
        with StampPipe(stamps[0]) as started_make:
            started = time.time()
            status, answer = self.http.request("POST", self.path, body, headers)
            if status != 202:
                raise RuntimeError(f"Hobotnica answered {status}: {answer!r}")
            start = started_make.wait(60, "hobotnica start")
        job_number = int(json.loads(answer)["number"])
        job = self.server.wait_job(OWNER, self.repo, job_number, interval=0.02)
        if job["status"] != "success":
            raise RuntimeError(f"job failed: {job}")
        return start - started, iso_to_epoch(job["finished_at"]) - started


def clear_stamps(clone: Path) -> tuple[Path, Path]:
    stamps = (
        clone.with_name(clone.name + ".start"),
        clone.with_name(clone.name + ".finish"),
    )
    for path in stamps:
        path.unlink(missing_ok=True)
    return stamps


def run(
    pushes: int, warmup: int, keep: bool, compare: Path | None = None
) -> dict[str, tuple[Summary, Summary]]:
    with work_dir("push-to-start", keep) as root:
        script = root / "ci.sh"
        script.write_text(SCRIPT)
        script.chmod(0o755)
        repos = [f"{OWNER}/pts", f"{OWNER}/other"]
        with contextlib.ExitStack() as stack:
            github = stack.enter_context(
                FakeGitHubProcess(repos, root / "fake-github.log")
            )
            server = stack.enter_context(Server(root, github.url))
            hooks = stack.enter_context(PeerWebhook(root, [Peer.hook(root, script)]))
            subjects: dict[str, Callable[[int], Result]] = {}
            for subject in (
                Floor(root, script),
                Peer(root, hooks),
                Hobotnica(root, server),
            ):
                subjects[subject.name] = subject.push
            if compare is not None:
                # Another checkout of Hobotnica, pushed to in the same rounds.
                other = stack.enter_context(
                    Server(root, github.url, name="var-compare", source=compare)
                )
                subjects[COMPARED] = Hobotnica(
                    root, other, name=COMPARED, repo="other"
                ).push
            results: dict[str, list[Result]] = {name: [] for name in subjects}
            for round_number in range(warmup + pushes):
                for name in rotate(list(subjects), round_number):
                    result = subjects[name](round_number)
                    if round_number >= warmup:
                        results[name].append(result)
        return {
            name: (
                Summary.of([start for start, _ in values]),
                Summary.of([finish for _, finish in values]),
            )
            for name, values in results.items()
        }


def report(figures: dict[str, tuple[Summary, Summary]], pushes: int) -> bool:
    floor_start, floor_finish = figures["floor"]
    print(f"# push_to_start: {pushes} pushes per subject; {machine()}")
    for name, (start, finish) in figures.items():
        print(f"{name:9}  push-to-start  {start.ms()}")
        print(f"{'':9}  push-to-finish {finish.ms()}")
    hobotnica = figures["hobotnica"][0]
    passed = ratio(hobotnica.median, floor_start.median) <= TARGET
    for name, (start, finish) in figures.items():
        print(
            f"{name:9}  start median {start.median * 1e3:6.1f} ms"
            f" p90 {start.p90 * 1e3:6.1f} ms"
            f"  x{ratio(start.median, floor_start.median):.2f} floor"
            f" | finish median {finish.median * 1e3:6.1f} ms"
            f" x{ratio(finish.median, floor_finish.median):.2f} floor"
        )
    print(
        f"RESULT push_to_start hobotnica/floor x"
        f"{ratio(hobotnica.median, floor_start.median):.2f}"
        f" (target <= x{TARGET}) peer/floor x"
        f"{ratio(figures['peer'][0].median, floor_start.median):.2f}"
        f" {'PASS' if passed else 'FAIL'}"
    )
    return passed


def main(argv: list[str] | None = None) -> None:
    parser = base_parser("bench.push_to_start", __doc__.split("\n\n")[0])
    parser.add_argument("--pushes", type=int, default=30, help="measured pushes (30)")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured first (3)")
    parser.add_argument(
        "--compare",
        type=Path,
        default=None,
        help=f"also run the server of this checkout ('{COMPARED}'), same rounds",
    )
    args = parser.parse_args(argv)
    use_source(args.source)
    report(run(args.pushes, args.warmup, args.keep, args.compare), args.pushes)


if __name__ == "__main__":
    main()
