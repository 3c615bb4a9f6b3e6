"""Shared parts of the benchmarks: processes, HTTP, git remotes, statistics.

Everything runs on loopback with real parts: ``python -m api serve`` as a
subprocess (:class:`Server`), the fake GitHub of the tests in a process of
its own (:class:`FakeGitHubProcess`), bare repositories served over
``file://`` (:class:`tests.support.GitRemote`), real git and make.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import os
import platform
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import tests.servers
from tests.servers import ServerProcess, free_port
from tests.support import FINISHED as FINISHED_STATUSES
from tests.support import (
    TOKEN,
    USER,
    GitRemote,
    auth_headers,
    push_payload,
    sign,
    webhook_headers,
)

__all__ = [
    "ROOT",
    "TOKEN",
    "USER",
    "FakeGitHubProcess",
    "GitRemote",
    "Http",
    "PeakRss",
    "Server",
    "StampPipe",
    "Summary",
    "auth_headers",
    "base_parser",
    "ensure_tool",
    "free_port",
    "machine",
    "ratio",
    "register_remotes",
    "sign",
    "wait_for",
    "webhook_headers",
    "work_dir",
]

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

FINISHED = frozenset(FINISHED_STATUSES)


# -- statistics --------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class Summary:
    n: int
    median: float
    p90: float
    p99: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        if not values:
            return cls(0, math.nan, math.nan, math.nan, math.nan, math.nan)
        return cls(
            len(values),
            statistics.median(values),
            percentile(values, 90),
            percentile(values, 99),
            min(values),
            max(values),
        )

    def ms(self) -> str:
        """Seconds shown as milliseconds."""
        return (
            f"median {self.median * 1e3:7.1f} ms  p90 {self.p90 * 1e3:7.1f} ms"
            f"  min {self.low * 1e3:6.1f}  max {self.high * 1e3:6.1f}  (n={self.n})"
        )


def ratio(value: float, reference: float) -> float:
    return value / reference if reference else math.nan


# -- machine and command line ----------------------------------------------------


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (
        f"nproc {os.cpu_count()}, {model}, Python {platform.python_version()},"
        f" {platform.system()} {platform.release()}"
    )


def base_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m {prog}", description=description)
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory for inspection"
    )
    parser.add_argument(
        "--source",
        type=Path,
        default=None,
        help="run the server from this checkout instead (before/after runs)",
    )
    return parser


def use_source(source: Path | None) -> None:
    """Run ``python -m api serve`` from another checkout of Hobotnica."""
    if source is not None:
        if not (source / "api" / "__main__.py").is_file():
            raise SystemExit(f"{source} is not a Hobotnica checkout")
        tests.servers.ROOT = source.resolve()


def deployed_python(root: Path) -> str:
    """The interpreter of a fresh venv with Hobotnica installed as the deploy
    guide does it (``pip install .``: no dev extras, no editable checkout)."""
    venv = root / "deployed-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    install = subprocess.run(
        [python, "-m", "pip", "install", "--quiet", str(tests.servers.ROOT)],
        check=False,
        capture_output=True,
        text=True,
    )
    if install.returncode != 0:
        raise RuntimeError(f"pip install failed:\n{install.stdout}{install.stderr}")
    return python


@contextlib.contextmanager
def work_dir(name: str, keep: bool = False) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=f"hobotnica-bench-{name}-"))
    try:
        yield path
    finally:
        if keep:
            print(f"# kept {path}", file=sys.stderr)
        else:
            shutil.rmtree(path, ignore_errors=True)


def ensure_tool(name: str, package: str | None = None) -> str:
    """The tool's path; installs its Debian package when missing (as root)."""
    found = shutil.which(name)
    if found:
        return found
    package = package or name
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    print(f"# installing {package} for {name}", file=sys.stderr)
    subprocess.run(
        [*sudo, "apt-get", "install", "-y", "-qq", package],
        check=True,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        stdout=subprocess.DEVNULL,
    )
    found = shutil.which(name)
    if not found:
        raise SystemExit(f"{name} is not available (apt-get install -y {package})")
    return found


