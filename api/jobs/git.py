"""Git invocations as argument lists; credentials only through the environment.

The runner executes the steps built here one by one with ``run_process``,
using ``git_base_env(...) | auth_env(token)`` as their environment. The token
travels as an ``http.extraHeader`` given in ``GIT_CONFIG_*`` variables (git
2.31+): never on a command line, in a URL or in ``.git/config``.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from api.jobs.process import run_process

REMOTE = "origin"
REV_PARSE_TIMEOUT = 30.0

_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
# Control characters, space and the characters git forbids anywhere in a ref.
_REF_FORBIDDEN = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")
_AUTH_FAILURES = re.compile(
    "|".join(
        (
            r"Authentication failed for",
            r"could not read (Username|Password) for",
            r"terminal prompts disabled",
            r"Invalid username or (password|token)",
            r"HTTP Basic: Access denied",
            r"Repository not found",
            r"repository '[^']*' not found",
            r"requested URL returned error: (401|403)",
            r"Write access to repository not granted",
            r"Permission to \S+ denied",
            r"Permission denied \(publickey",
        )
    ),
    re.IGNORECASE,
)


def git_base_env(base: Mapping[str, str]) -> dict[str, str]:
    """``base`` (an allow-listed host env) made fit for running git.

    Isolates git from the host's system and global config (credential
    helpers, url rewrites, hooks paths), makes its messages parseable and
    drops any inherited ``GIT_*`` variable.
    """
    env = {key: value for key, value in base.items() if not key.startswith("GIT_")}
    env.update(
        {
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": "/dev/null",
            "LC_ALL": "C",
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_ASKPASS": "",
            "GIT_EDITOR": "true",
            "GIT_PAGER": "cat",
            # refs/replace would let a job's make swap the objects checked out.
            "GIT_NO_REPLACE_OBJECTS": "1",
        }
    )
    return env


def auth_env(token: str | None) -> dict[str, str]:
    """Variables that disable prompts and, with a token, authenticate HTTPS.

    An empty ``GIT_ASKPASS`` stops git from looking further for an askpass
    program (``core.askPass``, ``SSH_ASKPASS``); with prompts disabled, a
    missing or rejected credential fails at once instead of hanging.
    """
    env = {"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": ""}
    if token:
        basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
        env |= {
            "GIT_CONFIG_COUNT": "1",
            "GIT_CONFIG_KEY_0": "http.extraHeader",
            "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}",
        }
    return env


def safe_ref(ref: str) -> bool:
    """Whether ``ref`` is a well-formed ref or branch name we may pass to git.

    The rules of ``git check-ref-format --allow-onelevel``, plus: no leading
    ``-`` (never an option) or ``+`` (a forced refspec), at most 255 chars.
    """
    if not ref or len(ref) > 255 or ref.startswith(("-", "+", "/")) or ref == "@":
        return False
    if ref.endswith(("/", ".")) or "//" in ref or ".." in ref or "@{" in ref:
        return False
    if _REF_FORBIDDEN.search(ref):
        return False
    return all(
        not part.startswith(".") and not part.endswith(".lock")
        for part in ref.split("/")
    )


def is_sha(value: str) -> bool:
    """A full lower-case object id (SHA-1 or SHA-256)."""
    return _SHA.fullmatch(value) is not None


def clone_steps(url: str, dest: Path, branch: str) -> list[list[str]]:
    """Clone the tracked branch into ``dest`` (which must not exist yet).

    A full clone of that one branch: no ``--filter``, because a partial
    clone fetches missing blobs lazily, so every later ``checkout`` or
    ``make`` that reads history would need the network and the token. Other
    refs and shas are fetched explicitly by ``checkout_steps``, so
    ``--single-branch`` costs nothing later. Tags on that branch come along
    (``git describe`` in Makefiles).
    """
    _check_ref(branch)
    if url.startswith("-"):
        raise ValueError(f"invalid clone URL: {url!r}")
    return [
        [
            "git",
            "clone",
            "--single-branch",
            "--no-recurse-submodules",
            f"--branch={branch}",
            "--",
            url,
            str(dest),
        ]
    ]


@dataclass(frozen=True)
class CheckoutSteps:
    """The commands that bring a clone to a commit.

    ``fetch`` writes only under ``.git`` and ``clean`` only in the work tree,
    so the two may run at the same time; ``checkout`` needs both done. The
    tree is the same as with ``clean`` after ``checkout``: ``checkout
    --force`` writes the commit's tracked files and removes the old commit's,
    ``clean -ffdx`` removes everything that is not tracked.
    """

    fetch: list[str]
    clean: list[str]
    checkout: list[str]

    def __iter__(self) -> Iterator[list[str]]:
        """One after the other, for a caller that runs them in turn."""
        return iter((self.fetch, self.clean, self.checkout))


def checkout_steps(
    repo: Path, *, branch: str | None, ref: str | None, sha: str | None
) -> CheckoutSteps:
    """Fetch what is needed and rewind the working tree to it.

    - ``sha`` (with or without ``branch``/``ref``): one fetch of the branch
      or ref together with the sha itself: one round trip on the usual path
      (the sha is the branch's head), and after a force push it still brings
      the now unreachable commit (GitHub and protocol v2 servers allow that).
    - ``ref`` (branch, tag or full ref name): fetched into ``FETCH_HEAD``.
    - ``branch``: fetched into ``refs/remotes/origin/<branch>``.

    ``git clean -ffdx`` (untracked and ignored files, nested repositories
    too) and a forced detached checkout make the work tree the commit's.
    """
    git = ["git", "-C", str(repo)]
    fetch = [*git, "fetch", "--force", "--no-recurse-submodules", REMOTE, "--"]
    refspecs: list[str] = []
    target: str | None = None
    if ref is not None:
        _check_ref(ref)
        refspecs.append(ref)
        target = "FETCH_HEAD"
    elif branch is not None:
        _check_ref(branch)
        tracking = f"refs/remotes/{REMOTE}/{branch}"
        refspecs.append(f"+refs/heads/{branch}:{tracking}")
        target = tracking
    if sha is not None:
        if not is_sha(sha):
            raise ValueError(f"invalid commit sha: {sha!r}")
        refspecs.append(sha)
        target = sha
    if target is None:
        raise ValueError("checkout needs a branch, a ref or a sha")
    return CheckoutSteps(
        fetch=[*fetch, *refspecs],
        clean=[*git, "clean", "-ffdx"],
        # ``--`` after the commit: it is a revision, never a path.
        checkout=[
            *git,
            "checkout",
            "--force",
            "--detach",
            f"{target}^{{commit}}",
            "--",
        ],
    )


async def rev_parse(repo: Path, rev: str, env: Mapping[str, str]) -> str | None:
    """The commit ``rev`` (e.g. ``HEAD``) resolves to in ``repo``, or None
    (also when ``repo`` does not exist)."""
    if not rev or rev.startswith("-"):
        return None
    output = bytearray()
    argv = ["git", "-C", str(repo), "rev-parse", "--verify", "--quiet"]
    try:
        result = await run_process(
            [*argv, "--end-of-options", f"{rev}^{{commit}}"],
            cwd=repo,
            env=env,
            sink=output.extend,
            timeout=REV_PARSE_TIMEOUT,
            kill_grace=1.0,
        )
    except (FileNotFoundError, NotADirectoryError):  # no such repo (cwd)
        return None
    sha = output.decode(errors="replace").strip()
    return sha if result.returncode == 0 and is_sha(sha) else None


def short_branch(ref: str) -> str:
    """A branch named by its full ref (``refs/heads/main``, as a push names
    it) is the branch (``main``)."""
    return ref.removeprefix("refs/heads/")


_MISSING_ON_REMOTE = re.compile(
    r"couldn't find remote ref|not our ref|unadvertised object"
)


def is_missing_on_remote(output: str) -> bool:
    """Whether a fetch failed because the ref or commit it asked for is not
    on the remote (the clone itself is fine)."""
    return _MISSING_ON_REMOTE.search(output) is not None


def is_auth_failure(output: str) -> bool:
    """Whether git's output says the credentials are missing or rejected,
    or the repository is invisible to them (GitHub answers "not found")."""
    return _AUTH_FAILURES.search(output) is not None


# What ``clone_steps`` leaves in .git/config; a job's make may change it
# (a remote URL, core.worktree, core.hooksPath from husky, sparse checkout).
_CONFIG = """\
[core]
\trepositoryformatversion = 0
\tfilemode = true
\tbare = false
\tlogallrefupdates = true
[remote "origin"]
\turl = "{url}"
\tfetch = "+refs/heads/{branch}:refs/remotes/origin/{branch}"
[branch "{branch}"]
\tremote = origin
\tmerge = "refs/heads/{branch}"
"""
# Files under .git that change what later git steps do or check out.
_STEERING_FILES = (
    "info/attributes",
    "info/sparse-checkout",
    "info/grafts",
    "commondir",
    "gitdir",
)


def is_clone(repo: Path) -> bool:
    """Whether ``repo`` holds a repository of its own (``.git`` a real
    directory, not a link or a ``gitdir:`` file pointing elsewhere)."""
    git_dir = repo / ".git"
    return git_dir.is_dir() and not git_dir.is_symlink()


def restore_git_state(repo: Path, *, url: str, branch: str) -> list[str]:
    """Undo what an earlier job's make may have done to ``repo/.git``,
    before any git step of the next job: its config back to the clone's
    (remote URL included: the token goes only there), no hooks (they would
    run with the token in their environment), no attributes, sparse
    checkout, grafts or worktree links, and an index without skip-worktree
    or intent-to-add entries (git then writes version 3). Stale locks go
    too (see ``remove_stale_locks``). Returns lines for the job's log.

    Only call this while no git process can be running in ``repo``.
    """
    git_dir = repo / ".git"
    notes = [
        f"[hobotnica] removed a stale git lock: {lock.name}"
        for lock in remove_stale_locks(repo)
    ]
    config = _CONFIG.format(url=_escaped(url), branch=_escaped(branch))
    path = git_dir / "config"
    try:
        current = path.read_text()
    except (FileNotFoundError, UnicodeDecodeError):
        current = None
    if current != config:
        temporary = git_dir / "config.hobotnica"
        _remove(temporary)  # never write through a link planted there
        with temporary.open("x") as file:
            file.write(config)
        os.replace(temporary, path)
        if current is not None:
            notes.append("[hobotnica] .git/config had changed: restored")
    hooks = git_dir / "hooks"
    samples_only = (
        hooks.is_dir()
        and not hooks.is_symlink()
        and all(name.endswith(".sample") for name in os.listdir(hooks))
    )
    if _remove(hooks) and not samples_only:  # git clone's samples never run
        notes.append("[hobotnica] removed git hooks")
    if (git_dir / "info").is_symlink():
        _remove(git_dir / "info")
        notes.append("[hobotnica] removed .git/info")
    for name in _STEERING_FILES:
        if _remove(git_dir / name):
            notes.append(f"[hobotnica] removed .git/{name}")
    if _index_version(git_dir / "index") not in (None, 2):
        (git_dir / "index").unlink()
        notes.append("[hobotnica] .git/index had flagged entries: rebuilt")
    return notes


def _remove(path: Path) -> bool:
    """Remove a file, a link (not what it points to) or a directory tree;
    whether there was one."""
    if path.is_symlink() or path.is_file():
        path.unlink()
        return True
    if path.is_dir():
        shutil.rmtree(path)
        return True
    return False


def _escaped(value: str) -> str:
    """``value`` escaped for a double-quoted string in a git config file."""
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _index_version(path: Path) -> int | None:
    try:
        with path.open("rb") as file:
            header = file.read(8)
    except FileNotFoundError:
        return None
    if len(header) < 8 or header[:4] != b"DIRC":
        return -1  # not an index git wrote: rebuild it
    return int.from_bytes(header[4:], "big")


def remove_stale_locks(repo: Path) -> list[Path]:
    """Delete lock files left by a git that was killed (timeout, shutdown).

    Only call this while no git process can be running in ``repo``: the
    runner's one-job-per-repository rule guarantees it at job start.
    """
    git_dir = repo / ".git"
    removed: list[Path] = []
    # In .git itself (index, HEAD, config, shallow, packed-refs, ...), then
    # anywhere under refs.
    _find_locks(git_dir, removed, recurse=False)
    _find_locks(git_dir / "refs", removed, recurse=True)
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def _find_locks(folder: Path, found: list[Path], *, recurse: bool) -> None:
    """``*.lock`` files in ``folder``: one scandir per folder, no stat."""
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    if recurse:
                        _find_locks(Path(entry.path), found, recurse=True)
                elif entry.name.endswith(".lock"):
                    found.append(Path(entry.path))
    except (FileNotFoundError, NotADirectoryError):
        pass


def _check_ref(ref: str) -> None:
    if not safe_ref(ref):
        raise ValueError(f"invalid ref name: {ref!r}")
