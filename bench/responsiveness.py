"""API latency while 4 jobs each print 50 MB, beside the same calls idle.

4 repositories whose ``test`` target prints SIZE bytes (default 50 MB) are
pushed to at once; while their jobs run, one client sends GET /api/health
and GET /api/repositories/{owner}/{name}/jobs (with auth headers; the fake
GitHub answers the token checks, cached by Hobotnica as it does) one after
the other on a keep-alive connection. The same calls are timed on the idle
server before each round. ROUNDS rounds.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from bench.common import (
    FakeGitHubProcess,
    Http,
    Server,
    Summary,
    auth_headers,
    base_parser,
    machine,
    push_to_repository,
    read_stamp,
    register_remotes,
    use_source,
    wait_for,
    work_dir,
)

OWNER = "octocat"
JOBS = 4
TARGET_P99 = 0.050


def makefile(size: int) -> str:
    return (
        "test:\n"
        "\t@date +%s.%N > $(CURDIR).start\n"
        f"\t@head -c {size} /dev/zero | tr '\\0' x | fold -w 100\n"
    )


class Prober:
    def __init__(self, server: Server, name: str) -> None:
        self.http = Http(server.port)
        self.paths = {
            "health": ("/api/health", {}),
            "jobs": (f"/api/repositories/{OWNER}/{name}/jobs?limit=20", auth_headers()),
        }
        self.latencies: dict[str, dict[str, list[float]]] = {
            phase: {path: [] for path in self.paths} for phase in ("idle", "busy")
        }

    def probe(self, phase: str) -> None:
        for key, (path, headers) in self.paths.items():
            started = time.perf_counter()
            status, body = self.http.request("GET", path, None, headers)
            elapsed = time.perf_counter() - started
            if status != 200:
                raise RuntimeError(f"GET {path}: {status} {body[:200]!r}")
            self.latencies[phase][key].append(elapsed)


def run(size: int, rounds: int, idle_probes: int, keep: bool) -> Prober:
    names = [f"loud{i}" for i in range(JOBS)]
    with work_dir("responsiveness", keep) as root:
        with (
            FakeGitHubProcess(
                [f"{OWNER}/{n}" for n in names], root / "gh.log"
            ) as github,
            Server(root, github.url) as server,
        ):
            remotes, repositories = register_remotes(
                server, root, OWNER, names, makefile(size)
            )
            stamps = [
                path.with_name(path.name + ".start")
                for path in (server.data_dir / "clones").iterdir()
                if path.is_dir()
            ]
            prober = Prober(server, names[0])
            http = Http(server.port)
            for round_number in range(rounds):
                for _ in range(idle_probes):
                    prober.probe("idle")
                    time.sleep(0.002)
                for stamp in stamps:
                    stamp.unlink(missing_ok=True)
                numbers = {}
                for name in names:
                    sha = remotes[name].commit({"n": str(round_number)}, "push")
                    answer = push_to_repository(
                        http, repositories[name], sha, OWNER, name
                    )
                    numbers[name] = int(json.loads(answer)["number"])
                wait_for(
                    lambda: all(read_stamp(s) is not None for s in stamps),
                    60,
                    "jobs started",
                    interval=0.005,
                )
                deadline = time.monotonic() + 120
                probes = 0
                while time.monotonic() < deadline:
                    prober.probe("busy")
                    probes += 1
                    if probes % 10 == 0 and not any_active(server, names, numbers):
                        break
                for name in names:
                    server.wait_job(OWNER, name, numbers[name], interval=0.05)
                    remove_logs(server.data_dir)
        return prober


def any_active(server: Server, names: list[str], numbers: dict[str, int]) -> bool:
    """Whether a job still runs (asked between probes, not timed)."""
    return any(
        server.job(OWNER, name, numbers[name])["status"] in ("queued", "running")
        for name in names
    )


def remove_logs(data_dir: Path) -> None:
    for log in (data_dir / "logs").rglob("*.log"):
        if log.name != "1.log":
            log.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> None:
    parser = base_parser("bench.responsiveness", __doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=50_000_000, help="bytes per job")
    parser.add_argument("--rounds", type=int, default=8, help="rounds (8)")
    parser.add_argument(
        "--idle-probes", type=int, default=40, help="idle probes per round (40)"
    )
    args = parser.parse_args(argv)
    use_source(args.source)
    prober = run(args.size, args.rounds, args.idle_probes, args.keep)
    print(
        f"# responsiveness: {JOBS} jobs x {args.size / 1e6:.0f} MB, {args.rounds}"
        f" rounds; {machine()}"
    )
    worst = 0.0
    for phase, paths in prober.latencies.items():
        for key, values in paths.items():
            summary = Summary.of(values)
            print(f"{phase:4} {key:6}  {summary.ms()}  p99 {summary.p99 * 1e3:6.1f} ms")
            if phase == "busy":
                worst = max(worst, summary.p99)
    busy = prober.latencies["busy"]
    health = Summary.of(busy["health"]).p99
    jobs = Summary.of(busy["jobs"]).p99
    verdict = "PASS" if worst < TARGET_P99 else "FAIL"
    print(
        f"RESULT responsiveness busy p99 health {health * 1e3:.1f} ms,"
        f" jobs {jobs * 1e3:.1f} ms (target < {TARGET_P99 * 1e3:.0f} ms) {verdict}"
    )


if __name__ == "__main__":
    main()
