"""Pieces shared by the deploy tests: tools, free ports, nginx in a private prefix.

Nothing here touches a root path: nginx gets its own prefix, pid file, error
log and temp dirs under a test directory, listens on 127.0.0.1 only, and runs
in the foreground (``daemon off``) as a child process of the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.machinery
import importlib.util
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import aiohttp

HELPERS = Path(__file__).resolve().parent
REPO = HELPERS.parents[1]
DEPLOY = REPO / "deploy"
SWITCH = DEPLOY / "switch"
UNIT = DEPLOY / "systemd" / "hobotnica@.service"
SITE_CONF = DEPLOY / "nginx" / "hobotnica.conf"
UPSTREAM_CONF = DEPLOY / "nginx" / "upstream.conf"
INSTANCE_HELPER = HELPERS / "instance.py"
STANDIN = HELPERS / "standin.py"

_apt_updated = False


def apt_install(*packages: str) -> str | None:
    """Install Debian packages (apt-get update once per session first).

    Returns None on success, else the reason it could not be done.
    """
    global _apt_updated  # noqa: PLW0603 - one update per test session
    apt_get = shutil.which("apt-get")
    if apt_get is None:
        return "apt-get is not available"
    if os.geteuid() != 0:
        return "installing packages needs root"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if not _apt_updated:
        update = subprocess.run(
            [apt_get, "update", "-q"], env=env, capture_output=True, check=False
        )
        if update.returncode != 0:
            return "apt-get update failed: " + update.stderr.decode(errors="replace")
        _apt_updated = True
    install = subprocess.run(
        [apt_get, "install", "-y", "-q", "--no-install-recommends", *packages],
        env=env,
        capture_output=True,
        check=False,
    )
    if install.returncode != 0:
        return "apt-get install failed: " + install.stderr.decode(errors="replace")
    return None


def ensure_nginx() -> tuple[str | None, str]:
    """The nginx binary (installed with apt-get when missing), or why not."""
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
    if found:
        return found, ""
    reason = apt_install("nginx-light")
    if reason is not None:
        reason = apt_install("nginx")
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
    return found, reason or ""


def ensure_systemd_analyze() -> tuple[str | None, str]:
    """systemd-analyze (Debian's `systemd` package when missing), or why not."""
    found = shutil.which("systemd-analyze")
    if found:
        return found, ""
    reason = apt_install("systemd")
    return shutil.which("systemd-analyze"), reason or ""


def free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 right now (held together so they differ)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def listening(port: int) -> Iterator[socket.socket]:
    """Something else listening on 127.0.0.1:`port` for a while."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen()
        yield sock


def wait_port(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(port):
            return True
        time.sleep(0.05)
    return False


def render_site(upstream_file: Path, listen_port: int, access_log: Path) -> str:
    """deploy/nginx/hobotnica.conf with its three host paths pointed at a test dir."""
    text = SITE_CONF.read_text()
    replacements = {
        "include /etc/hobotnica/upstream.conf;": f"include {upstream_file};",
        "    listen 80;\n": f"    listen 127.0.0.1:{listen_port};\n",
        "    listen [::]:80;\n": "",
        "access_log /var/log/nginx/hobotnica.access.log hobotnica;": (
            f"access_log {access_log} hobotnica;"
        ),
    }
    for old, new in replacements.items():
        if text.count(old) != 1:
            raise AssertionError(f"{SITE_CONF} should contain {old!r} exactly once")
        text = text.replace(old, new)
    return text


class Nginx:
    """nginx with the real site config, in its own prefix under `root`."""

    def __init__(self, binary: str, root: Path, upstream_file: Path) -> None:
        self.binary = binary
        self.root = root
        self.port = free_ports(1)[0]
        self.upstream_file = upstream_file
        self.error_log = root / "error.log"
        self.access_log = root / "access.log"
        self.conf = root / "nginx.conf"
        self.process: subprocess.Popen[bytes] | None = None
        for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (root / "temp" / name).mkdir(parents=True, exist_ok=True)
        (root / "site.conf").write_text(
            render_site(upstream_file, self.port, self.access_log)
        )
        temp = root / "temp"
        self.conf.write_text(
            f"""daemon off;
worker_processes 2;
pid {root}/nginx.pid;
error_log {self.error_log} info;
events {{ worker_connections 512; }}
http {{
    default_type application/octet-stream;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    include {root}/site.conf;
}}
"""
        )

    @property
    def command(self) -> list[str]:
        """nginx with this prefix; deploy/switch appends `-t` or `-s reload`."""
        return [
            self.binary,
            "-p",
            str(self.root),
            "-e",
            str(self.error_log),
            "-c",
            str(self.conf),
        ]

    @property
    def command_line(self) -> str:
        return shlex.join(self.command)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def test_config(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.command, "-t"], capture_output=True, text=True, check=False
        )

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if not wait_port(self.port, 10):
            self.stop()
            raise RuntimeError(
                f"nginx did not start; {self.error_log}:\n{self.error_log.read_text()}"
            )

    def workers(self) -> set[int]:
        """The pids of the master's worker processes (old ones included)."""
        assert self.process is not None
        return children(self.process.pid)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGQUIT)  # graceful shutdown
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


