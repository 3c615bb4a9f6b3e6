"""Helpers of the robustness tests: real servers, raw HTTP, SQLite, schemathesis."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from tests.fakes.github import FakeGitHub
from tests.servers import ServerProcess
from tests.support import (
    FINISHED,
    PASSING_MAKEFILE,
    GitRemote,
    auth_headers,
    clone_url_template,
    sign,
)

ST = Path(sys.executable).with_name("st")
CHECKS = (
    "not_a_server_error",
    "response_schema_conformance",
    "status_code_conformance",
    "content_type_conformance",
)
# What the server log says when a request failed in a way the client may not
# see (a 500 rendered by the outermost safety net, a response off the schema).
SERVER_LOG_ALARMS = ("Unhandled error", "does not match the schema", "OpenAPI failure")


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any
    headers: Mapping[str, str]
    raw: bytes = b""

    @property
    def is_json(self) -> bool:
        return self.headers.get("Content-Type", "").startswith("application/json")


class Api:
    """An HTTP client of one Hobotnica base URL, with the writer's credentials."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.headers = dict(auth_headers() if headers is None else headers)

    async def call(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> Answer:
        merged = {**self.headers, **(headers or {})}
        async with self.session.request(
            method, self.base_url + path, headers=merged, **kwargs
        ) as response:
            raw = await response.read()
            body: Any = raw.decode("utf-8", "replace")
            if response.content_type == "application/json":
                body = json.loads(raw)
            return Answer(response.status, body, dict(response.headers), raw)

    async def register(self, owner: str, name: str) -> dict[str, Any]:
        answer = await self.call(
            "POST", "/api/repositories", json={"owner": owner, "name": name}
        )
        assert answer.status == 202, answer
        data: dict[str, Any] = answer.body
        return data

    async def job(self, owner: str, name: str, number: int) -> dict[str, Any]:
        answer = await self.call(
            "GET", f"/api/repositories/{owner}/{name}/jobs/{number}"
        )
        assert answer.status == 200, answer
        data: dict[str, Any] = answer.body
        return data

    async def wait_job(
        self,
        owner: str,
        name: str,
        number: int,
        statuses: frozenset[str] | set[str] = FINISHED,
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job = await self.job(owner, name, number)
            if job["status"] in statuses:
                return job
            assert time.monotonic() < deadline, (
                f"{owner}/{name} job #{number} still {job['status']} after {timeout} s"
            )
            await asyncio.sleep(0.05)

    async def post_webhook(
        self,
        webhook: Mapping[str, str],
        payload: Mapping[str, Any],
        *,
        event: str = "push",
        delivery: str,
    ) -> Answer:
        body = json.dumps(payload).encode()
        path = "/api/" + webhook["url"].split("/api/", 1)[1]
        return await self.call(
            "POST",
            path,
            data=body,
            headers={
                "Content-Type": "application/json",
                "X-GitHub-Event": event,
                "X-GitHub-Delivery": delivery,
                "X-Hub-Signature-256": sign(body, webhook["secret"]),
            },
        )


def server_env(root: Path, github: FakeGitHub, **extra: str) -> dict[str, str]:
    """The environment of a server process that uses the fake GitHub."""
    return {
        "HOBOTNICA_GITHUB_API_URL": github.url,
        "HOBOTNICA_GITHUB_CLONE_URL": clone_url_template(root),
        "HOBOTNICA_PUBLIC_URL": "http://hobotnica.test",
        "HOBOTNICA_KILL_GRACE": "1",
        "HOBOTNICA_SHUTDOWN_TIMEOUT": "10",
        "HOBOTNICA_LOG_LEVEL": "INFO",
        **extra,
    }


def add_remote(
    root: Path,
    github: FakeGitHub,
    owner: str,
    name: str,
    *,
    makefile: str = PASSING_MAKEFILE,
    permissions: dict[str, str] | None = None,
) -> GitRemote:
    """A repository on the fake GitHub with a bare remote to clone it from."""
    if github.find_repo(owner, name) is None:
        github.add_repo(owner, name, permissions=permissions or {owner: "ADMIN"})
    remote = GitRemote(root, owner, name)
    remote.commit({"Makefile": makefile}, "initial")
    return remote


def server_log_alarms(server: ServerProcess) -> list[str]:
    return [
        line
        for line in server.output().splitlines()
        if any(alarm in line for alarm in SERVER_LOG_ALARMS)
    ]


# -- SQLite ------------------------------------------------------------------


def database_path(data_dir: Path) -> Path:
    return data_dir / "hobotnica.sqlite3"


def query(
    data_dir: Path, sql: str, params: Sequence[Any] = ()
) -> list[tuple[Any, ...]]:
    """Rows of ``sql``, read beside a running server (WAL readers never block)."""
    connection = sqlite3.connect(database_path(data_dir), timeout=10)
    try:
        return [tuple(row) for row in connection.execute(sql, params)]
    finally:
        connection.close()


def integrity_check(data_dir: Path) -> list[str]:
    """``PRAGMA integrity_check`` and ``foreign_key_check``: ``["ok"]`` if sound."""
    connection = sqlite3.connect(database_path(data_dir), timeout=10)
    try:
        result = [str(row[0]) for row in connection.execute("PRAGMA integrity_check")]
        broken = list(connection.execute("PRAGMA foreign_key_check"))
    finally:
        connection.close()
    return result + [f"foreign key: {row}" for row in broken]


# -- raw HTTP ----------------------------------------------------------------


async def raw_request(
    host: str, port: int, data: bytes, timeout: float = 10.0
) -> Answer:
    """Send ``data`` as is (no client-side checks) and read one answer."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(data)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers: dict[str, str] = {}
        for line in lines:
            if ":" in line:
                key, _, value = line.partition(":")
                headers[key.strip().title()] = value.strip()
        length = int(headers.get("Content-Length", "0"))
        raw = await asyncio.wait_for(reader.readexactly(length), timeout)
    finally:
        writer.close()
    body: Any = raw.decode("utf-8", "replace")
    if headers.get("Content-Type", "").startswith("application/json"):
        body = json.loads(raw)
    return Answer(int(status_line.split()[1]), body, headers, raw)


# -- schemathesis -----------------------------------------------------------


@dataclass
class FuzzTarget:
    """What the fuzzer should hit now and then: real, registered objects."""

    owner: str
    name: str
    spare: str  # registered too; the only repository DELETE may remove
    unregistered: str  # exists on GitHub, not registered: POST may register it
    login: str
    token: str
    webhook_uid: str
    job_numbers: Sequence[int] = (1, 2, 3)


def _toml(value: Any) -> str:
    return json.dumps(value)  # TOML strings, numbers and arrays read like JSON's


def schemathesis_config(
    target: FuzzTarget,
    *,
    pin_log_offset: bool,
    always_real: bool = False,
    spare_only: bool = False,
) -> str:
    """A ``schemathesis.toml`` that mixes real objects into generated values.

    Path and body values come from dictionaries part of the time, so that
    operations reach their real logic (an existing repository, job or
    webhook) as well as their 404 and 422 paths; ``always_real`` uses them
    every time. ``DELETE`` only ever names the spare repository, so that the
    main one stays for the other operations. ``pin_log_offset`` keeps the log
    ``offset`` to sane values. ``spare_only`` names the spare repository in
    every path: for ``delete_repository``, run on its own, since not every
    phase applies per-operation parameters (examples and stateful links would
    delete the main repository).
    """

    def pick(dictionary: str, probability: float) -> str:
        probability = 1.0 if always_real else probability
        return f"{{ dictionary = {_toml(dictionary)}, probability = {probability} }}"

    lines = [
        f"[dictionaries.owner]\nvalues = {_toml([target.owner])}",
        f"[dictionaries.name]\nvalues = {_toml([target.name])}",
        f"[dictionaries.spare]\nvalues = {_toml([target.spare, target.name + 'x'])}",
        "[dictionaries.body_name]\nvalues = "
        + _toml([target.name, target.unregistered]),
        f"[dictionaries.number]\nvalues = {_toml(list(target.job_numbers))}",
        f"[dictionaries.login]\nvalues = {_toml([target.login])}",
        f"[dictionaries.uid]\nvalues = {_toml([target.webhook_uid])}",
        "[dictionaries.offset]\nvalues = [0, 1, 10, 4096, 1048576]",
        "[parameters]",
        f'"path.owner" = {pick("owner", 0.75)}',
        f'"path.name" = {pick("spare", 1.0) if spare_only else pick("name", 0.75)}',
        f'"path.number" = {pick("number", 0.6)}',
        f'"path.uid" = {pick("uid", 0.5)}',
        f'"header.X-GitHub-Username" = {pick("login", 0.85)}',
        f'"body.owner" = {pick("owner", 0.6)}',
        f'"body.name" = {pick("body_name", 0.6)}',
        "[[operations]]",
        'include-operation-id = "delete_repository"',
        "parameters = { "
        + f'"path.owner" = {pick("owner", 0.75)}, '
        + f'"path.name" = {pick("spare", 1.0)} }}',
    ]
    if pin_log_offset:
        lines += [
            "[[operations]]",
            'include-operation-id = "retrieve_job_log"',
            f'parameters = {{ "query.offset" = {pick("offset", 1.0)} }}',
        ]
    lines += ["[auth.openapi.bearer]", f"bearer = {_toml(target.token)}"]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class FuzzRun:
    returncode: int
    output: str
    report: dict[str, Any]

    def summary(self) -> str:
        failures = json.dumps(self.report.get("failures"), indent=1)[:6000]
        return f"{self.output[-6000:]}\nfailures: {failures}"


async def run_schemathesis(
    workdir: Path,
    base_url: str,
    config: str,
    *,
    operations: Sequence[str] = (),
    excluded: Sequence[str] = (),
    max_examples: int = 40,
    timeout: float = 240.0,
) -> FuzzRun:
    """``st run`` on ``openapi.yaml``, deterministic, one worker; its JSON report."""
    assert ST.exists(), f"{ST} is missing: schemathesis must be a dev dependency"
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "schemathesis.toml"
    config_path.write_text(config)
    report_path = workdir / "report.json"
    argv = [
        str(ST),
        "--config-file",
        str(config_path),
        "run",
        str(Path(__file__).parent.parent / "openapi.yaml"),
        "--url",
        f"{base_url}/api",
        "--checks",
        ",".join(CHECKS),
        "--max-examples",
        str(max_examples),
        "--generation-deterministic",
        "--workers",
        "1",
        "--request-timeout",
        "20",
        "--no-color",
        "--report",
        "json",
        "--report-json-path",
        str(report_path),
    ]
    for operation in operations:
        argv += ["--include-operation-id", operation]
    for operation in excluded:
        argv += ["--exclude-operation-id", operation]
    process = await asyncio.create_subprocess_exec(
        *argv,
        cwd=workdir,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    text = output.decode("utf-8", "replace")
    assert report_path.exists(), f"schemathesis wrote no report:\n{text[-4000:]}"
    report: dict[str, Any] = json.loads(report_path.read_text())
    assert process.returncode is not None
    return FuzzRun(process.returncode, text, report)
