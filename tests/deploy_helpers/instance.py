"""Test stand-in for systemd: starts and stops server processes by pid file.

Used as ``HOBOTNICA_INSTANCE_CMD="python instance.py"`` by deploy/switch,
which calls it as ``instance.py start PORT`` and ``instance.py stop PORT``.

Environment:

- ``DEPLOY_TEST_RUN_DIR``: where pid files (``PORT.pid``), server output
  (``PORT.log``) and the list of every pid ever started (``started.pids``, for
  the tests' cleanup) are kept.
- ``DEPLOY_TEST_SERVE_CMD``: the server command line, ``{port}`` replaced by
  the port, e.g. ``.venv/bin/hobotnica serve --host 127.0.0.1 --port {port}``.
- ``DEPLOY_TEST_SERVE_CMD_<PORT>``: the same for one port only (to make one
  instance fail).

``start`` returns once the process is spawned, like ``systemctl start`` of a
``Type=exec`` unit; ``stop`` sends SIGTERM and returns at once, like
``systemctl stop --no-block``: the server drains and exits on its own.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path


def _run_dir() -> Path:
    return Path(os.environ["DEPLOY_TEST_RUN_DIR"])


def start(port: int) -> int:
    run_dir = _run_dir()
    pid_file = run_dir / f"{port}.pid"
    if pid_file.exists():
        print(f"instance: {port} already has {pid_file}", file=sys.stderr)
        return 1
    template = os.environ.get(
        f"DEPLOY_TEST_SERVE_CMD_{port}", os.environ["DEPLOY_TEST_SERVE_CMD"]
    )
    argv = [part.replace("{port}", str(port)) for part in shlex.split(template)]
    with (run_dir / f"{port}.log").open("ab") as log:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    with (run_dir / "started.pids").open("a") as started:
        started.write(f"{process.pid}\n")
    pid_file.write_text(f"{process.pid}\n")
    print(f"instance: started {port} as pid {process.pid}")
    return 0


def stop(port: int) -> int:
    pid_file = _run_dir() / f"{port}.pid"
    try:
        pid = int(pid_file.read_text())
    except FileNotFoundError:
        print(f"instance: {port} is not running")
        return 0
    pid_file.unlink()
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        print(f"instance: {port} (pid {pid}) had already exited")
        return 0
    print(f"instance: sent SIGTERM to {port} (pid {pid})")
    return 0


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in {"start", "stop"} or not argv[1].isdigit():
        print("usage: instance.py start|stop PORT", file=sys.stderr)
        return 2
    action, port = argv[0], int(argv[1])
    return start(port) if action == "start" else stop(port)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