def children(pid: int) -> set[int]:
    """The pids of the live child processes of ``pid``."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if fields[0] != "Z" and int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie left for init to reap."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_exit(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return not alive(pid)


def kill_started(run_dir: Path) -> None:
    """SIGKILL every process group that the instance helper started."""
    started = run_dir / "started.pids"
    if not started.exists():
        return
    for line in started.read_text().split():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(int(line), signal.SIGKILL)


def load_switch() -> ModuleType:
    """deploy/switch (a script without .py) imported as a module."""
    name = "hobotnica_deploy_switch"
    if name in sys.modules:
        return sys.modules[name]
    loader = importlib.machinery.SourceFileLoader(name, str(SWITCH))
    spec = importlib.util.spec_from_loader(name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    loader.exec_module(module)
    return module


@dataclass
class Deployment:
    """nginx on a free port in front of two instance ports, driven by the switch.

    The upstream file starts pointing at `active`; instances are started and
    stopped by tests/deploy_helpers/instance.py (pid files under `run_dir`)
    with `serve_cmd` (``{port}`` is replaced).
    """

    root: Path
    nginx: Nginx
    upstream: Path
    run_dir: Path
    active: int
    idle: int
    env: dict[str, str]

    @classmethod
    def create(
        cls,
        root: Path,
        nginx_binary: str,
        serve_cmd: list[str],
        extra_env: dict[str, str] | None = None,
    ) -> Deployment:
        active, idle = free_ports(2)
        run_dir = root / "instances"
        run_dir.mkdir(parents=True)
        upstream = root / "upstream.conf"
        upstream.write_text(load_switch().render_upstream(active, idle))
        nginx = Nginx(nginx_binary, root / "nginx", upstream)
        env = {
            **os.environ,
            "HOBOTNICA_UPSTREAM_FILE": str(upstream),
            "HOBOTNICA_SWITCH_LOCK": str(root / "switch.lock"),
            "HOBOTNICA_PORTS": f"{active} {idle}",
            "HOBOTNICA_INSTANCE_CMD": shlex.join(
                [sys.executable, str(INSTANCE_HELPER)]
            ),
            "HOBOTNICA_NGINX_CMD": nginx.command_line,
            "HOBOTNICA_HEALTH_TIMEOUT": "15",
            "DEPLOY_TEST_RUN_DIR": str(run_dir),
            "DEPLOY_TEST_SERVE_CMD": shlex.join(serve_cmd),
            **(extra_env or {}),
        }
        return cls(root, nginx, upstream, run_dir, active, idle, env)

    def instance(self, action: str, port: int) -> None:
        subprocess.run(
            [sys.executable, str(INSTANCE_HELPER), action, str(port)],
            env=self.env,
            check=True,
            capture_output=True,
            timeout=30,
        )

    def pid(self, port: int) -> int:
        return int((self.run_dir / f"{port}.pid").read_text())

    def log(self, port: int) -> str:
        path = self.run_dir / f"{port}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def close(self) -> None:
        self.nginx.stop()
        kill_started(self.run_dir)


@dataclass
class SwitchRun:
    returncode: int
    stdout: str
    stderr: str
    seconds: float


async def run_switch(env: dict[str, str], *args: str) -> SwitchRun:
    """Run deploy/switch without blocking the event loop (fakes live in it)."""
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(SWITCH),
        *args,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    return SwitchRun(
        process.returncode if process.returncode is not None else -1,
        stdout.decode(errors="replace"),
        stderr.decode(errors="replace"),
        time.monotonic() - started,
    )


async def switch_under_health_load(
    env: dict[str, str], url: str
) -> tuple[SwitchRun, Load]:
    """Run deploy/switch while ``GET /api/health`` is asked through nginx."""
    load = Load(url, ["/api/health"])
    load.start()
    try:
        switched = await run_switch(env)
    finally:
        await load.stop()
    return switched, load


@dataclass
class Load:
    """Clients that send requests through nginx until stopped.

    A path is a GET, or a POST with an empty JSON body if it starts with
    ``POST ``. Every answer is recorded as its status (or the exception's
    name); the body of the last 200 answers tells which instance served them.
    """

    base_url: str
    paths: list[str]
    headers: dict[str, str] = field(default_factory=dict)
    clients: int = 4
    outcomes: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    last_bodies: deque[bytes] = field(default_factory=lambda: deque(maxlen=20))
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.outcomes.values())

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._client(number)) for number in range(self.clients)
        ]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def _client(self, number: int) -> None:
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            sent = number
            while not self._stop.is_set():
                path = self.paths[sent % len(self.paths)]
                sent += 1
                method, _, url = path.rpartition(" ")
                try:
                    async with session.request(
                        method or "GET",
                        self.base_url + url,
                        headers=self.headers,
                        json={} if method == "POST" else None,
                    ) as response:
                        body = await response.read()
                        outcome = str(response.status)
                except (aiohttp.ClientError, TimeoutError) as err:
                    body, outcome = b"", type(err).__name__
                self.outcomes[outcome] += 1
                if outcome == "200":
                    self.last_bodies.append(body)
                elif outcome != "202" and len(self.failures) < 20:
                    self.failures.append(f"{path}: {outcome} {body[:200]!r}")
                # Leave the event loop to the rest of the test now and then.
                await asyncio.sleep(0)
