"""Hobotnica as a real process on loopback, for end-to-end tests."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

ROOT = Path(__file__).parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


class ServerProcess:
    """``python -m api serve`` with the given environment, output to a file."""

    def __init__(
        self,
        data_dir: Path,
        env: Mapping[str, str] | None = None,
        *,
        port: int | None = None,
        drop_root_override: bool = False,
        inherit_env: bool = True,
        python: str | None = None,
        source: Path | None = None,
    ) -> None:
        self.data_dir = data_dir
        # The checkout to run (``python -m api`` from there); ROOT by default.
        self.source = source
        self.python = python or sys.executable
        self.port = port or free_port()
        base = dict(os.environ) if inherit_env else {}
        for name in list(base):
            if name.startswith("HOBOTNICA_"):
                del base[name]
        self.env = {
            **base,
            "HOBOTNICA_DATA_DIR": str(data_dir),
            "HOBOTNICA_SECRET_KEY": "test-secret-key",
            "HOBOTNICA_LOG_LEVEL": "DEBUG",
            **(env or {}),
        }
        # As root, mode bits bind only without CAP_DAC_OVERRIDE.
        self.prefix = (
            ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]
            if drop_root_override and os.geteuid() == 0
            else []
        )
        self.log_path = data_dir.parent / f"server-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True, timeout: float = 30.0) -> ServerProcess:
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                *self.prefix,
                self.python,
                "-m",
                "api",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            cwd=self.source or ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        if wait:
            self.wait_listening(timeout)
        return self

    def wait_listening(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"server exited early:\n{self.output()}")
            try:
                http_get(self.port, "/api/health", timeout=1)
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"server did not listen in {timeout} s:\n{self.output()}")

    def get(self, path: str) -> tuple[int, bytes]:
        return http_get(self.port, path)

    def signal(self, signum: int = signal.SIGTERM) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)


# The ``servers`` fixture (conftest.py): start(data_dir=None, **env).
ServerFactory = Callable[..., ServerProcess]
