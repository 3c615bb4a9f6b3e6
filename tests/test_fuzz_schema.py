"""Schema fuzzing: schemathesis against a real server process, fake GitHub behind it.

The server runs as ``python -m api serve`` on loopback with real SQLite and
real git clones over ``file://``. Schemathesis (CLI, deterministic, one
worker) sends valid credentials and mixes real objects into the generated
values: the registered ``octocat/hello``, its jobs 1-3 and its webhook uid.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fakes.github import FakeGitHub
from tests.fuzz_support import (
    Api,
    FuzzRun,
    FuzzTarget,
    add_remote,
    run_schemathesis,
    schemathesis_config,
    server_env,
    server_log_alarms,
)
from tests.servers import ServerProcess
from tests.support import OWNER, REPO, TOKEN, USER, GitRemote, push_payload, sign

pytestmark = pytest.mark.integrational

OPERATIONS = 15  # every operationId in openapi.yaml
DELETE = "delete_repository"  # fuzzed on its own: see schemathesis_config
# Operations that must reach their real logic (2xx) at least once, which
# shows that the credentials and the real objects do their part.
MUST_SUCCEED = (
    "GET /repositories",
    "GET /repositories/{owner}/{name}",
    "GET /repositories/{owner}/{name}/env",
    "PUT /repositories/{owner}/{name}/env",
    "GET /repositories/{owner}/{name}/jobs",
    "GET /repositories/{owner}/{name}/jobs/{number}",
    "GET /repositories/{owner}/{name}/jobs/{number}/log",
    "POST /repositories/{owner}/{name}/deploys",
    "GET /owners/{owner}/env",
    "PUT /owners/{owner}/env",
)


@dataclass
class Target:
    server: ServerProcess
    api: Api
    webhook: dict[str, str]
    fuzz: FuzzTarget


@pytest.fixture
async def target(
    tmp_path: Path, github: FakeGitHub, remote: GitRemote
) -> AsyncIterator[Target]:
    for name in ("spare", "fresh"):
        add_remote(tmp_path, github, OWNER, name, permissions={USER: "ADMIN"})
    server = ServerProcess(tmp_path / "var", server_env(tmp_path, github)).start()
    try:
        async with aiohttp.ClientSession() as session:
            api = Api(session, server.url)
            hello = await api.register(OWNER, REPO)
            await api.register(OWNER, "spare")
            assert (await api.wait_job(OWNER, REPO, 1))["status"] == "success"
            answer = await api.call(
                "POST", f"/api/repositories/{OWNER}/{REPO}/deploys", json={}
            )
            assert answer.status == 202, answer
            sha = remote.commit({"README": "fuzz"}, "second")
            answer = await api.post_webhook(
                hello["webhook"], push_payload(sha), delivery=str(uuid.uuid4())
            )
            assert answer.status == 202, answer
            await api.wait_job(OWNER, REPO, 3)
            fuzz = FuzzTarget(
                owner=OWNER,
                name=REPO,
                spare="spare",
                unregistered="fresh",
                login=USER,
                token=TOKEN,
                webhook_uid=hello["webhook"]["url"].rsplit("/", 1)[1],
            )
            yield Target(server, api, hello["webhook"], fuzz)
    finally:
        server.stop()


def accepted(report: dict[str, Any], operation: str) -> int:
    rates = report["valid_rates"].get(operation, {})
    return sum(int(phase["accepted"]) for phase in rates.values())


def assert_clean_run(run: FuzzRun, operations: int) -> None:
    report = run.report
    assert report["failures"] == [], run.summary()
    assert report["errors"] == [], run.summary()
    assert run.returncode == 0, run.summary()
    assert report["complete"], run.summary()
    tested = report["operations"]
    assert tested["selected"] == tested["tested"] == operations, tested
    assert tested["errored"] == tested["skipped"] == 0, tested
    for name, phase in report["phases"].items():
        # Stateful testing needs links between operations: one has none.
        not_applicable = phase.get("skip_reason") == "not_applicable"
        assert phase["status"] == "success" or not_applicable, (name, phase)
    assert report["test_cases"]["generated"] >= 40 * operations, report["test_cases"]


async def test_schemathesis_finds_no_failure_in_any_operation(
    target: Target, tmp_path: Path
) -> None:
    run = await run_schemathesis(
        tmp_path / "fuzz",
        target.server.url,
        schemathesis_config(target.fuzz, pin_log_offset=True),
        excluded=[DELETE],
        max_examples=40,
    )
    assert_clean_run(run, OPERATIONS - 1)
    unreached = [op for op in MUST_SUCCEED if accepted(run.report, op) == 0]
    assert unreached == [], run.report["valid_rates"]
    # The real objects (and the webhook uid) held for the whole run.
    hello = await target.api.call("GET", f"/api/repositories/{OWNER}/{REPO}")
    assert hello.status == 200, hello
    assert hello.body["webhook"]["url"].endswith(target.fuzz.webhook_uid), hello

    deleting = await run_schemathesis(
        tmp_path / "fuzz-delete",
        target.server.url,
        schemathesis_config(target.fuzz, pin_log_offset=True, spare_only=True),
        operations=[DELETE],
        max_examples=40,
    )
    assert_clean_run(deleting, 1)
    assert accepted(deleting.report, "DELETE /repositories/{owner}/{name}") > 0
    spare = await target.api.call("GET", f"/api/repositories/{OWNER}/spare")
    assert spare.status == 404, spare
    hello = await target.api.call("GET", f"/api/repositories/{OWNER}/{REPO}")
    assert hello.status == 200, hello

    assert server_log_alarms(target.server) == []
    assert (await target.api.call("GET", "/api/health")).status == 200


async def test_schemathesis_on_log_offsets_finds_no_failure(
    target: Target, tmp_path: Path
) -> None:
    run = await run_schemathesis(
        tmp_path / "fuzz-log",
        target.server.url,
        schemathesis_config(target.fuzz, pin_log_offset=False, always_real=True),
        operations=["retrieve_job_log"],
        max_examples=40,
    )
    assert run.report["failures"] == [], run.summary()
    assert run.returncode == 0, run.summary()


# -- webhooks: fuzzed bodies with valid signatures -----------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner)
    ),
    max_leaves=12,
)
shas = st.text("0123456789abcdef", min_size=40, max_size=40)
push_like = st.fixed_dictionaries(
    {
        "ref": st.sampled_from(["refs/heads/main", "refs/heads/other", "refs/tags/v1"])
        | st.text(max_size=40)
        | json_values,
        "after": shas | st.just("0" * 40) | st.text(max_size=50) | json_values,
    },
    optional={
        "before": shas | json_values,
        "deleted": st.booleans() | json_values,
        "sender": st.fixed_dictionaries({"login": st.text(max_size=40) | json_values})
        | json_values,
        "repository": json_values,
        "commits": json_values,
    },
)
header_text = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=40
)


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    """A body (JSON, form-encoded or raw bytes) and GitHub's headers for it."""
    payload = draw(push_like | json_values)
    text = json.dumps(payload, ensure_ascii=draw(st.booleans()))
    encoding = draw(st.sampled_from(["json", "form", "bytes"]))
    if encoding == "json":
        body, content_type = text.encode(), "application/json"
    elif encoding == "form":
        body = urlencode({"payload": text}).encode()
        content_type = "application/x-www-form-urlencoded"
    else:
        body = draw(st.binary(max_size=200))
        content_type = draw(
            st.sampled_from(
                ["application/json", "text/plain", "application/x-www-form-urlencoded"]
            )
        )
    headers = {
        "Content-Type": content_type,
        "X-GitHub-Event": draw(
            st.sampled_from(["push", "push", "ping", "issues"]) | header_text
        ),
        "X-GitHub-Delivery": draw(st.uuids().map(str) | header_text),
    }
    return body, headers


