"""Hostile and broken input: every answer is a 4xx JSON ``{"detail"}``, nothing stored.

The app runs on a real loopback server (aiohttp's test server) with real
SQLite; requests that a well-behaved client library refuses to send (CR/LF
in headers, raw ``..`` in paths, broken UTF-8) go out over a raw socket.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from api.middlewares import error_response, is_json_too_deep
from api.settings import Settings
from tests.fakes.github import FakeGitHub
from tests.fuzz_support import Answer, raw_request, server_env
from tests.servers import ServerProcess
from tests.support import (
    OWNER,
    READER_TOKEN,
    REPO,
    TOKEN,
    USER,
    Client,
    GitRemote,
    auth_headers,
    register,
    sign,
)

AUTH = auth_headers()
LONG = "a" * 5000


@dataclass(frozen=True)
class Case:
    method: str
    path: str
    body: bytes | None = None
    headers: Mapping[str, str] | None = None
    content_type: str | None = "application/json"


def js(value: Any) -> bytes:
    return json.dumps(value).encode()


def create(body: bytes, content_type: str | None = "application/json") -> Case:
    return Case("POST", "/api/repositories", body, content_type=content_type)


def put_env(body: bytes, path: str = "/api/owners/octocat/env") -> Case:
    return Case("PUT", path, body)


BODIES = {
    # wrong types
    "owner is a number": create(js({"owner": 1, "name": REPO})),
    "name is a list": create(js({"owner": OWNER, "name": [REPO]})),
    "owner is null": create(js({"owner": None, "name": REPO})),
    "owner is an object": create(js({"owner": {}, "name": REPO})),
    "branch is a number": create(js({"owner": OWNER, "name": REPO, "branch": 5})),
    "branch is empty": create(js({"owner": OWNER, "name": REPO, "branch": ""})),
    "branch is an option": create(js({"owner": OWNER, "name": REPO, "branch": "-x"})),
    "branch has a space": create(js({"owner": OWNER, "name": REPO, "branch": "a b"})),
    "branch a forced refspec": create(
        js({"owner": OWNER, "name": REPO, "branch": "+main"})
    ),
    "branch is @": create(js({"owner": OWNER, "name": REPO, "branch": "@"})),
    "branch with a .lock part": create(
        js({"owner": OWNER, "name": REPO, "branch": "a.lock/b"})
    ),
    "unknown field": create(js({"owner": OWNER, "name": REPO, "admin": True})),
    # missing fields, not an object
    "empty object": create(js({})),
    "no name": create(js({"owner": OWNER})),
    "no owner": create(js({"name": REPO})),
    "a list": create(js([OWNER, REPO])),
    "a string": create(js("octocat/hello")),
    "a number": create(js(1)),
    "true": create(js(True)),
    "null": create(b"null"),
    # not JSON, or not what it says it is
    "empty body": create(b""),
    "truncated JSON": create(b'{"owner": "octocat", "name": '),
    "single quotes": create(b"{'owner': 'octocat', 'name': 'hello'}"),
    "trailing garbage": create(js({"owner": OWNER, "name": REPO}) + b" x"),
    "NaN": create(b'{"owner": "octocat", "name": "hello", "branch": NaN}'),
    "invalid UTF-8": create(b'{"owner": "\xff\xfe", "name": "hello"}'),
    "invalid UTF-8 in name": create(b'{"owner": "octocat", "name": "hel\xc3lo"}'),
    "UTF-16": create(js({"owner": OWNER, "name": REPO}).decode().encode("utf-16")),
    "lone surrogate": create(b'{"owner": "octocat", "name": "\\ud800"}'),
    "NUL in name": create(js({"owner": OWNER, "name": "hel\x00lo"})),
    "deeply nested": create(b"[" * 100_000 + b"]" * 100_000),
    "deeply nested field": create(
        b'{"owner": "octocat", "name": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    ),
    "huge number": create(b'{"owner": "octocat", "name": "hello", "branch": 1e999}'),
    "text/plain": create(js({"owner": OWNER, "name": REPO}), "text/plain"),
    "form": create(b"owner=octocat&name=hello", "application/x-www-form-urlencoded"),
    "no content type": create(js({"owner": OWNER, "name": REPO}), None),
    "multipart": create(
        b"--x\r\nContent-Disposition: form-data; name=owner\r\n\r\n"
        b"octocat\r\n--x--\r\n",
        "multipart/form-data; boundary=x",
    ),
    # traversal and absurd names in the body
    "dot-dot name": create(js({"owner": OWNER, "name": ".."})),
    "dot name": create(js({"owner": OWNER, "name": "."})),
    "traversal name": create(js({"owner": OWNER, "name": "../../etc/passwd"})),
    "traversal owner": create(js({"owner": "../..", "name": REPO})),
    "slash in name": create(js({"owner": OWNER, "name": "a/b"})),
    "long name": create(js({"owner": OWNER, "name": LONG})),
    "long owner": create(js({"owner": "o" * 40, "name": REPO})),
    "unicode name": create(js({"owner": OWNER, "name": "héllo"})),
    "unicode owner": create(js({"owner": "\u043ectocat", "name": REPO})),  # Cyrillic o
    # env bodies (the owner's env would be stored without a repository)
    "env vars a list": put_env(js({"vars": ["A"]})),
    "env var value a number": put_env(js({"vars": {"A": 1}})),
    "env var value an object": put_env(js({"vars": {"A": {"b": "c"}}})),
    "env bad var name": put_env(js({"vars": {"1A": "x"}})),
    "env var name with =": put_env(js({"vars": {"A=B": "x"}})),
    "env empty var name": put_env(js({"vars": {"": "x"}})),
    "env NUL in value": put_env(js({"vars": {"A": "x\x00y"}})),
    "env NUL in name": put_env(js({"secrets": {"A\x00": "x"}})),
    "env secrets a string": put_env(js({"secrets": "x"})),
    "env unknown section": put_env(js({"vars": {}, "files": {}})),
    "env null": put_env(b"null"),
    "env a list": put_env(js([])),
    "env too many vars": put_env(js({"vars": {f"V{i}": "x" for i in range(201)}})),
    "env value too long": put_env(js({"vars": {"A": "x" * 65537}})),
    "repo env null": put_env(b"null", "/api/repositories/octocat/hello/env"),
    "deploy body a list": Case(
        "POST", "/api/repositories/octocat/hello/deploys", js([])
    ),
    "deploy bad sha": Case(
        "POST", "/api/repositories/octocat/hello/deploys", js({"sha": "zz"})
    ),
    "deploy unknown field": Case(
        "POST", "/api/repositories/octocat/hello/deploys", js({"x": 1})
    ),
}

PATHS = {
    "raw dot-dot owner": "/api/repositories/../hello",
    "raw dot-dot name": "/api/repositories/octocat/..",
    "raw dot-dot env": "/api/repositories/octocat/../env",
    "encoded dot-dot name": "/api/repositories/octocat/%2e%2e",
    "encoded dot-dot owner": "/api/repositories/%2e%2e/hello/env",
    "encoded dot-dot both": "/api/repositories/%2E%2E/%2E%2E",
    "encoded slash in name": "/api/repositories/octocat/..%2F..%2Fetc",
    "encoded slash in owner": "/api/repositories/octocat%2F..%2F..%2F/hello",
    "backslash traversal": "/api/repositories/octocat/..%5C..%5Cetc",
    "double encoding": "/api/repositories/octocat/%252e%252e",
    "NUL in name": "/api/repositories/octocat/hello%00",
    "unicode owner": "/api/repositories/%C3%A9/hello",
    "invalid UTF-8 in path": "/api/repositories/octocat/%FF%FE",
    "long name": f"/api/repositories/octocat/{LONG}",
    "long owner": f"/api/repositories/{LONG}/hello",
    "long owner env": f"/api/owners/{LONG}/env",
    "dot-dot owner env": "/api/owners/%2e%2e/env",
    "job number zero": "/api/repositories/octocat/hello/jobs/0",
    "job number negative": "/api/repositories/octocat/hello/jobs/-1",
    "job number text": "/api/repositories/octocat/hello/jobs/one",
    "job number float": "/api/repositories/octocat/hello/jobs/1.5",
    "job number huge": "/api/repositories/octocat/hello/jobs/" + "9" * 40,
    "job traversal": "/api/repositories/octocat/hello/jobs/..%2F1/log",
    "webhook uid traversal": "/api/webhooks/..%2F..%2Fetc",
    "webhook uid long": "/api/webhooks/" + "u" * 65,
}

QUERIES = {
    "limit text": "/api/repositories?limit=abc",
    "limit zero": "/api/repositories?limit=0",
    "limit too big": "/api/repositories?limit=101",
    "limit negative": "/api/repositories?limit=-1",
    "limit float": "/api/repositories?limit=1.5",
    "limit exponent": "/api/repositories?limit=1e3",
    "limit empty": "/api/repositories?limit=",
    "limit huge": "/api/repositories?limit=" + "9" * 40,
    "offset negative": "/api/repositories?offset=-1",
    "offset text": "/api/repositories?offset=ten",
    "offset huge": "/api/repositories?offset=" + "9" * 40,
    "offset NUL": "/api/repositories?offset=%00",
    "jobs kind unknown": "/api/repositories/octocat/hello/jobs?kind=build",
    "jobs kind empty": "/api/repositories/octocat/hello/jobs?kind=",
    "jobs limit text": "/api/repositories/octocat/hello/jobs?limit=x",
    "log offset text": "/api/repositories/octocat/hello/jobs/1/log?offset=x",
    "log offset negative": "/api/repositories/octocat/hello/jobs/1/log?offset=-5",
    "log follow maybe": "/api/repositories/octocat/hello/jobs/1/log?follow=maybe",
}

# Header values a client library lets through; each answer is 4xx JSON.
HEADERS: dict[str, dict[str, str]] = {
    "no username": {"Authorization": f"Bearer {TOKEN}"},
    "empty username": {**AUTH, "X-GitHub-Username": ""},
    "unicode username": {**AUTH, "X-GitHub-Username": "octocät"},
    "username with space": {**AUTH, "X-GitHub-Username": "octo cat"},
    "long username": {**AUTH, "X-GitHub-Username": "o" * 1000},
    "username with tab": {**AUTH, "X-GitHub-Username": "octo\tcat"},
    "other user": {**AUTH, "X-GitHub-Username": "reader"},
    "no authorization": {"X-GitHub-Username": USER},
    "empty authorization": {**AUTH, "Authorization": ""},
    "bearer only": {**AUTH, "Authorization": "Bearer"},
    "bearer and spaces": {**AUTH, "Authorization": "Bearer    "},
    "basic scheme": {**AUTH, "Authorization": f"Basic {TOKEN}"},
    "token scheme": {**AUTH, "Authorization": f"token {TOKEN}"},
    "three words": {**AUTH, "Authorization": f"Bearer {TOKEN} extra"},
    "unknown token": {**AUTH, "Authorization": "Bearer ghp_unknownunknownunknown"},
    "token with quotes": {**AUTH, "Authorization": "Bearer \"ghp_x'; DROP TABLE"},
    "token with unicode": {**AUTH, "Authorization": "Bearer ghp_tökén_tökén"},
    "huge token": {**AUTH, "Authorization": "Bearer " + "t" * 8000},
    "token with NUL escape": {**AUTH, "Authorization": "Bearer ghp_\\x00abcdefgh"},
}

# Raw header lines that a client library refuses to send.
RAW_HEADERS = {
    "CR in username": b"X-GitHub-Username: octocat\rX-Injected: 1\r\n",
    "LF in username": b"X-GitHub-Username: octocat\nX-Injected: 1\r\n",
    "folded username": b"X-GitHub-Username: octocat\r\n injected\r\n",
    "NUL in username": b"X-GitHub-Username: octo\x00cat\r\n",
    "UTF-8 username": "X-GitHub-Username: \u043e\u0441tocat\r\n".encode(),
    "latin-1 username": b"X-GitHub-Username: octoc\xe4t\r\n",
    "two usernames": b"X-GitHub-Username: octocat\r\nX-GitHub-Username: reader\r\n",
    "CR in token": b"Authorization: Bearer ghp_abc\rdefghij\r\n",
    "two authorizations": b"Authorization: Bearer a\r\nAuthorization: Bearer b\r\n",
    "two valid tokens": f"Authorization: Bearer {TOKEN}\r\n"
    f"Authorization: Bearer {READER_TOKEN}\r\n".encode(),
}


def assert_json_4xx(answer: Answer, case: object) -> None:
    assert 400 <= answer.status < 500, (case, answer.status, answer.raw[:500])
    assert answer.is_json, (case, answer.status, answer.headers, answer.raw[:500])
    assert isinstance(answer.body, dict) and "detail" in answer.body, (case, answer)


async def send(client: Client, case: Case, extra: bytes = b"") -> Answer:
    """The request as raw bytes: nothing normalised or refused on the way."""
    head = f"{case.method} {case.path} HTTP/1.1\r\nHost: localhost\r\n".encode()
    headers = dict(AUTH if case.headers is None else case.headers)
    if case.content_type is not None and case.body is not None:
        headers["Content-Type"] = case.content_type
    for name, value in headers.items():
        head += f"{name}: {value}\r\n".encode()
    body = case.body or b""
    if case.method in ("POST", "PUT"):
        head += f"Content-Length: {len(body)}\r\n".encode()
    head += extra + b"Connection: close\r\n\r\n"
    assert client.server.host is not None and client.server.port is not None
    return await raw_request(client.server.host, client.server.port, head + body)


async def assert_nothing_stored(client: Client, settings: Settings) -> None:
    response = await client.get("/api/repositories", headers=AUTH)
    assert response.status == 200
    assert await response.json() == {"items": [], "total": 0}
    response = await client.get("/api/owners/octocat/env", headers=AUTH)
    assert await response.json() == {"vars": {}, "secrets": []}
    clones = settings.data_dir / "clones"
    assert not clones.exists() or list(clones.iterdir()) == []
    assert not (settings.data_dir.parent / "etc").exists()


@pytest.mark.parametrize("name", list(BODIES))
async def test_bad_bodies_are_4xx_json_and_store_nothing(
    client: Client, settings: Settings, name: str
) -> None:
    answer = await send(client, BODIES[name])
    assert_json_4xx(answer, name)
    if answer.status == 422:
        assert isinstance(answer.body["detail"], list), answer.body
    await assert_nothing_stored(client, settings)


async def test_2_mb_json_body_is_413(client: Client, settings: Settings) -> None:
    body = js({"owner": OWNER, "name": REPO, "padding": "x" * 2 * 2**20})
    answer = await send(client, create(body))
    assert answer.status == 413, answer
    assert_json_4xx(answer, "2 MB")
    response = await client.post(  # no Content-Length: chunked
        "/api/repositories",
        data=_chunks(body),
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert response.status == 413, await response.text()
    assert "detail" in await response.json()
    await assert_nothing_stored(client, settings)


async def _chunks(body: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(body), 65536):
        yield body[start : start + 65536]


@pytest.mark.parametrize("method", ["GET", "DELETE", "PUT", "POST"])
@pytest.mark.parametrize("name", list(PATHS))
async def test_traversal_and_absurd_paths_are_4xx_json(
    client: Client, settings: Settings, name: str, method: str
) -> None:
    body = js({"vars": {"A": "b"}}) if method in ("PUT", "POST") else None
    answer = await send(client, Case(method, PATHS[name], body))
    assert_json_4xx(answer, (name, method))
    await assert_nothing_stored(client, settings)


@pytest.mark.parametrize("name", list(QUERIES))
async def test_query_parameters_of_the_wrong_type_are_422(
    client: Client, name: str
) -> None:
    answer = await send(client, Case("GET", QUERIES[name]))
    assert answer.status == 422, (name, answer)
    assert_json_4xx(answer, name)


@pytest.mark.parametrize("name", list(HEADERS))
async def test_bad_credential_headers_are_4xx_json(
    client: Client, settings: Settings, name: str
) -> None:
    for case in (
        Case("GET", "/api/repositories", headers=HEADERS[name]),
        Case(
            "POST",
            "/api/repositories",
            js({"owner": OWNER, "name": REPO}),
            headers=HEADERS[name],
        ),
    ):
        answer = await send(client, case)
        assert_json_4xx(answer, name)
        assert answer.status in (403, 404, 422), (name, answer)
    await assert_nothing_stored(client, settings)


@pytest.mark.parametrize("name", list(RAW_HEADERS))
async def test_header_injection_is_refused(
    client: Client, settings: Settings, name: str
) -> None:
    case = Case(
        "POST",
        "/api/repositories",
        js({"owner": OWNER, "name": REPO}),
        headers={"Authorization": f"Bearer {TOKEN}"}
        if b"X-GitHub-Username" in RAW_HEADERS[name]
        else {"X-GitHub-Username": USER},
    )
    answer = await send(client, case, extra=RAW_HEADERS[name])
    assert 400 <= answer.status < 500, (name, answer)
    if answer.status != 400:  # aiohttp's parser answers 400 in plain text
        assert_json_4xx(answer, name)
    assert answer.headers.get("X-Injected") is None
    await assert_nothing_stored(client, settings)


@pytest.mark.integrational
@pytest.mark.parametrize("follow", ["false", "true"])
@pytest.mark.parametrize(
    "offset",
    [
        2**53 - 1,
        10**30,
    ],
)
async def test_log_offset_past_the_end_is_an_empty_answer(
    client: Client, remote: GitRemote, offset: int, follow: str
) -> None:
    await register(client)
    response = await client.get(
        f"/api/repositories/{OWNER}/{REPO}/jobs/1/log?offset={offset}&follow={follow}",
        headers=AUTH,
    )
    assert response.status in (200, 422), await response.text()
    if response.status == 200:
        assert await response.read() == b""


@pytest.mark.integrational
@pytest.mark.parametrize(
    ("body", "content_type", "signed"),
    [
        pytest.param(
            b"[" * 100_000 + b"]" * 100_000, "application/json", True, id="deep"
        ),
        pytest.param(
            b'{"ref": "refs/heads/main", "after": '
            + b"[" * 60_000
            + b"]" * 60_000
            + b"}",
            "application/json",
            True,
            id="deep field",
        ),
        pytest.param(b'{"ref": "\xff"}', "application/json", True, id="invalid UTF-8"),
        pytest.param(b"{", "application/json", True, id="truncated"),
        pytest.param(b"null", "application/json", True, id="null"),
        pytest.param(b"[]", "application/json", True, id="a list"),
        pytest.param(
            b"payload=%7B", "application/x-www-form-urlencoded", True, id="form"
        ),
        pytest.param(
            b"ref=x", "application/x-www-form-urlencoded", True, id="no payload"
        ),
        pytest.param(
            b"payload=%FF", "application/x-www-form-urlencoded", True, id="form bytes"
        ),
        pytest.param(b"{}", "application/json", False, id="unsigned"),
    ],
)
async def test_webhook_bad_bodies_are_4xx_json_and_queue_nothing(
    client: Client, remote: GitRemote, body: bytes, content_type: str, signed: bool
) -> None:
    webhook = (await register(client))["webhook"]
    headers = {
        "Content-Type": content_type,
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": "d-1",
    }
    if signed:
        headers["X-Hub-Signature-256"] = sign(body, webhook["secret"])
    path = "/api/" + webhook["url"].split("/api/", 1)[1]
    answer = await send(client, Case("POST", path, body, headers, content_type))
    assert_json_4xx(answer, body[:40])
    jobs = await (
        await client.get(f"/api/repositories/{OWNER}/{REPO}/jobs", headers=AUTH)
    ).json()
    assert [job["kind"] for job in jobs["items"]] == ["clone"]


@pytest.mark.integrational
async def test_a_malformed_authorization_line_keeps_the_token_out_of_the_log(
    tmp_path: Path, github: FakeGitHub
) -> None:
    server = ServerProcess(tmp_path / "var", server_env(tmp_path, github)).start()
    try:
        case = Case("GET", "/api/repositories", headers={"X-GitHub-Username": USER})
        head = f"{case.method} {case.path} HTTP/1.1\r\nHost: localhost\r\n"
        # A token read from a file with CRLF line ends, pasted as is.
        line = f"Authorization: Bearer {TOKEN}\r\r\n"
        answer = await raw_request(
            "127.0.0.1", server.port, (head + line + "\r\n").encode()
        )
        assert answer.status == 400
        await asyncio.sleep(0.2)
    finally:
        server.stop()
    assert TOKEN not in server.output()


def test_only_a_json_recursion_error_is_an_input_error() -> None:
    def recurse(depth: int) -> int:
        return recurse(depth + 1) + 1

    with pytest.raises(RecursionError) as deep_json:
        json.loads("[" * 100_000)
    with pytest.raises(RecursionError) as deep_code:
        recurse(0)
    assert is_json_too_deep(deep_json.value)
    assert error_response(deep_json.value).status == 422
    assert not is_json_too_deep(deep_code.value)
    assert error_response(deep_code.value).status == 500  # our bug, not input


@pytest.mark.integrational
async def test_null_where_a_body_is_optional_is_no_body(
    client: Client, remote: GitRemote
) -> None:
    await register(client)
    answer = await send(
        client, Case("POST", f"/api/repositories/{OWNER}/{REPO}/deploys", b"null")
    )
    assert answer.status == 202, answer
    assert answer.body["kind"] == "deploy"
