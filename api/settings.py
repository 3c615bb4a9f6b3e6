"""Settings read once from ``HOBOTNICA_*`` environment variables."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

DEFAULT_CLONE_URL = "https://github.com/{owner}/{name}.git"


class SettingsError(ValueError):
    """A setting has a value that cannot be used; the message names it."""


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError("must be a positive integer")
    return number


def _port(value: str) -> int:
    number = int(value)
    if not 0 <= number <= 65535:
        raise ValueError("must be a port number from 0 to 65535")
    return number


def _positive_float(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise ValueError("must be a positive number")
    return number


def _log_level(value: str) -> str:
    level = value.strip().upper()
    if level not in logging.getLevelNamesMapping():
        raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR")
    return level


def _http_url(value: str) -> str:
    url = value.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ValueError("must start with http:// or https://")
    return url


def _clone_url(value: str) -> str:
    if "{owner}" not in value or "{name}" not in value:
        raise ValueError("must contain {owner} and {name}")
    if not value.startswith(("https://", "http://", "file://")):
        raise ValueError("must be an https://, http:// or file:// URL")
    return value


def _text(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value.strip()


@dataclass(frozen=True)
class Settings:
    """Everything configurable about one Hobotnica process."""

    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = Path("var")
    secret_key: str | None = None
    public_url: str | None = None
    github_api_url: str = "https://api.github.com"
    github_clone_url: str = DEFAULT_CLONE_URL
    github_timeout: float = 10.0
    github_cache_ttl: float = 60.0
    max_jobs: int = 4
    job_timeout: float = 3600.0
    shutdown_timeout: float = 1800.0
    kill_grace: float = 5.0
    access_check_interval: float = 3600.0
    log_max_bytes: int = 50 * 2**20
    log_level: str = "INFO"
    body_max_bytes: int = 1 * 2**20
    # GitHub caps payloads at 25 MB; the slack covers form encoding and
    # headers of a payload right at the cap.
    webhook_body_max_bytes: int = 25 * 2**20 + 256 * 2**10
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Jobs run git and make in other working directories: a relative
        # data dir (the default ``var``) would mean another place there.
        object.__setattr__(self, "data_dir", self.data_dir.absolute())

    @property
    def base_url(self) -> str:
        """Base of the URLs that Hobotnica hands out (webhooks, logs)."""
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def database_path(self) -> Path:
        return self.data_dir / "hobotnica.sqlite3"

    @property
    def clones_dir(self) -> Path:
        return self.data_dir / "clones"

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def instances_dir(self) -> Path:
        return self.data_dir / "instances"

    @property
    def key_path(self) -> Path:
        return self.data_dir / "secret.key"

    def with_overrides(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read settings; raise :class:`SettingsError` naming a bad variable."""
        env = os.environ if environ is None else environ
        reader = _Reader(env)
        return cls(
            host=reader.get("HOBOTNICA_HOST", _text, cls.host),
            port=reader.get("HOBOTNICA_PORT", _port, cls.port),
            data_dir=reader.get("HOBOTNICA_DATA_DIR", Path, cls.data_dir),
            secret_key=reader.get("HOBOTNICA_SECRET_KEY", _text, None),
            public_url=reader.get("HOBOTNICA_PUBLIC_URL", _http_url, None),
            github_api_url=reader.get(
                "HOBOTNICA_GITHUB_API_URL", _http_url, cls.github_api_url
            ),
            github_clone_url=reader.get(
                "HOBOTNICA_GITHUB_CLONE_URL", _clone_url, cls.github_clone_url
            ),
            github_timeout=reader.get(
                "HOBOTNICA_GITHUB_TIMEOUT", _positive_float, cls.github_timeout
            ),
            github_cache_ttl=reader.get(
                "HOBOTNICA_GITHUB_CACHE_TTL", _positive_float, cls.github_cache_ttl
            ),
            max_jobs=reader.get("HOBOTNICA_MAX_JOBS", _positive_int, cls.max_jobs),
            job_timeout=reader.get(
                "HOBOTNICA_JOB_TIMEOUT", _positive_float, cls.job_timeout
            ),
            shutdown_timeout=reader.get(
                "HOBOTNICA_SHUTDOWN_TIMEOUT", _positive_float, cls.shutdown_timeout
            ),
            kill_grace=reader.get(
                "HOBOTNICA_KILL_GRACE", _positive_float, cls.kill_grace
            ),
            access_check_interval=reader.get(
                "HOBOTNICA_ACCESS_CHECK_INTERVAL",
                _positive_float,
                cls.access_check_interval,
            ),
            log_max_bytes=reader.get(
                "HOBOTNICA_LOG_MAX_BYTES", _positive_int, cls.log_max_bytes
            ),
            log_level=reader.get("HOBOTNICA_LOG_LEVEL", _log_level, cls.log_level),
        )


class _Reader:
    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ

    def get(self, name: str, parse: Callable[[str], T], default: T) -> T:
        raw = self.environ.get(name)
        if raw is None or raw == "":
            return default
        try:
            return parse(raw)
        except ValueError as err:
            raise SettingsError(f"{name}={raw!r} is invalid: {err}") from None
