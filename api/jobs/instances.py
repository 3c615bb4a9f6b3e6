"""Which Hobotnica processes are alive, told by locks the kernel releases.

Every process holds an exclusive ``flock`` on ``instances/<id>.lock`` for its
whole life. The kernel drops the lock when the process dies, even by SIGKILL,
so a running job whose runner's lock can be taken belongs to a dead process.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import uuid
from pathlib import Path


def new_instance_id() -> str:
    host = "".join(c for c in socket.gethostname() if c.isalnum() or c in "-.")
    return f"{host[:40] or 'host'}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class InstanceLock:
    def __init__(self, folder: Path, instance_id: str) -> None:
        self.folder = folder
        self.instance_id = instance_id
        self._fd: int | None = None

    @property
    def path(self) -> Path:
        return self.folder / f"{self.instance_id}.lock"

    def acquire(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self._fd)
        self._fd = None


def is_alive(folder: Path, instance_id: str) -> bool:
    """True while the process that took ``instance_id``'s lock still runs."""
    if not instance_id or "/" in instance_id or instance_id.startswith("."):
        return False
    path = folder / f"{instance_id}.lock"
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        # Nobody holds it: the owner died; tidy up its file.
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return False
    finally:
        os.close(fd)


def others_alive(folder: Path, instance_id: str) -> bool:
    """Whether any process but ``instance_id`` holds its instance lock."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return False
    return any(
        is_alive(folder, name.removesuffix(".lock"))
        for name in names
        if name.endswith(".lock") and name != f"{instance_id}.lock"
    )