def wait_for(
    condition: Callable[[], bool],
    timeout: float,
    what: str,
    interval: float = 0.002,
) -> None:
    """Poll ``condition`` (bounded by ``timeout``)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout} s")
        time.sleep(interval)


def read_stamp(path: Path) -> float | None:
    """A ``date +%s.%N`` stamp once it is completely written."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return float(text) if text.endswith("\n") else None


class StampPipe:
    """One ``date +%s.%N > PATH`` stamp, waited for without polling.

    PATH becomes a FIFO that this end holds open for reading: the writer's
    open and write never block, and ``wait`` sleeps in one ``poll()`` until
    the stamp arrives, so the bench takes no CPU from what it measures (a
    poll of a file every few milliseconds would). One stamp per instance:
    once its writer has closed, a FIFO only reports hang-ups.
    """

    def __init__(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        os.mkfifo(path)
        self.path = path
        self._fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)

    def wait(self, timeout: float, what: str) -> float:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        deadline = time.monotonic() + timeout
        data = b""
        while not data.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not poller.poll(remaining * 1000):
                raise TimeoutError(f"{what}: no stamp after {timeout} s")
            try:
                piece = os.read(self._fd, 64)
            except BlockingIOError:
                continue
            if not piece:  # the writer closed before a whole line
                raise RuntimeError(f"{what}: incomplete stamp {data!r}")
            data += piece
        return float(data)

    def close(self) -> None:
        os.close(self._fd)
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> StampPipe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- memory --------------------------------------------------------------------


