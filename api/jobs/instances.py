"""Which Hobotnica processes are alive, told by locks the kernel releases.

Every process holds an exclusive ``flock`` on ``instances/<id>.lock`` for its
whole life. The kernel drops the lock when the process dies, even by SIGKILL,
so a running job whose runner's lock can be taken belongs to a dead process.

A lock file is created and locked under a temporary name, then renamed into
place: a ``<id>.lock`` that others can see is always already locked, so a
probe never mistakes a starting process for a dead one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
import uuid
from pathlib import Path

# Lock files on their way into place; never probed as instances.
TEMP_PREFIX = ".starting-"
# A temporary file older than this and not locked was left by a crash.
STALE_TEMP_SECONDS = 60.0


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
        temp = self.folder / f"{TEMP_PREFIX}{self.instance_id}-{uuid.uuid4().hex[:8]}"
        fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.write(fd, f"{os.getpid()}\n".encode())
            os.replace(temp, self.path)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
            raise
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
    return not _remove_if_unlocked(folder / f"{instance_id}.lock")


def others_alive(folder: Path, instance_id: str) -> bool:
    """Whether any process but ``instance_id`` holds its instance lock.

    Also removes what crashed processes left behind.
    """
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return False
    alive = False
    for name in names:
        if name.startswith(TEMP_PREFIX):
            _remove_stale_temp(folder / name)
        elif name.endswith(".lock") and name != f"{instance_id}.lock":
            alive = is_alive(folder, name.removesuffix(".lock")) or alive
    return alive


def _remove_stale_temp(path: Path) -> None:
    """Remove a temporary lock file its dead creator never renamed.

    A fresh one is left alone: its creator may not have locked it yet, and
    taking its lock for a moment would make the creator fail.
    """
    with contextlib.suppress(FileNotFoundError):
        if time.time() - path.stat().st_mtime > STALE_TEMP_SECONDS:
            _remove_if_unlocked(path)


def _remove_if_unlocked(path: Path) -> bool:
    """Remove ``path`` if nobody holds its lock; False if it is held."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    else:
        # Nobody holds it: its owner died.
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return True
    finally:
        os.close(fd)
