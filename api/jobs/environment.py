"""The environment a job's ``make`` runs with.

Built from nothing: a short allow-list of the host's variables (with
virtual-environment directories taken out of PATH), then Hobotnica's own job
variables, then the owner's and the repository's variables and secrets.
Nothing else of the server's environment (HOBOTNICA_SECRET_KEY, VIRTUAL_ENV,
PYTHONPATH, ...) reaches a job.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

ALLOWED_HOST_VARS = (
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "USER",
    "LOGNAME",
    "SHELL",
    "TMPDIR",
    "TERM",
)
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
# Set by Hobotnica (or steering git and the job's location): users may not
# override them. The other allow-listed names (LANG, TZ, ...) they may.
RESERVED_NAMES = frozenset({"CI", "PATH", "HOME"})
RESERVED_PREFIXES = ("HOBOTNICA", "GIT_")
MAX_NAME_LENGTH = 128
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def is_valid_name(name: str) -> bool:
    return len(name) <= MAX_NAME_LENGTH and _NAME.fullmatch(name) is not None


def is_reserved_name(name: str) -> bool:
    """Whether users may not set ``name`` (compared case-insensitively)."""
    upper = name.upper()
    return upper in RESERVED_NAMES or upper.startswith(RESERVED_PREFIXES)


def host_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The allow-listed part of the server's environment, PATH cleaned.

    Also the base for git's environment (see ``git.git_base_env``).
    """
    env = {name: environ[name] for name in ALLOWED_HOST_VARS if name in environ}
    env["PATH"] = clean_path(environ.get("PATH", DEFAULT_PATH), environ)
    return env


def clean_path(path: str, environ: Mapping[str, str]) -> str:
    """PATH without empty entries and without virtual-environment bin dirs:
    ``$VIRTUAL_ENV/bin`` and any directory next to a ``pyvenv.cfg``."""
    venv = environ.get("VIRTUAL_ENV")
    dropped = {os.path.normpath(os.path.join(venv, "bin"))} if venv else set()
    kept = [
        entry
        for entry in path.split(os.pathsep)
        if entry and os.path.normpath(entry) not in dropped and not _in_venv(entry)
    ]
    return os.pathsep.join(kept) or DEFAULT_PATH


@functools.lru_cache(maxsize=256)
def _in_venv(entry: str) -> bool:
    # Asked for every PATH entry of every job; directories do not turn into
    # virtual environments under a running server.
    return (Path(entry).parent / "pyvenv.cfg").is_file()


def build_job_env(
    host: Mapping[str, str],
    *,
    job_id: str,
    job_kind: str,
    repository: str,
    sha: str | None,
    branch: str | None,
    layers: Sequence[Mapping[str, str]],
) -> dict[str, str]:
    """The complete environment of a job.

    ``host`` is the server's environment (``os.environ``); ``layers`` are the
    user-defined variables, later layers winning (owner, then repository).
    Reserved or invalid names in a layer are skipped: they are rejected when
    stored, this only guards against old or hand-edited data.
    """
    env = host_env(host)
    env |= {
        "CI": "1",
        "HOBOTNICA": "1",
        "HOBOTNICA_JOB": job_id,
        "HOBOTNICA_JOB_KIND": job_kind,
        "HOBOTNICA_REPOSITORY": repository,
    }
    if sha:
        env["GIT_COMMIT"] = sha
    if branch:
        env["GIT_BRANCH"] = branch.removeprefix("refs/heads/")
    for layer in layers:
        env |= {
            name: value for name, value in layer.items() if _is_settable(name, value)
        }
    return env


def _is_settable(name: str, value: str) -> bool:
    return is_valid_name(name) and not is_reserved_name(name) and "\0" not in value