def memory_kb(pid: int) -> dict[str, int]:
    """``VmRSS``, ``VmHWM`` and the like of a process, in kB."""
    values = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Vm"):
                key, value = line.split(":", 1)
                values[key] = int(value.split()[0])
    return values


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    # After "(comm)": state is field 3, utime 14 and stime 15 (1-based).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class PeakRss:
    """A process's peak VmRSS over a ``with`` block, from the kernel.

    Entering resets the process's high-water mark (``5`` to
    ``/proc/PID/clear_refs``, Linux 4.0+); leaving reads ``VmHWM``. Exact,
    and nothing samples the process meanwhile: a sampling thread would both
    miss short peaks and take CPU from what is being measured.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.start_kb = 0
        self.peak_kb = 0

    def __enter__(self) -> PeakRss:
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        self.start_kb = memory_kb(self.pid)["VmRSS"]
        return self

    def __exit__(self, *exc: object) -> None:
        self.peak_kb = max(memory_kb(self.pid).get("VmHWM", 0), self.start_kb)

    @property
    def growth_mb(self) -> float:
        return (self.peak_kb - self.start_kb) / 1024


# -- HTTP ---------------------------------------------------------------------


class Http:
    """A keep-alive HTTP/1.1 client for one loopback port."""

    def __init__(self, port: int, timeout: float = 60.0) -> None:
        self.port = port
        self.timeout = timeout
        self._connection: http.client.HTTPConnection | None = None

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, bytes]:
        for attempt in range(2):
            if self._connection is None:
                self._connection = http.client.HTTPConnection(
                    "127.0.0.1", self.port, timeout=self.timeout
                )
            try:
                self._connection.request(method, path, body, dict(headers or {}))
                response = self._connection.getresponse()
                data = response.read()
            except (ConnectionError, http.client.HTTPException):
                self.close()
                if attempt:
                    raise
                continue
            if response.will_close:
                self.close()
            return response.status, data
        raise AssertionError("unreachable")

    def download(
        self, path: str, headers: Mapping[str, str] | None = None
    ) -> tuple[int, int]:
        """GET ``path`` on a connection of its own, reading the answer a
        piece at a time and dropping it: (status, bytes received)."""
        connection = http.client.HTTPConnection(
            "127.0.0.1", self.port, timeout=self.timeout
        )
        try:
            connection.request("GET", path, headers=dict(headers or {}))
            response = connection.getresponse()
            received = 0
            while piece := response.read(1 << 20):
                received += len(piece)
            return response.status, received
        finally:
            connection.close()

    def json(
        self,
        method: str,
        path: str,
        payload: Any = None,
        headers: Mapping[str, str] | None = None,
        expect: int | tuple[int, ...] = (200, 202),
    ) -> Any:
        body = None if payload is None else json.dumps(payload).encode()
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        status, data = self.request(method, path, body, all_headers)
        expected = (expect,) if isinstance(expect, int) else expect
        if status not in expected:
            raise RuntimeError(f"{method} {path}: {status} {data[:500]!r}")
        return json.loads(data) if data else None

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


# -- processes -------------------------------------------------------------------


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL: only this process, by its pid."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout)


class FakeGitHubProcess:
    """``python -m bench.fake_github`` knowing the given repositories."""

    def __init__(self, repos: Sequence[str], log: Path) -> None:
        self.repos = list(repos)
        self.log = log
        self.url = ""
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> FakeGitHubProcess:
        args = [arg for repo in self.repos for arg in ("--repo", repo)]
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [PYTHON, "-m", "bench.fake_github", *args],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=log,
            )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode().strip()
        if not line.startswith("URL "):
            stop_process(self.process)
            raise RuntimeError(f"fake GitHub did not start: {line!r}")
        self.url = line.split(" ", 1)[1]
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            stop_process(self.process)
            if self.process.stdout is not None:
                self.process.stdout.close()


class Server:
    """Hobotnica (``python -m api serve``) as a subprocess, plus API helpers."""

    def __init__(
        self,
        root: Path,
        github_url: str,
        env: Mapping[str, str] | None = None,
        *,
        name: str = "var",
        python: str | None = None,
        source: Path | None = None,
    ) -> None:
        self.root = root
        self.data_dir = root / name
        self.process = ServerProcess(
            self.data_dir,
            {
                "HOBOTNICA_GITHUB_API_URL": github_url,
                "HOBOTNICA_GITHUB_CLONE_URL": clone_url_template(root),
                "HOBOTNICA_LOG_LEVEL": "INFO",
                **(env or {}),
            },
            python=python,
            source=source,
        )
        self.http = Http(self.process.port)

    @property
    def port(self) -> int:
        return self.process.port

    @property
    def url(self) -> str:
        return self.process.url

    @property
    def pid(self) -> int:
        assert self.process.process is not None
        return self.process.process.pid

    def __enter__(self) -> Server:
        self.process.start(timeout=60)
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()
        if self.process.process is not None:
            stop_process(self.process.process, timeout=30)

    def memory_kb(self) -> dict[str, int]:
        return memory_kb(self.pid)

    def register(self, owner: str, name: str) -> dict[str, Any]:
        """Register a repository and wait for its clone; returns the repository."""
        repository: dict[str, Any] = self.http.json(
            "POST",
            "/api/repositories",
            {"owner": owner, "name": name},
            auth_headers(),
            expect=202,
        )
        job = self.wait_job(owner, name, 1, timeout=60)
        if job["status"] != "success":
            raise RuntimeError(f"clone of {owner}/{name} failed: {job}")
        return repository

    def set_env(
        self,
        owner: str,
        name: str,
        secrets: Mapping[str, str],
        variables: Mapping[str, str] | None = None,
    ) -> None:
        self.http.json(
            "PUT",
            f"/api/repositories/{owner}/{name}/env",
            {"vars": dict(variables or {}), "secrets": dict(secrets)},
            auth_headers(),
        )

    def job(self, owner: str, name: str, number: int) -> dict[str, Any]:
        job: dict[str, Any] = self.http.json(
            "GET",
            f"/api/repositories/{owner}/{name}/jobs/{number}",
            None,
            auth_headers(),
        )
        return job

    def wait_job(
        self,
        owner: str,
        name: str,
        number: int,
        timeout: float = 120.0,
        interval: float = 0.01,
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(owner, name, number)
            if job["status"] in FINISHED:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job #{number} of {owner}/{name}: {job['status']}")
            time.sleep(interval)

    def log_path(self, repository_id: int, number: int) -> Path:
        return self.data_dir / "logs" / str(repository_id) / f"{number}.log"


def clone_url_template(root: Path) -> str:
    return f"file://{root}/remotes/{{owner}}/{{name}}.git"


def webhook_path(repository: Mapping[str, Any]) -> str:
    return "/api/" + str(repository["webhook"]["url"]).split("/api/", 1)[1]


def register_remotes(
    server: Server, root: Path, owner: str, names: Sequence[str], makefile: str
) -> tuple[dict[str, GitRemote], dict[str, dict[str, Any]]]:
    """A bare remote with ``makefile`` per name, each registered (and cloned)."""
    remotes = {}
    repositories = {}
    for name in names:
        remotes[name] = GitRemote(root, owner, name)
        remotes[name].commit({"Makefile": makefile}, "initial")
        repositories[name] = server.register(owner, name)
    return remotes, repositories


def push_body(sha: str, branch: str, owner: str, name: str) -> bytes:
    repository = {"full_name": f"{owner}/{name}"}
    return json.dumps(push_payload(sha, branch, repository=repository)).encode()


def push_to_repository(
    http: Http, repository: Mapping[str, Any], sha: str, owner: str, name: str
) -> bytes:
    """A signed push of ``sha`` to ``main`` through the repository's webhook."""
    body = push_body(sha, "main", owner, name)
    secret = str(repository["webhook"]["secret"])
    status, answer = http.request(
        "POST", webhook_path(repository), body, webhook_headers(body, secret)
    )
    assert status == 202, answer
    return answer


