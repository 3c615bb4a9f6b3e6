"""Named health checks, each cached briefly and bounded in time."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from rororo import OperationTableDef

from api import __version__
from api.jobs.runner import JobRunner
from api.storage import Storage

MIN_FREE_BYTES = 100 * 2**20


class CheckFailed(Exception):
    pass


@dataclass
class Check:
    name: str
    probe: Callable[[], Awaitable[None]]
    cache_seconds: float = 2.0
    timeout: float = 1.0
    _result: tuple[float, bool, str | None, float] | None = None

    async def run(self) -> dict[str, object]:
        now = time.monotonic()
        if self._result is None or now - self._result[0] > self.cache_seconds:
            started = time.monotonic()
            detail: str | None
            try:
                async with asyncio.timeout(self.timeout):
                    await self.probe()
            except TimeoutError:
                ok, detail = False, f"slower than {self.timeout:g} s"
            except Exception as err:
                ok, detail = False, str(err) or type(err).__name__
            else:
                ok, detail = True, None
            elapsed_ms = round((time.monotonic() - started) * 1000, 2)
            self._result = (time.monotonic(), ok, detail, elapsed_ms)
        _, ok, detail, elapsed_ms = self._result
        data: dict[str, object] = {"ok": ok, "elapsed_ms": elapsed_ms}
        if detail:
            data["detail"] = detail
        return data


class HealthChecks:
    def __init__(self, storage: Storage, data_dir: Path, runner: JobRunner) -> None:
        self.storage = storage
        self.data_dir = data_dir
        self.runner = runner
        self.checks = [
            Check("database", self._database),
            Check("data_dir", self._data_dir, cache_seconds=5.0),
            Check("git", self._tool("git"), cache_seconds=30.0),
            Check("make", self._tool("make"), cache_seconds=30.0),
            Check("job_runner", self._runner, cache_seconds=0.0),
        ]

    async def report(self) -> tuple[bool, dict[str, object]]:
        results = await asyncio.gather(*(check.run() for check in self.checks))
        checks = {
            check.name: result
            for check, result in zip(self.checks, results, strict=True)
        }
        ok = all(result["ok"] for result in results)
        return ok, {
            "status": "ok" if ok else "failing",
            "version": __version__,
            "checks": checks,
        }

    async def _database(self) -> None:
        await self.storage.db.ping()

    async def _data_dir(self) -> None:
        await asyncio.to_thread(_probe_data_dir, self.data_dir)

    @staticmethod
    def _tool(name: str) -> Callable[[], Awaitable[None]]:
        async def probe() -> None:
            if shutil.which(name) is None:
                raise CheckFailed(f"{name} is not on PATH")

        return probe

    async def _runner(self) -> None:
        if self.runner.draining:
            raise CheckFailed("draining: takes no new jobs")
        if not self.runner.accepting:
            raise CheckFailed("the job loop is not running")


def _probe_data_dir(path: Path) -> None:
    probe = path / f".health-{uuid.uuid4().hex}"
    try:
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        raise CheckFailed(f"{path} is not writable: {err.strerror}") from None
    if os.statvfs(path).f_flag & os.ST_RDONLY:
        raise CheckFailed(f"{path} is on a read-only file system")
    free = shutil.disk_usage(path).free
    if free < MIN_FREE_BYTES:
        raise CheckFailed(f"only {free // 2**20} MiB free in {path}")


HEALTH_KEY = web.AppKey("health", HealthChecks)
operations = OperationTableDef()


@operations.register
async def health(request: web.Request) -> web.Response:
    ok, body = await request.app[HEALTH_KEY].report()
    headers = {} if ok else {"Retry-After": "5"}
    return web.json_response(body, status=200 if ok else 503, headers=headers)
