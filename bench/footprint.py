"""Memory footprint: the server's RSS idle after start and with 4 jobs running.

Hobotnica (``python -m api serve``) starts with an empty data dir; its VmRSS
is sampled for a second once it answers (idle). Then 4 repositories are
registered (4 clone jobs), pushed to at once, and their ``test`` targets
sleep until released: VmRSS is sampled while the 4 jobs run. For scale, the
idle RSS of the bare aiohttp receiver (``bench.raw_intake``) and of
adnanh/webhook is shown beside it. ROUNDS fresh servers are measured.

The server runs as deployed (deploy/README.md): from a fresh venv with
``pip install .``. The development venv (dev extras: schemathesis brings
requests, which openapi-spec-validator then imports) is measured beside it.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import time
from pathlib import Path

from bench.common import (
    PYTHON,
    ROOT,
    FakeGitHubProcess,
    Http,
    PeerWebhook,
    Server,
    Summary,
    base_parser,
    deployed_python,
    free_port,
    machine,
    memory_kb,
    push_to_repository,
    read_stamp,
    register_remotes,
    stop_process,
    use_source,
    wait_for,
    wait_listening,
    work_dir,
)

OWNER = "octocat"
JOBS = 4
TARGET_IDLE_MB = 70.0


def sample_rss(pid: int, seconds: float = 1.0) -> float:
    """Median VmRSS (MB) over ``seconds``."""
    values = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        values.append(memory_kb(pid).get("VmRSS", 0) / 1024)
        time.sleep(0.02)
    return statistics.median(values)


def sleeping_makefile(release: Path) -> str:
    return (
        "test:\n"
        "\t@date +%s.%N > $(CURDIR).start\n"
        f"\t@i=0; while [ ! -e {release} ] && [ $$i -lt 1200 ]; do"
        " sleep 0.05; i=$$((i+1)); done\n"
    )


def reference_idle(root: Path) -> tuple[float, float]:
    """Idle RSS (MB) of the bare aiohttp receiver and of adnanh/webhook."""
    port = free_port()
    raw = subprocess.Popen(
        [PYTHON, "-m", "bench.raw_intake", "--port", str(port), "--secret", "s"],
        cwd=ROOT,
    )
    try:
        wait_listening(port, 30, "raw aiohttp", raw)
        time.sleep(0.5)
        raw_mb = sample_rss(raw.pid)
    finally:
        stop_process(raw)
    hook = {"id": "ci", "execute-command": "/bin/true"}
    with PeerWebhook(root, [hook]) as peer:
        assert peer.process is not None
        time.sleep(0.5)
        peer_mb = sample_rss(peer.process.pid)
    return raw_mb, peer_mb


def one_round(root: Path, python: str) -> tuple[float, float, float]:
    """Idle RSS, RSS with JOBS running, VmHWM at the end (MB)."""
    names = [f"sleep{i}" for i in range(JOBS)]
    release = root / "release"
    with (
        FakeGitHubProcess([f"{OWNER}/{n}" for n in names], root / "gh.log") as github,
        Server(root, github.url, python=python) as server,
    ):
        time.sleep(1.0)
        idle = sample_rss(server.pid)
        remotes, repositories = register_remotes(
            server, root, OWNER, names, sleeping_makefile(release)
        )
        http = Http(server.port)
        stamps = []
        for path in (server.data_dir / "clones").iterdir():
            if path.is_dir():
                stamps.append(path.with_name(path.name + ".start"))
        for name in names:
            sha = remotes[name].commit({"counter": "1"}, "push")
            push_to_repository(http, repositories[name], sha, OWNER, name)
        wait_for(
            lambda: all(read_stamp(stamp) is not None for stamp in stamps),
            60,
            "4 jobs running",
            interval=0.02,
        )
        running = sample_rss(server.pid)
        release.touch()
        for name in names:
            job = server.wait_job(OWNER, name, 2, interval=0.05)
            assert job["status"] == "success", json.dumps(job)
        hwm = server.memory_kb().get("VmHWM", 0) / 1024
        release.unlink()
    return idle, running, hwm


def main(argv: list[str] | None = None) -> None:
    parser = base_parser("bench.footprint", __doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="fresh servers (3)")
    args = parser.parse_args(argv)
    use_source(args.source)
    rows: dict[str, list[tuple[float, float, float]]] = {"deployed": [], "dev": []}
    with work_dir("footprint", args.keep) as root:
        pythons = {"deployed": deployed_python(root), "dev": PYTHON}
        raw_mb, peer_mb = reference_idle(root)
        for number in range(args.rounds):
            for name, python in pythons.items():
                rows[name].append(one_round(root / f"{name}{number}", python))
    print(f"# footprint: {args.rounds} fresh servers each; {machine()}")
    print(f"raw aiohttp  idle RSS {raw_mb:6.1f} MB")
    print(f"peer webhook idle RSS {peer_mb:6.1f} MB")
    for name, measured in rows.items():
        idle = Summary.of([row[0] for row in measured])
        running = Summary.of([row[1] for row in measured])
        hwm = Summary.of([row[2] for row in measured])
        print(
            f"hobotnica ({name:8s}) idle RSS median {idle.median:6.1f} MB"
            f" (max {idle.high:.1f}); {JOBS} jobs running median"
            f" {running.median:6.1f} MB (max {running.high:.1f});"
            f" VmHWM {hwm.median:.1f} MB"
        )
    idle = Summary.of([row[0] for row in rows["deployed"]])
    running = Summary.of([row[1] for row in rows["deployed"]])
    ok = idle.median < TARGET_IDLE_MB
    print(
        f"RESULT footprint hobotnica (deployed) idle {idle.median:.1f} MB"
        f" (target < {TARGET_IDLE_MB:.0f} MB), with {JOBS} jobs {running.median:.1f} MB"
        f" (+{running.median - idle.median:.1f} MB) {'PASS' if ok else 'FAIL'}"
    )


if __name__ == "__main__":
    main()
