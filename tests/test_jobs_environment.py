"""The job environment, checked through real processes."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from api.jobs.environment import (
    DEFAULT_PATH,
    build_job_env,
    clean_path,
    host_env,
    is_reserved_name,
    is_valid_name,
)
from api.jobs.process import run_process

SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"


def make_venv(root: Path) -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "pyvenv.cfg").write_text("home = /usr/bin\n")
    return root


@pytest.fixture
def server_env(tmp_path: Path) -> dict[str, str]:
    """What a Hobotnica server started from a virtualenv might see."""
    active = make_venv(tmp_path / "venv")
    other = make_venv(tmp_path / "other-venv")
    return {
        "PATH": f"{active}/bin:{other}/bin/::{SYSTEM_PATH}",
        "HOME": "/home/hobotnica",
        "LANG": "C.UTF-8",
        "TZ": "UTC",
        "USER": "hobotnica",
        "VIRTUAL_ENV": str(active),
        "PYTHONPATH": "/srv/hobotnica",
        "PYTHONHOME": "/srv/python",
        "HOBOTNICA_SECRET_KEY": "server-key",
        "HOBOTNICA_DATA_DIR": "/var/lib/hobotnica",
        "GITHUB_TOKEN": "ghp_server",
        "GIT_DIR": "/srv/hobotnica/.git",
        "SSH_AUTH_SOCK": "/tmp/agent.sock",
        "LD_PRELOAD": "/lib/evil.so",
        "INVOCATION_ID": "abc",
    }


def job_env(
    host: Mapping[str, str], layers: Sequence[Mapping[str, str]] = ()
) -> dict[str, str]:
    return build_job_env(
        host,
        job_id="42",
        job_kind="test",
        repository="octo/cat",
        sha="c" * 40,
        branch="refs/heads/main",
        layers=layers,
    )


async def printed_env(env: Mapping[str, str], cwd: Path) -> dict[str, str]:
    output = bytearray()
    result = await run_process(
        ["env", "-0"], cwd=cwd, env=env, sink=output.extend, timeout=10
    )
    assert result.returncode == 0
    pairs = (item.split("=", 1) for item in output.decode().split("\0") if item)
    return dict(pairs)


async def test_nothing_of_the_server_leaks(
    server_env: dict[str, str], tmp_path: Path
) -> None:
    seen = await printed_env(job_env(server_env), tmp_path)
    assert seen == {
        "PATH": SYSTEM_PATH,
        "HOME": "/home/hobotnica",
        "LANG": "C.UTF-8",
        "TZ": "UTC",
        "USER": "hobotnica",
        "CI": "1",
        "HOBOTNICA": "1",
        "HOBOTNICA_JOB": "42",
        "HOBOTNICA_JOB_KIND": "test",
        "HOBOTNICA_REPOSITORY": "octo/cat",
        "GIT_COMMIT": "c" * 40,
        "GIT_BRANCH": "main",
    }


async def test_layers_in_order_reserved_names_skipped(
    server_env: dict[str, str], tmp_path: Path
) -> None:
    owner = {"SHARED": "owner", "ONLY_OWNER": "o", "LANG": "de_DE.UTF-8"}
    repository = {
        "SHARED": "repository",
        "DEPLOY_KEY": "s3cret value with spaces\nand a newline",
        "CI": "0",
        "PATH": "/evil",
        "HOME": "/evil",
        "HOBOTNICA_JOB": "evil",
        "HOBOTNICAX": "evil",
        "GIT_COMMIT": "evil",
        "git_dir": "evil",
        "1BAD": "evil",
        "A-B": "evil",
        "NUL": "a\0b",
    }
    seen = await printed_env(job_env(server_env, [owner, repository]), tmp_path)
    assert seen["SHARED"] == "repository"
    assert seen["ONLY_OWNER"] == "o"
    assert seen["LANG"] == "de_DE.UTF-8"
    assert seen["DEPLOY_KEY"] == "s3cret value with spaces\nand a newline"
    assert seen["CI"] == "1"
    assert seen["PATH"] == SYSTEM_PATH
    assert seen["HOME"] == "/home/hobotnica"
    assert seen["HOBOTNICA_JOB"] == "42"
    assert seen["GIT_COMMIT"] == "c" * 40
    for name in ("HOBOTNICAX", "git_dir", "1BAD", "A-B", "NUL"):
        assert name not in seen


async def test_make_sees_the_job_variables(
    server_env: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "Makefile").write_text(
        "test:\n\t@echo $$CI $$HOBOTNICA_JOB $$GIT_BRANCH $(TARGET_HOST)\n"
    )
    env = job_env(server_env, [{"TARGET_HOST": "example.org"}])
    output = bytearray()
    result = await run_process(
        ["make", "test"], cwd=tmp_path, env=env, sink=output.extend, timeout=10
    )
    assert result.returncode == 0
    assert output == b"1 42 main example.org\n"


def test_optional_job_variables() -> None:
    env = build_job_env(
        {"PATH": "/bin"},
        job_id="7",
        job_kind="clone",
        repository="o/r",
        sha=None,
        branch=None,
        layers=[],
    )
    assert "GIT_COMMIT" not in env
    assert "GIT_BRANCH" not in env
    assert env["HOBOTNICA_JOB_KIND"] == "clone"


def test_host_env_without_path() -> None:
    assert host_env({"HOME": "/h"}) == {"HOME": "/h", "PATH": DEFAULT_PATH}


def test_clean_path(tmp_path: Path) -> None:
    venv = make_venv(tmp_path / "v")
    environ = {"VIRTUAL_ENV": f"{venv}/"}
    assert clean_path(f"{venv}/bin:/usr/bin", environ) == "/usr/bin"
    assert clean_path(f"/usr/bin:{venv}/bin/", {}) == "/usr/bin"  # via pyvenv.cfg
    assert clean_path("::/usr/bin:", {}) == "/usr/bin"
    assert clean_path(f"{venv}/bin", environ) == DEFAULT_PATH
    plain = tmp_path / "tools" / "bin"
    plain.mkdir(parents=True)
    assert clean_path(f"{plain}:/bin", environ) == f"{plain}:/bin"


@pytest.mark.parametrize("name", ["A", "_x", "DEPLOY_KEY_2", "a" * 128])
def test_valid_names(name: str) -> None:
    assert is_valid_name(name)


@pytest.mark.parametrize("name", ["", "1A", "A-B", "A B", "Ä", "A=B", "a" * 129])
def test_invalid_names(name: str) -> None:
    assert not is_valid_name(name)


@pytest.mark.parametrize(
    "name",
    ["CI", "ci", "PATH", "HOME", "HOBOTNICA", "HOBOTNICA_JOB", "GIT_SSH", "git_dir"],
)
def test_reserved_names(name: str) -> None:
    assert is_reserved_name(name)


@pytest.mark.parametrize("name", ["LANG", "TZ", "CIRCLE", "GITHUB_TOKEN", "MY_GIT_X"])
def test_names_users_may_set(name: str) -> None:
    assert not is_reserved_name(name)


def test_real_environment_loses_the_test_venv() -> None:
    # The tests themselves run from a virtualenv: its bin dir must go.
    env = host_env(os.environ)
    assert all(
        not (Path(entry).parent / "pyvenv.cfg").exists()
        for entry in env["PATH"].split(os.pathsep)
    )
