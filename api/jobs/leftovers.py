"""Processes a dead instance left behind, found by the marker they carry.

Every process a job starts has ``HOBOTNICA_RUN=<instance>/<job>`` in its
environment (``executor.MARKER_NAME``), and so has everything those start in
turn, whatever process group or session they move to. A server that finds
running jobs of a dead instance looks for that instance's marker in /proc
and kills the marked processes together with their process groups (so that
members which dropped the variable go too). At the end of each job the same
is done for its own marker: a daemon that started a session of its own
outlives the job's process group.
"""

from __future__ import annotations

import contextlib
import os
import signal

from api.jobs.executor import MARKER_NAME

PROC = "/proc"


def marked_processes(prefix: str, *, exact: bool = False) -> list[int]:
    """Pids whose ``MARKER_NAME`` value starts with ``prefix`` (is it, with
    ``exact``) (Linux; only processes whose environment this user may read)."""
    wanted = f"{MARKER_NAME}={prefix}".encode()
    found = []
    with contextlib.suppress(FileNotFoundError), os.scandir(PROC) as entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                with open(os.path.join(entry.path, "environ"), "rb") as file:
                    environ = file.read()
            except OSError:  # gone, or not ours
                continue
            items = environ.split(b"\0")
            if exact:
                matched = wanted in items
            else:
                matched = any(item.startswith(wanted) for item in items)
            if matched:
                found.append(int(entry.name))
    return found


def kill_marked(prefix: str, *, exact: bool = False) -> int:
    """SIGKILL the marked processes and their process groups; returns how
    many marked processes there were."""
    pids = marked_processes(prefix, exact=exact)
    groups = set()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            groups.add(os.getpgid(pid))
    for pgid in groups - {0, 1, os.getpgrp()}:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return len(pids)