def fuzz_webhook(port: int, path: str, secret: str) -> list[int]:
    """Post fuzzed, correctly signed deliveries; every answer is checked."""
    statuses: list[int] = []

    @settings(
        max_examples=150,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(deliveries())
    def post(delivery: tuple[bytes, dict[str, str]]) -> None:
        body, headers = delivery
        headers = {**headers, "X-Hub-Signature-256": sign(body, secret)}
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
        try:
            connection.request("POST", path, body=body, headers=headers)
            response = connection.getresponse()
            raw = response.read()
        finally:
            connection.close()
        statuses.append(response.status)
        assert response.status < 500, (response.status, raw, body, headers)
        assert response.getheader("Content-Type", "").startswith("application/json")
        answer = json.loads(raw)
        assert "detail" in answer or "number" in answer, answer
        if response.status == 202 and "number" in answer:
            assert answer["kind"] == "test" and answer["ref"] == "main", answer

    post()
    return statuses


async def test_fuzzed_signed_webhook_bodies_never_give_a_server_error(
    target: Target,
) -> None:
    path = "/api/" + target.webhook["url"].split("/api/", 1)[1]
    statuses = await asyncio.to_thread(
        fuzz_webhook, target.server.port, path, target.webhook["secret"]
    )
    # The signature was right every time: the fuzz reached the payload parsing.
    assert 401 not in statuses
    assert {200, 202, 422} <= set(statuses), sorted(set(statuses))
    assert server_log_alarms(target.server) == []
    assert (await target.api.call("GET", "/api/health")).status == 200
