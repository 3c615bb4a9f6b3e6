"""Webhook intake throughput: wrk against three receivers of signed pushes.

wrk (1 thread, 20 connections, DURATION s, REPEATS runs per subject in
rotating order, after a short warm-up each) POSTs a signed push to another
branch than the tracked one, with a new ``X-GitHub-Delivery`` per request:

- raw: a bare aiohttp handler with an HMAC check (``bench.raw_intake``);
- peer: adnanh/webhook with a payload-hmac-sha256 rule (never fires);
- hobotnica: the real server's ``POST /api/webhooks/{uid}`` (202 ignored).

Then the cost of rejecting an unsigned 25 MB body: REJECTS sequential POSTs
per subject, their latency and the receiver's peak RSS growth.
"""

from __future__ import annotations

import dataclasses
import math
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import (
    PYTHON,
    ROOT,
    FakeGitHubProcess,
    GitRemote,
    Http,
    PeakRss,
    PeerWebhook,
    Server,
    Summary,
    base_parser,
    cpu_seconds,
    ensure_tool,
    free_port,
    hmac_rule,
    machine,
    push_body,
    ratio,
    rotate,
    sign,
    stop_process,
    use_source,
    wait_listening,
    webhook_path,
    work_dir,
)

OWNER = "octocat"
NAME = "intake"
SECRET = "intake-secret-0123456789abcdef"
TARGET_RPS = 2500.0
TARGET_P99 = 0.050
BIG_BODY = 25_000_000

LUA = """\
wrk.method = "POST"
wrk.body = [==[{body}]==]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-GitHub-Event"] = "push"
wrk.headers["X-Hub-Signature-256"] = "{signature}"
local counter = 0
local prefix = "{prefix}-" .. tostring(math.random(1000000000)) .. "-"
request = function()
  counter = counter + 1
  wrk.headers["X-GitHub-Delivery"] = prefix .. counter
  return wrk.format(nil, "{path}")
end
"""


@dataclass(frozen=True)
class WrkResult:
    rps: float
    p50: float
    p90: float
    p99: float
    requests: int
    bad: int  # non-2xx answers plus socket errors
    cpu: float = math.nan  # the receiver's CPU seconds per request


def _seconds(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[unit]


def parse_wrk(output: str) -> WrkResult:
    percentiles = dict(re.findall(r"^\s+(50|90|99)%\s+(\S+)$", output, re.M))
    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    bad = 0
    if found := re.search(r"Non-2xx or 3xx responses: (\d+)", output):
        bad += int(found.group(1))
    if found := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    ):
        bad += sum(int(value) for value in found.groups())
    return WrkResult(
        rps,
        _seconds(percentiles["50"]),
        _seconds(percentiles["90"]),
        _seconds(percentiles["99"]),
        requests,
        bad,
    )


@dataclass(frozen=True)
class Target:
    port: int
    path: str
    pid: int
    secret: str


def run_wrk(
    root: Path,
    name: str,
    target: Target,
    body: bytes,
    duration: float,
) -> WrkResult:
    """wrk against ``target``; also the receiver's CPU time per request."""
    port, path = target.port, target.path
    signature = sign(body, target.secret)
    cpu_before = cpu_seconds(target.pid)
    script = root / f"{name}.lua"
    script.write_text(
        LUA.format(body=body.decode(), signature=signature, prefix=name, path=path)
    )
    wrk = ensure_tool("wrk")
    result = subprocess.run(
        [
            wrk,
            "-t1",
            "-c20",
            f"-d{duration:g}s",
            "--latency",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}{path}",
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=duration + 60,
    )
    cpu = cpu_seconds(target.pid) - cpu_before
    parsed = parse_wrk(result.stdout)
    return dataclasses.replace(parsed, cpu=cpu / max(parsed.requests, 1))


