"""Settings come from HOBOTNICA_* variables; bad values stop the CLI early."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from api.settings import Settings, SettingsError


def test_defaults_follow_the_design() -> None:
    settings = Settings.from_env({})
    assert (settings.host, settings.port) == ("127.0.0.1", 8080)
    assert settings.data_dir == Path.cwd() / "var"  # ./var, made absolute
    assert settings.max_jobs == 4
    assert settings.job_timeout == 3600
    assert settings.shutdown_timeout == 1800
    assert settings.access_check_interval == 3600
    assert settings.base_url == "http://127.0.0.1:8080"
    assert settings.github_api_url == "https://api.github.com"
    assert settings.github_clone_url == "https://github.com/{owner}/{name}.git"


def test_values_are_read_and_typed() -> None:
    settings = Settings.from_env(
        {
            "HOBOTNICA_PORT": "9000",
            "HOBOTNICA_MAX_JOBS": "2",
            "HOBOTNICA_PUBLIC_URL": "https://ci.example.com/",
            "HOBOTNICA_LOG_LEVEL": "debug",
            "HOBOTNICA_GITHUB_CLONE_URL": "file:///srv/{owner}/{name}.git",
        }
    )
    assert settings.port == 9000
    assert settings.max_jobs == 2
    assert settings.base_url == "https://ci.example.com"
    assert settings.log_level == "DEBUG"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("HOBOTNICA_PORT", "abc"),
        ("HOBOTNICA_PORT", "70000"),
        ("HOBOTNICA_MAX_JOBS", "0"),
        ("HOBOTNICA_JOB_TIMEOUT", "-1"),
        ("HOBOTNICA_PUBLIC_URL", "ftp://x"),
        ("HOBOTNICA_GITHUB_CLONE_URL", "https://github.com/x.git"),
        ("HOBOTNICA_LOG_LEVEL", "LOUD"),
    ],
)
def test_a_bad_value_names_its_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


def test_serve_exits_2_naming_the_bad_variable(tmp_path: Path) -> None:
    env = {**os.environ, "HOBOTNICA_PORT": "abc", "HOBOTNICA_DATA_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "api", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "HOBOTNICA_PORT" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "hobotnica.sqlite3").exists()
