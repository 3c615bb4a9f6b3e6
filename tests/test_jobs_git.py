"""Git steps run for real against bare repositories in tmp_path."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from api.jobs.git import (
    auth_env,
    checkout_steps,
    clone_steps,
    git_base_env,
    is_auth_failure,
    is_sha,
    remove_stale_locks,
    restore_git_state,
    rev_parse,
    safe_ref,
)
from api.jobs.process import Outcome, run_process

TOKEN = "ghp_T0kenThatMustNeverLeak1234567890"
IDENTITY = ("-c", "user.name=t", "-c", "user.email=t@t")


def git(cwd: Path, *args: str) -> str:
    env = git_base_env({"PATH": os.environ["PATH"]})
    done = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


class Upstream:
    """A bare repository plus a work tree that pushes to it."""

    def __init__(self, root: Path) -> None:
        self.bare = root / "origin.git"
        self.work = root / "work"
        self.url = self.bare.as_uri()
        git(root, "init", "-q", "--bare", "-b", "main", str(self.bare))
        git(root, "init", "-q", "-b", "main", str(self.work))
        git(self.work, "remote", "add", "origin", str(self.bare))

    def commit(self, name: str, text: str) -> str:
        (self.work / name).write_text(text)
        git(self.work, "add", "--", name)
        git(self.work, *IDENTITY, "commit", "-q", "-m", f"{name}: {text}")
        return git(self.work, "rev-parse", "HEAD")

    def push(self, *refs: str, force: bool = False) -> None:
        git(self.work, "push", "-q", *(["--force"] if force else []), "origin", *refs)


@pytest.fixture
def upstream(tmp_path: Path) -> Upstream:
    up = Upstream(tmp_path)
    up.commit("README", "one")
    up.push("main")
    return up


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    base = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "GIT_DIR": "/nope"}
    return git_base_env(base) | auth_env(TOKEN)


async def run_steps(
    steps: Iterable[list[str]], env: Mapping[str, str], cwd: Path
) -> str:
    output = bytearray()
    for argv in steps:
        result = await run_process(
            argv, cwd=cwd, env=env, sink=output.extend, timeout=30
        )
        assert result.outcome == Outcome.EXITED
        assert result.returncode == 0, output.decode()
    return output.decode()


@pytest.fixture
async def clone(upstream: Upstream, env: dict[str, str], tmp_path: Path) -> Path:
    dest = tmp_path / "clones" / "owner" / "name"
    dest.parent.mkdir(parents=True)
    await run_steps(clone_steps(upstream.url, dest, "main"), env, tmp_path)
    return dest


async def head(repo: Path, env: Mapping[str, str]) -> str | None:
    return await rev_parse(repo, "HEAD", env)


async def test_clone(upstream: Upstream, clone: Path, env: dict[str, str]) -> None:
    assert (clone / "README").read_text() == "one"
    assert await head(clone, env) == git(upstream.work, "rev-parse", "HEAD")


async def test_checkout_branch_head(
    upstream: Upstream, clone: Path, env: dict[str, str]
) -> None:
    upstream.commit("README", "two")
    new = upstream.commit("other", "file")
    upstream.push("main")
    await run_steps(
        checkout_steps(clone, branch="main", ref=None, sha=None), env, clone
    )
    assert await head(clone, env) == new
    assert (clone / "README").read_text() == "two"
    assert git(clone, "rev-parse", "refs/remotes/origin/main") == new


async def test_checkout_older_sha(
    upstream: Upstream, clone: Path, env: dict[str, str]
) -> None:
    old = git(upstream.work, "rev-parse", "HEAD")
    upstream.commit("README", "two")
    upstream.push("main")
    steps = checkout_steps(clone, branch="main", ref=None, sha=old)
    await run_steps(steps, env, clone)
    assert await head(clone, env) == old
    assert (clone / "README").read_text() == "one"


async def test_checkout_force_pushed_sha(
    upstream: Upstream, clone: Path, env: dict[str, str]
) -> None:
    base = git(upstream.work, "rev-parse", "HEAD")
    lost = upstream.commit("README", "pushed, then force-pushed away")
    upstream.push("main")
    git(upstream.work, "reset", "-q", "--hard", base)
    upstream.commit("README", "rewritten")
    upstream.push("main", force=True)

    steps = checkout_steps(clone, branch="main", ref=None, sha=lost)
    assert len([step for step in steps if "fetch" in step]) == 1
    await run_steps(steps, env, clone)
    assert await head(clone, env) == lost
    rewritten = git(upstream.work, "rev-parse", "HEAD")
    assert git(clone, "rev-parse", "refs/remotes/origin/main") == rewritten
    assert (clone / "README").read_text() == "pushed, then force-pushed away"


@pytest.mark.parametrize("ref", ["v1", "refs/tags/v1", "feature", "refs/heads/feature"])
async def test_checkout_ref(
    upstream: Upstream, clone: Path, env: dict[str, str], ref: str
) -> None:
    tagged = git(upstream.work, "rev-parse", "HEAD")
    git(
        upstream.work, *IDENTITY, "tag", "-a", "-m", "release", "v1"
    )  # annotated: peeled
    git(upstream.work, "branch", "feature")
    upstream.commit("README", "after the tag")
    upstream.push("main", "v1", "feature")
    await run_steps(checkout_steps(clone, branch=None, ref=ref, sha=None), env, clone)
    assert await head(clone, env) == tagged


async def test_checkout_missing_ref_fails(clone: Path, env: dict[str, str]) -> None:
    output = bytearray()
    fetch = checkout_steps(clone, branch=None, ref="nope", sha=None).fetch
    result = await run_process(
        fetch, cwd=clone, env=env, sink=output.extend, timeout=30
    )
    assert result.returncode != 0
    assert b"couldn't find remote ref nope" in output
    assert not is_auth_failure(output.decode())


async def test_checkout_cleans_the_work_tree(
    upstream: Upstream, clone: Path, env: dict[str, str]
) -> None:
    (clone / ".gitignore").write_text("build/\n*.o\n")
    (clone / "build").mkdir()
    (clone / "build" / "out").write_text("artifact")
    (clone / "main.o").write_text("object")
    (clone / "untracked.txt").write_text("junk")
    (clone / "README").write_text("local edit")
    git(clone, "init", "-q", "nested")  # a nested repository goes too (-ff)
    await run_steps(
        checkout_steps(clone, branch="main", ref=None, sha=None), env, clone
    )
    assert sorted(p.name for p in clone.iterdir()) == [".git", "README"]
    assert (clone / "README").read_text() == "one"


async def test_token_never_in_argv_or_repository(
    upstream: Upstream, clone: Path, env: dict[str, str], tmp_path: Path
) -> None:
    sha = git(upstream.work, "rev-parse", "HEAD")
    steps = [
        *clone_steps(upstream.url, tmp_path / "c2", "main"),
        *checkout_steps(clone, branch="main", ref=None, sha=sha),
        *checkout_steps(clone, branch=None, ref="refs/heads/main", sha=None),
    ]
    await run_steps(steps, env, clone)
    encoded = env["GIT_CONFIG_VALUE_0"].split()[-1]
    for argv in steps:
        assert not any(TOKEN in arg or encoded in arg for arg in argv), argv
    for path in [*clone.rglob("*"), *(tmp_path / "c2").rglob("*")]:
        if path.is_file():
            data = path.read_bytes()
            assert TOKEN.encode() not in data, path
            assert encoded.encode() not in data, path
    assert "extraheader" not in (clone / ".git" / "config").read_text().lower()


def test_steps_guard_user_values(tmp_path: Path) -> None:
    sha = "a" * 40
    steps = checkout_steps(tmp_path, branch="main", ref="v1", sha=sha)
    assert steps.fetch[-3:] == ["--", "v1", sha]
    assert steps.checkout[-2:] == [f"{sha}^{{commit}}", "--"]
    assert steps.clean[-2:] == ["clean", "-ffdx"]
    assert list(steps) == [steps.fetch, steps.clean, steps.checkout]
    clone = clone_steps("file:///x.git", tmp_path / "d", "main")[0]
    assert clone[-4:] == ["--branch=main", "--", "file:///x.git", str(tmp_path / "d")]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"branch": None, "ref": None, "sha": None},
        {"branch": "--upload-pack=evil", "ref": None, "sha": None},
        {"branch": None, "ref": "a..b", "sha": None},
        {"branch": "main", "ref": None, "sha": "abc123"},
        {"branch": "main", "ref": None, "sha": "A" * 40},
    ],
)
def test_checkout_steps_reject_bad_values(
    tmp_path: Path, kwargs: dict[str, str]
) -> None:
    with pytest.raises(ValueError):
        checkout_steps(tmp_path, **kwargs)


def test_clone_steps_reject_bad_values(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        clone_steps("--upload-pack=touch /tmp/x", tmp_path, "main")
    with pytest.raises(ValueError):
        clone_steps("file:///x", tmp_path, "-b")


@pytest.mark.parametrize(
    "ref", ["main", "feature/x-1", "v1.0.2", "refs/tags/v1", "release_2024", "a@b"]
)
def test_safe_ref_accepts(ref: str) -> None:
    assert safe_ref(ref)


@pytest.mark.parametrize(
    "ref",
    [
        "", "-rf", "+main", "a..b", "a b", "a~1", "a^", "a:b", "a?", "a*", "a[",
        "/a", "a/", "a//b", "a.", "a.lock", "a/.hidden", ".a", "@", "a@{1}",
        "a\\b", "a\x00", "a\tb", "a\x7f", "x" * 256,
    ],
)  # fmt: skip
def test_safe_ref_rejects(ref: str) -> None:
    assert not safe_ref(ref)


def test_is_sha() -> None:
    assert is_sha("0123456789abcdef0123456789abcdef01234567")
    assert is_sha("0" * 64)
    assert not is_sha("0123456")
    assert not is_sha("0123456789ABCDEF0123456789ABCDEF01234567")
    assert not is_sha("0" * 41)


async def test_rev_parse(upstream: Upstream, clone: Path, env: dict[str, str]) -> None:
    sha = git(clone, "rev-parse", "HEAD")
    git(clone, *IDENTITY, "tag", "-a", "-m", "t", "v9")
    assert await rev_parse(clone, "HEAD", env) == sha
    assert await rev_parse(clone, "v9", env) == sha  # peeled to the commit
    assert await rev_parse(clone, "no-such-ref", env) is None
    assert await rev_parse(clone, "--all", env) is None
    assert await rev_parse(clone / "missing", "HEAD", env) is None


def test_git_base_env_isolates() -> None:
    env = git_base_env({"PATH": "/bin", "GIT_DIR": "/x", "GIT_SSH_COMMAND": "evil"})
    assert env["PATH"] == "/bin"
    assert "GIT_DIR" not in env
    assert "GIT_SSH_COMMAND" not in env
    assert env["GIT_CONFIG_NOSYSTEM"] == "1"
    assert env["GIT_CONFIG_GLOBAL"] == os.devnull
    assert env["LC_ALL"] == "C"
    assert env["GIT_TERMINAL_PROMPT"] == "0"


def test_auth_env() -> None:
    assert "GIT_CONFIG_COUNT" not in auth_env(None)
    assert "GIT_CONFIG_COUNT" not in auth_env("")
    env = auth_env("tok")
    assert env["GIT_CONFIG_KEY_0"] == "http.extraHeader"
    value = env["GIT_CONFIG_VALUE_0"]
    assert value.startswith("Authorization: Basic ")
    assert base64.b64decode(value.split()[-1]) == b"x-access-token:tok"
    assert env["GIT_TERMINAL_PROMPT"] == "0"


async def test_remove_stale_locks(clone: Path, env: dict[str, str]) -> None:
    locks = [
        clone / ".git" / "index.lock",
        clone / ".git" / "refs" / "remotes" / "origin" / "main.lock",
    ]
    for lock in locks:
        lock.parent.mkdir(parents=True, exist_ok=True)
        lock.write_text("")
    assert sorted(remove_stale_locks(clone)) == sorted(locks)
    await run_steps(
        checkout_steps(clone, branch="main", ref=None, sha=None), env, clone
    )
    assert remove_stale_locks(clone) == []


class Recorder:
    """An HTTP server that denies every request and records its auth."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.authorizations: list[str | None] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.authorizations.append(request.headers.get("Authorization"))
        return web.Response(status=self.status, text="denied")