class RawServer:
    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self.log = root / "raw.log"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> RawServer:
        self.process = subprocess.Popen(
            [
                PYTHON,
                "-m",
                "bench.raw_intake",
                "--port",
                str(self.port),
                "--secret",
                SECRET,
            ],
            cwd=ROOT,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        wait_listening(self.port, 30, "raw aiohttp", self.process)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            stop_process(self.process)


def reject_big(target: Target, count: int) -> tuple[Summary, float, set[int]]:
    """Unsigned 25 MB pushes: latency, peak RSS growth (MB), statuses seen."""
    body = b'{"ref": "refs/heads/main", "pad": "' + b"x" * (BIG_BODY - 40) + b'"}'
    headers = {"Content-Type": "application/json", "X-GitHub-Event": "push"}
    latencies = []
    statuses = set()
    with PeakRss(target.pid) as rss:
        for _ in range(count):
            http = Http(target.port)
            started = time.perf_counter()
            try:
                status, _ = http.request("POST", target.path, body, headers)
            except OSError as err:  # a receiver may cut the upload short
                status = -1
                print(f"# {target.path}: {err!r}")
            latencies.append(time.perf_counter() - started)
            statuses.add(status)
            http.close()
    return Summary.of(latencies), rss.growth_mb, statuses


def run(duration: float, repeats: int, rejects: int, keep: bool) -> None:
    with work_dir("intake", keep) as root:
        remote = GitRemote(root, OWNER, NAME)
        sha = remote.commit({"Makefile": "test:\n\t@true\n"}, "initial")
        body = push_body(sha, "other-branch", OWNER, NAME)
        peer_hook = {
            "id": "ci",
            "execute-command": "/bin/true",
            "trigger-rule": hmac_rule(SECRET, "main"),
        }
        with (
            FakeGitHubProcess([f"{OWNER}/{NAME}"], root / "fake-github.log") as github,
            Server(root, github.url) as server,
            PeerWebhook(root, [peer_hook]) as peer,
            RawServer(root) as raw,
        ):
            repository = server.register(OWNER, NAME)
            secret = str(repository["webhook"]["secret"])
            assert peer.process is not None and raw.process is not None
            targets = {
                "raw": Target(raw.port, "/hooks/x", raw.process.pid, SECRET),
                "peer": Target(peer.port, peer.path("ci"), peer.process.pid, SECRET),
                "hobotnica": Target(
                    server.port, webhook_path(repository), server.pid, secret
                ),
            }
            # One signed request each: the expected answer, before any timing.
            for name, target in targets.items():
                status, answer = Http(target.port).request(
                    "POST",
                    target.path,
                    body,
                    {
                        "Content-Type": "application/json",
                        "X-GitHub-Event": "push",
                        "X-GitHub-Delivery": f"check-{name}",
                        "X-Hub-Signature-256": sign(body, target.secret),
                    },
                )
                print(f"# {name}: {status} {answer[:80]!r}")
            results: dict[str, list[WrkResult]] = {name: [] for name in targets}
            for name, target in targets.items():  # warm-up
                run_wrk(root, name, target, body, 2)
            for round_number in range(repeats):
                for name in rotate(list(targets), round_number):
                    results[name].append(
                        run_wrk(root, name, targets[name], body, duration)
                    )
            rejected = {name: reject_big(t, rejects) for name, t in targets.items()}
            idle = server.memory_kb()
        print(f"# hobotnica VmRSS {idle.get('VmRSS', 0) / 1024:.1f} MB after the runs")
    report(results, rejected, duration)


def report(
    results: dict[str, list[WrkResult]],
    rejected: dict[str, tuple[Summary, float, set[int]]],
    duration: float,
) -> None:
    print(
        f"# intake: wrk -t1 -c20 -d{duration:g}s x{len(results['raw'])} per subject;"
        f" {machine()}"
    )
    medians: dict[str, float] = {}
    p99s: dict[str, float] = {}
    for name, runs in results.items():
        rps = Summary.of([r.rps for r in runs])
        p99 = Summary.of([r.p99 for r in runs])
        p50 = Summary.of([r.p50 for r in runs])
        medians[name], p99s[name] = rps.median, p99.median
        bad = sum(r.bad for r in runs)
        cpu = Summary.of([r.cpu for r in runs])
        print(
            f"{name:9}  {rps.median:8.0f} deliveries/s"
            f" (runs {', '.join(f'{r.rps:.0f}' for r in runs)})"
            f"  latency p50 {p50.median * 1e3:6.2f} ms p99 {p99.median * 1e3:6.2f} ms"
            f"  CPU {cpu.median * 1e6:5.0f} us/delivery  non-2xx/errors {bad}"
        )
    for name, (latency, growth, statuses) in rejected.items():
        print(
            f"{name:9}  unsigned 25 MB body: {sorted(statuses)}"
            f" {latency.ms()}  RSS growth {growth:6.1f} MB"
        )
    hobotnica = medians["hobotnica"]
    tail = p99s["hobotnica"]
    ok = hobotnica >= TARGET_RPS and tail < TARGET_P99
    print(
        f"RESULT intake hobotnica {hobotnica:.0f}/s p99 {tail * 1e3:.1f} ms"
        f" (target >= {TARGET_RPS:.0f}/s, p99 < {TARGET_P99 * 1e3:.0f} ms);"
        f" x{ratio(hobotnica, medians['raw']):.2f} raw aiohttp"
        f" ({medians['raw']:.0f}/s), x{ratio(hobotnica, medians['peer']):.2f} peer"
        f" ({medians['peer']:.0f}/s) {'PASS' if ok else 'FAIL'}"
    )
    big = rejected["hobotnica"][0]
    print(
        f"RESULT intake unsigned 25 MB rejected in {big.median * 1e3:.0f} ms median"
        f" (raw {rejected['raw'][0].median * 1e3:.0f} ms,"
        f" peer {rejected['peer'][0].median * 1e3:.0f} ms),"
        f" RSS growth {rejected['hobotnica'][1]:.1f} MB"
    )


def main(argv: list[str] | None = None) -> None:
    parser = base_parser("bench.intake", __doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="s per run (10)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per subject (3)")
    parser.add_argument("--rejects", type=int, default=5, help="25 MB posts (5)")
    args = parser.parse_args(argv)
    use_source(args.source)
    run(args.duration, args.repeats, args.rejects, args.keep)


if __name__ == "__main__":
    main()