def iso_to_epoch(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def rotate(items: Sequence[str], round_number: int) -> list[str]:
    """The subjects in a different order each round (fair warm caches)."""
    shift = round_number % len(items)
    return [*items[shift:], *items[:shift]]


class PeerWebhook:
    """adnanh/webhook (Debian's ``webhook``) serving the given hooks."""

    def __init__(self, root: Path, hooks: Sequence[Mapping[str, Any]]) -> None:
        self.root = root
        self.hooks = hooks
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, hook_id: str) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/{hook_id}"

    def path(self, hook_id: str) -> str:
        return f"/hooks/{hook_id}"

    def __enter__(self) -> PeerWebhook:
        binary = ensure_tool("webhook")
        hooks_file = self.root / "hooks.json"
        hooks_file.write_text(json.dumps(list(self.hooks), indent=2))
        log = (self.root / "webhook.log").open("ab")
        self.process = subprocess.Popen(
            [
                binary,
                "-hooks",
                str(hooks_file),
                "-ip",
                "127.0.0.1",
                "-port",
                str(self.port),
                "-nopanic",
            ],
            cwd=self.root,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        wait_listening(self.port, 10, "webhook (see webhook.log)", self.process)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            stop_process(self.process)


def wait_listening(
    port: int,
    timeout: float,
    what: str,
    process: subprocess.Popen[bytes] | None = None,
) -> None:
    """Poll until ``port`` on loopback accepts a connection; fail at once
    if ``process`` (the one meant to listen) has exited."""

    def listening() -> bool:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False

    wait_for(listening, timeout, f"{what} listening", interval=0.02)


def hmac_rule(secret: str, branch: str) -> dict[str, Any]:
    """webhook's trigger rule: a valid X-Hub-Signature-256 and ``ref``."""
    return {
        "and": [
            {
                "match": {
                    "type": "payload-hmac-sha256",
                    "secret": secret,
                    "parameter": {"source": "header", "name": "X-Hub-Signature-256"},
                }
            },
            {
                "match": {
                    "type": "value",
                    "value": f"refs/heads/{branch}",
                    "parameter": {"source": "payload", "name": "ref"},
                }
            },
        ]
    }