@pytest.mark.parametrize(("status", "token"), [(401, TOKEN), (404, TOKEN), (401, None)])
async def test_token_reaches_git_through_env(
    aiohttp_server: AiohttpServer, tmp_path: Path, status: int, token: str | None
) -> None:
    recorder = Recorder(status)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", recorder.handle)
    server = await aiohttp_server(app)
    url = str(server.make_url("/owner/name.git"))
    env = git_base_env({"PATH": os.environ["PATH"]}) | auth_env(token)
    output = bytearray()
    steps = clone_steps(url, tmp_path / "clone", "main")
    result = await run_process(
        steps[0], cwd=tmp_path, env=env, sink=output.extend, timeout=20
    )
    assert result.outcome == Outcome.EXITED  # failed at once, no prompt
    assert result.returncode == 128
    assert is_auth_failure(output.decode()), output.decode()
    assert recorder.authorizations
    if token is None:
        assert set(recorder.authorizations) == {None}
    else:
        basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
        assert set(recorder.authorizations) == {f"Basic {basic}"}
    assert TOKEN not in output.decode()


async def test_no_askpass_program_is_run(
    aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", Recorder(401).handle)
    server = await aiohttp_server(app)
    askpass = tmp_path / "askpass"
    askpass.write_text(f"#!/bin/sh\ntouch {tmp_path}/asked\necho guessed\n")
    askpass.chmod(0o755)
    host = {"PATH": os.environ["PATH"], "SSH_ASKPASS": str(askpass)}
    env = git_base_env(host) | auth_env(None)
    argv = ["git", "ls-remote", "--", str(server.make_url("/o/n.git"))]
    output = bytearray()
    result = await run_process(
        argv, cwd=tmp_path, env=env, sink=output.extend, timeout=20
    )
    assert result.returncode == 128
    assert not (tmp_path / "asked").exists(), output.decode()
    assert b"terminal prompts disabled" in output


@pytest.mark.parametrize(
    "output",
    [
        "remote: Repository not found.\n"
        "fatal: repository 'https://github.com/o/n.git/' not found",
        "fatal: Authentication failed for 'https://github.com/o/n.git/'",
        "fatal: could not read Username for 'https://github.com': "
        "terminal prompts disabled",
        "remote: Invalid username or password.",
        "fatal: unable to access 'https://x/': The requested URL returned error: 403",
        "git@github.com: Permission denied (publickey).",
    ],
)
def test_is_auth_failure(output: str) -> None:
    assert is_auth_failure(output)


@pytest.mark.parametrize(
    "output",
    [
        "fatal: couldn't find remote ref nope",
        "fatal: '/srv/x.git' does not appear to be a git repository",
        "fatal: unable to access 'https://x/': Could not resolve host: x",
        "error: Your local changes would be overwritten by checkout",
    ],
)
def test_is_not_auth_failure(output: str) -> None:
    assert not is_auth_failure(output)


def test_restore_git_state_removes_through_no_link(tmp_path: Path) -> None:
    """Links a job planted under .git are removed, never followed: the
    files they point to stay as they are."""
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    precious = outside / "precious"
    precious.write_text("keep me")
    (outside / "attributes").write_text("* text eol=crlf\n")
    git_dir = repo / ".git"
    shutil.rmtree(git_dir / "hooks")
    (git_dir / "hooks").symlink_to(outside)
    shutil.rmtree(git_dir / "info")
    (git_dir / "info").symlink_to(outside)
    (git_dir / "config.hobotnica").symlink_to(precious)
    url = "file:///srv/remotes/o/r.git"
    notes = restore_git_state(repo, url=url, branch='we"ird\\name')
    assert precious.read_text() == "keep me"
    assert (outside / "attributes").exists()
    assert not (git_dir / "hooks").exists() and not (git_dir / "info").exists()
    assert "[hobotnica] removed git hooks" in notes
    assert git(repo, "config", "remote.origin.url") == url
    assert git(repo, "config", "--get-regexp", "^branch\\.") == (
        'branch.we"ird\\name.remote origin\n'
        'branch.we"ird\\name.merge refs/heads/we"ird\\name'
    )
    assert restore_git_state(repo, url=url, branch='we"ird\\name') == []
