"""``POST /api/webhooks/{uid}``: signatures, events, deliveries, payloads."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import json
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from api.errors import ValidationFailed
from api.keys import RUNNER, STORAGE
from api.webhooks.payloads import parse_body, parse_push
from tests.fakes.github import FakeGitHub
from tests.fuzz_support import raw_request
from tests.support import (
    Client,
    GitRemote,
    auth_headers,
    push_payload,
    register,
    revoke,
    send_push,
    wait_for_job,
    wait_for_statuses,
    webhook_headers,
)

ZERO_SHA = "0" * 40
MiB = 2**20

Webhook = Mapping[str, str]


def webhook_path(webhook: Webhook) -> str:
    return "/api/" + webhook["url"].split("/api/", 1)[1]


async def deliver(
    client: Client,
    webhook: Webhook,
    payload: Any,
    *,
    event: str = "push",
    delivery: str | None = None,
) -> tuple[int, dict[str, Any]]:
    """POST a correctly signed JSON delivery."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    response = await client.post(
        webhook_path(webhook),
        data=body,
        headers=webhook_headers(body, webhook["secret"], event, delivery),
    )
    return response.status, await response.json()


async def jobs_of(client: Client) -> list[dict[str, Any]]:
    response = await client.get(
        "/api/repositories/octocat/hello/jobs", headers=auth_headers()
    )
    assert response.status == 200, await response.text()
    data: dict[str, Any] = await response.json()
    assert data["total"] == len(data["items"])
    items: list[dict[str, Any]] = data["items"]
    return items


async def deliveries_of(client: Client) -> list[tuple[str, str, str, int | None]]:
    rows = await client.app[STORAGE].db.fetch_all(
        "SELECT d.delivery_id, d.event, d.result, j.number FROM deliveries AS d"
        " LEFT JOIN jobs AS j ON j.id = d.job_id ORDER BY d.id"
    )
    return [(row[0], row[1], row[2], row[3]) for row in rows]


@pytest.fixture
async def webhook(
    client: Client, github: FakeGitHub, remote: GitRemote
) -> AsyncIterator[Webhook]:
    """``octocat/hello`` registered and cloned; its webhook URL and secret."""
    repository = await register(client)
    yield repository["webhook"]


# -- signatures ---------------------------------------------------------------


def _missing(body: bytes, secret: str) -> tuple[bytes, dict[str, str]]:
    headers = webhook_headers(body, secret)
    del headers["X-Hub-Signature-256"]
    return body, headers


def _wrong_secret(body: bytes, secret: str) -> tuple[bytes, dict[str, str]]:
    return body, webhook_headers(body, secret + "x")


def _sha1_only(body: bytes, secret: str) -> tuple[bytes, dict[str, str]]:
    headers = webhook_headers(body, secret)
    del headers["X-Hub-Signature-256"]
    digest = hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()
    headers["X-Hub-Signature"] = f"sha1={digest}"
    return body, headers


def _sha1_in_256_header(body: bytes, secret: str) -> tuple[bytes, dict[str, str]]:
    headers = webhook_headers(body, secret)
    digest = hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()
    headers["X-Hub-Signature-256"] = f"sha1={digest}"
    return body, headers


def _bare_hex(body: bytes, secret: str) -> tuple[bytes, dict[str, str]]:
    headers = webhook_headers(body, secret)
    headers["X-Hub-Signature-256"] = headers["X-Hub-Signature-256"].removeprefix(
        "sha256="
    )
    return body, headers


def _not_hex(body: bytes, secret: str) -> tuple[bytes, dict[str, str]]:
    headers = webhook_headers(body, secret)
    headers["X-Hub-Signature-256"] = "sha256=" + "z" * 64
    return body, headers


def _truncated(body: bytes, secret: str) -> tuple[bytes, dict[str, str]]:
    headers = webhook_headers(body, secret)
    headers["X-Hub-Signature-256"] = headers["X-Hub-Signature-256"][:-2]
    return body, headers


def _empty(body: bytes, secret: str) -> tuple[bytes, dict[str, str]]:
    headers = webhook_headers(body, secret)
    headers["X-Hub-Signature-256"] = ""
    return body, headers


def _tampered(body: bytes, secret: str) -> tuple[bytes, dict[str, str]]:
    headers = webhook_headers(body, secret)
    return body.replace(b'"main"', b'"evil"').replace(b"main", b"mainx"), headers


def _signed_other_body(body: bytes, secret: str) -> tuple[bytes, dict[str, str]]:
    return body + b" ", webhook_headers(body, secret)


BAD_SIGNATURES = {
    "missing header": _missing,
    "wrong secret": _wrong_secret,
    "sha1 header only": _sha1_only,
    "sha1 digest in the sha256 header": _sha1_in_256_header,
    "hex without sha256= prefix": _bare_hex,
    "not hex": _not_hex,
    "truncated digest": _truncated,
    "empty header": _empty,
    "body tampered": _tampered,
    "trailing byte added": _signed_other_body,
}


async def test_every_bad_signature_form_is_401_and_changes_nothing(
    client: Client, webhook: Webhook, remote: GitRemote
) -> None:
    body = json.dumps(push_payload(remote.commit({"a": "1"}))).encode()
    for form, forge in BAD_SIGNATURES.items():
        sent, headers = forge(body, webhook["secret"])
        response = await client.post(webhook_path(webhook), data=sent, headers=headers)
        assert response.status == 401, form
        assert await response.json() == {"detail": "Invalid signature"}, form
    assert [job["kind"] for job in await jobs_of(client)] == ["clone"]
    assert await deliveries_of(client) == []
    # the same body, correctly signed, goes through
    response = await client.post(
        webhook_path(webhook),
        data=body,
        headers=webhook_headers(body, webhook["secret"]),
    )
    assert response.status == 202
    await wait_for_job(client, (await response.json())["number"])


async def test_signature_is_checked_before_the_body_is_read(
    client: Client, webhook: Webhook
) -> None:
    body = b"{not json"
    headers = webhook_headers(body, "not-the-secret")
    response = await client.post(webhook_path(webhook), data=body, headers=headers)
    assert response.status == 401
    assert await response.json() == {"detail": "Invalid signature"}


@pytest.mark.parametrize(
    "signature",
    [None, "sha1=" + "0" * 40, "sha256=xyz"],
    ids=["missing", "sha1", "malformed"],
)
async def test_unsigned_delivery_is_refused_before_its_body_arrives(
    client: Client, webhook: Webhook, signature: str | None
) -> None:
    """Headers announcing 25 MB, no body sent: the 401 comes anyway, so the
    server never waited for (nor buffered) an unsigned body."""
    assert client.server.host is not None and client.server.port is not None
    reader, writer = await asyncio.open_connection(
        client.server.host, client.server.port
    )
    lines = [
        f"POST {webhook_path(webhook)} HTTP/1.1",
        f"Host: {client.server.host}",
        "Content-Type: application/json",
        "X-GitHub-Event: push",
        f"Content-Length: {25 * 2**20}",
    ]
    if signature is not None:
        lines.append(f"X-Hub-Signature-256: {signature}")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    try:
        async with asyncio.timeout(5):
            status_line = await reader.readline()
            head = await reader.readuntil(b"\r\n\r\n")
    finally:
        writer.close()
    assert status_line.split()[1] == b"401", status_line
    length = int(
        next(
            line.split(b":", 1)[1]
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
    )
    body = await asyncio.wait_for(reader.readexactly(length), 5)
    assert json.loads(body) == {"detail": "Invalid signature"}


async def test_another_repositorys_secret_is_refused(
    client: Client, github: FakeGitHub, webhook: Webhook, tmp_path: Path
) -> None:
    github.add_repo("octocat", "other", permissions={"octocat": "ADMIN"})
    GitRemote(tmp_path, "octocat", "other").commit({"Makefile": "test:\n"})
    other = (await register(client, name="other"))["webhook"]
    assert other["secret"] != webhook["secret"]
    body = json.dumps(push_payload("a" * 40)).encode()
    response = await client.post(
        webhook_path(webhook), data=body, headers=webhook_headers(body, other["secret"])
    )
    assert response.status == 401


async def test_unknown_uid_is_404(client: Client, webhook: Webhook) -> None:
    body = json.dumps(push_payload("a" * 40)).encode()
    response = await client.post(
        "/api/webhooks/no-such-uid",
        data=body,
        headers=webhook_headers(body, webhook["secret"]),
    )
    assert response.status == 404
    assert "detail" in await response.json()


async def test_revoked_repository_is_410_after_the_signature_check(
    client: Client, webhook: Webhook, remote: GitRemote
) -> None:
    await revoke(client)
    sha = remote.commit({"a": "1"})
    status, body = await deliver(client, webhook, push_payload(sha))
    assert status == 410
    assert "revoked" in body["detail"]

    data = json.dumps(push_payload(sha)).encode()
    response = await client.post(
        webhook_path(webhook),
        data=data,
        headers=webhook_headers(data, "wrong"),
    )
    assert response.status == 401
    assert [job["kind"] for job in await jobs_of(client)] == ["clone"]


# -- events ---------------------------------------------------------------------


async def test_ping_is_200_and_recorded(client: Client, webhook: Webhook) -> None:
    payload = {"zen": "Design for failure.", "hook_id": 1, "hook": {"type": "Repo"}}
    status, body = await deliver(client, webhook, payload, event="ping", delivery="p1")
    assert status == 200
    assert body == {"detail": "pong"}
    assert await deliveries_of(client) == [("p1", "ping", "pong", None)]
    assert [job["kind"] for job in await jobs_of(client)] == ["clone"]


IGNORED_DELIVERIES: dict[str, tuple[str, dict[str, Any]]] = {
    "other branch": ("push", push_payload("b" * 40, branch="feature")),
    "tag": ("push", {**push_payload("b" * 40), "ref": "refs/tags/v1.0"}),
    "tag named like the branch": (
        "push",
        {**push_payload("b" * 40), "ref": "refs/tags/main"},
    ),
    "tracked branch deleted": ("push", {**push_payload(ZERO_SHA), "deleted": True}),
    "zero sha without deleted": ("push", push_payload(ZERO_SHA)),
    "pull request": (
        "pull_request",
        {"action": "opened", "number": 1, "ref": "refs/heads/main"},
    ),
    "issues": ("issues", {"action": "opened"}),
    "no event header": ("", {"ref": "refs/heads/main"}),
}


async def test_ignored_deliveries_are_recorded_and_queue_nothing(
    client: Client, webhook: Webhook
) -> None:
    for case, (event, payload) in IGNORED_DELIVERIES.items():
        status, body = await deliver(
            client, webhook, payload, event=event, delivery=case
        )
        assert (status, body) == (202, {"detail": "ignored"}), case
        assert (await deliveries_of(client))[-1] == (case, event, "ignored", None)
    assert [job["kind"] for job in await jobs_of(client)] == ["clone"]
    assert len(await deliveries_of(client)) == len(IGNORED_DELIVERIES)


async def test_push_to_tracked_branch_queues_a_test_job(
    client: Client, webhook: Webhook, remote: GitRemote
) -> None:
    sha = remote.commit({"a": "1"})
    status, job = await send_push(client, webhook, sha, delivery="d-1")
    assert status == 202
    assert job["number"] == 2
    assert job["kind"] == "test"
    assert job["status"] in {"queued", "running"}
    assert job["sha"] == sha
    assert job["ref"] == "main"
    assert job["trigger"] == {"type": "push", "delivery": "d-1", "user": "octocat"}
    assert job["log_url"] == (
        "http://hobotnica.test/api/repositories/octocat/hello/jobs/2/log"
    )
    assert await deliveries_of(client) == [("d-1", "push", "queued", 2)]
    done = await wait_for_job(client, 2)
    assert done["status"] == "success"


# -- redeliveries ---------------------------------------------------------------


async def test_redelivery_returns_the_first_job_and_queues_nothing(
    client: Client, webhook: Webhook, remote: GitRemote
) -> None:
    sha = remote.commit({"a": "1"})
    first_status, first = await send_push(client, webhook, sha, delivery="same")
    assert first_status == 202
    await wait_for_job(client, first["number"])
    again_status, again = await send_push(client, webhook, sha, delivery="same")
    assert again_status == 202
    assert again["number"] == first["number"]
    assert again["sha"] == sha
    assert again["status"] == "success"  # the job as it is now
    # even a redelivery that claims another commit queues nothing
    other = remote.commit({"b": "2"})
    third_status, third = await send_push(client, webhook, other, delivery="same")
    assert (third_status, third["number"], third["sha"]) == (202, 2, sha)
    assert [job["number"] for job in await jobs_of(client)] == [2, 1]
    assert await deliveries_of(client) == [("same", "push", "queued", 2)]


async def test_redelivery_of_an_ignored_delivery_stays_ignored(
    client: Client, webhook: Webhook
) -> None:
    payload = push_payload("c" * 40, branch="feature")
    for _ in range(2):
        status, body = await deliver(client, webhook, payload, delivery="ign")
        assert (status, body) == (202, {"detail": "ignored"})
    assert [job["kind"] for job in await jobs_of(client)] == ["clone"]
    assert await deliveries_of(client) == [("ign", "push", "ignored", None)]


async def test_concurrent_redeliveries_create_one_job(
    client: Client, webhook: Webhook, remote: GitRemote
) -> None:
    sha = remote.commit({"a": "1"})
    results = await asyncio.gather(
        *(send_push(client, webhook, sha, delivery="race") for _ in range(5))
    )
    assert {status for status, _ in results} == {202}
    assert {job["number"] for _, job in results} == {2}
    assert [job["number"] for job in await jobs_of(client)] == [2, 1]
    await wait_for_job(client, 2)


# -- superseding ------------------------------------------------------------------


@pytest.mark.integrational
async def test_newer_push_supersedes_a_queued_test_job(
    client: Client, github: FakeGitHub, remote: GitRemote, tmp_path: Path
) -> None:
    release = tmp_path / "release"
    makefile = (
        "test:\n"
        f"\t@while [ ! -e {release} ]; do sleep 0.02; done\n"
        "\t@echo tested $(GIT_COMMIT)\n"
    )
    remote.commit({"Makefile": makefile})
    webhook = (await register(client))["webhook"]

    first_sha = remote.commit({"a": "1"})
    _, first = await send_push(client, webhook, first_sha)
    await wait_for_job(client, first["number"], statuses={"running"})
    middle_sha = remote.commit({"a": "2"})
    _, middle = await send_push(client, webhook, middle_sha)
    last_sha = remote.commit({"a": "3"})
    _, last = await send_push(client, webhook, last_sha)
    assert middle["status"] == last["status"] == "queued"

    superseded = await wait_for_job(client, middle["number"])
    assert superseded["status"] == "superseded"
    assert superseded["reason"] == f"superseded by job #{last['number']}"
    assert superseded["started_at"] is None

    release.touch()
    done_first = await wait_for_job(client, first["number"])
    done_last = await wait_for_job(client, last["number"])
    assert done_first["status"] == done_last["status"] == "success"
    assert done_last["sha"] == last_sha
    log = await client.get(
        f"/api/repositories/octocat/hello/jobs/{last['number']}/log",
        headers=auth_headers(),
    )
    assert f"tested {last_sha}" in await log.text()

    posted = await wait_for_statuses(github, middle_sha, "hobotnica/test", "error")
    assert "superseded" in posted[-1]["description"]
    await wait_for_statuses(github, last_sha, "hobotnica/test", "success")


async def test_push_does_not_supersede_a_running_job(
    client: Client, remote: GitRemote, tmp_path: Path
) -> None:
    release = tmp_path / "release"
    remote.commit(
        {"Makefile": f"test:\n\t@while [ ! -e {release} ]; do sleep 0.02; done\n"}
    )
    webhook = (await register(client))["webhook"]
    _, first = await send_push(client, webhook, remote.commit({"a": "1"}))
    await wait_for_job(client, first["number"], statuses={"running"})
    _, second = await send_push(client, webhook, remote.commit({"a": "2"}))
    release.touch()
    assert (await wait_for_job(client, first["number"]))["status"] == "success"
    assert (await wait_for_job(client, second["number"]))["status"] == "success"


# -- bodies -----------------------------------------------------------------------


async def test_form_encoded_payload(
    client: Client, webhook: Webhook, remote: GitRemote
) -> None:
    sha = remote.commit({"a": "1"})
    body = urlencode({"payload": json.dumps(push_payload(sha))}).encode()
    headers = webhook_headers(body, webhook["secret"])
    headers["Content-Type"] = "application/x-www-form-urlencoded"
    response = await client.post(webhook_path(webhook), data=body, headers=headers)
    assert response.status == 202, await response.text()
    job = await response.json()
    assert (job["kind"], job["sha"]) == ("test", sha)
    assert (await wait_for_job(client, job["number"]))["status"] == "success"


async def test_form_encoded_ignored_push(client: Client, webhook: Webhook) -> None:
    payload = push_payload("d" * 40, branch="other")
    body = urlencode({"payload": json.dumps(payload)}).encode()
    headers = webhook_headers(body, webhook["secret"])
    headers["Content-Type"] = "application/x-www-form-urlencoded; charset=utf-8"
    response = await client.post(webhook_path(webhook), data=body, headers=headers)
    assert (response.status, await response.json()) == (202, {"detail": "ignored"})


def _padded_push(sha: str, size: int) -> bytes:
    """A push payload of exactly ``size`` bytes of JSON."""
    payload = push_payload(sha, padding="")
    base = len(json.dumps(payload).encode())
    payload["padding"] = "x" * (size - base)
    body = json.dumps(payload).encode()
    assert len(body) == size
    return body


@pytest.mark.integrational
async def test_25_mib_payload_is_accepted(
    client: Client, webhook: Webhook, remote: GitRemote
) -> None:
    sha = remote.commit({"a": "1"})
    body = _padded_push(sha, 25 * MiB)
    response = await client.post(
        webhook_path(webhook),
        data=io.BytesIO(body),
        headers=webhook_headers(body, webhook["secret"]),
    )
    assert response.status == 202, await response.text()
    job = await response.json()
    assert (job["kind"], job["sha"]) == ("test", sha)
    assert (await wait_for_job(client, job["number"]))["status"] == "success"


@pytest.mark.integrational
async def test_26_mib_payload_is_413(
    client: Client, webhook: Webhook, remote: GitRemote
) -> None:
    body = _padded_push(remote.commit({"a": "1"}), 26 * MiB)
    response = await client.post(
        webhook_path(webhook),
        data=io.BytesIO(body),
        headers=webhook_headers(body, webhook["secret"]),
    )
    assert response.status == 413
    assert "detail" in await response.json()
    assert [job["kind"] for job in await jobs_of(client)] == ["clone"]


@pytest.mark.integrational
async def test_26_mib_chunked_payload_is_413(
    client: Client, webhook: Webhook, remote: GitRemote
) -> None:
    """Without Content-Length the limit holds while reading."""
    body = _padded_push(remote.commit({"a": "1"}), 26 * MiB)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), MiB):
            yield body[start : start + MiB]

    response = await client.post(
        webhook_path(webhook),
        data=chunks(),
        headers=webhook_headers(body, webhook["secret"]),
    )
    assert response.status == 413
    assert [job["kind"] for job in await jobs_of(client)] == ["clone"]


async def test_large_bodies_are_refused_on_other_routes(
    client: Client, webhook: Webhook
) -> None:
    body = json.dumps({"vars": {"BIG": "x" * (2 * MiB)}}).encode()
    response = await client.put(
        "/api/repositories/octocat/hello/env",
        data=io.BytesIO(body),
        headers={**auth_headers(), "Content-Type": "application/json"},
    )
    assert response.status == 413
    assert "detail" in await response.json()


BAD_PUSHES = {
    "invalid JSON": b'{"ref": "refs/heads/main", ',
    "not UTF-8": b'{"ref": "\xff"}',
    "JSON array": b"[]",
    "JSON string": b'"push"',
    "JSON null": b"null",
    "empty body": b"",
    "no ref": json.dumps({"after": "a" * 40}).encode(),
    "no after": json.dumps({"ref": "refs/heads/main"}).encode(),
    "ref not a string": json.dumps({"ref": 1, "after": "a" * 40}).encode(),
    "after not a sha": json.dumps({"ref": "refs/heads/main", "after": "HEAD"}).encode(),
    "after with a newline": json.dumps(
        {"ref": "refs/heads/main", "after": "a" * 40 + "\n"}
    ).encode(),
    "after upper-case": json.dumps(
        {"ref": "refs/heads/main", "after": "A" * 40}
    ).encode(),
}


async def test_signed_push_with_a_bad_payload_is_422_and_stores_nothing(
    client: Client, webhook: Webhook
) -> None:
    for case, body in BAD_PUSHES.items():
        status, answer = await deliver(client, webhook, body, delivery=case)
        assert status == 422, case
        [error] = answer["detail"]
        assert error["loc"][0] == "body", case
        assert error["message"], case
    assert [job["kind"] for job in await jobs_of(client)] == ["clone"]
    assert await deliveries_of(client) == []


async def test_form_encoded_without_payload_field_is_422(
    client: Client, webhook: Webhook
) -> None:
    body = b"other=1"
    headers = webhook_headers(body, webhook["secret"])
    headers["Content-Type"] = "application/x-www-form-urlencoded"
    response = await client.post(webhook_path(webhook), data=body, headers=headers)
    assert response.status == 422
    [error] = (await response.json())["detail"]
    assert error["loc"] == ["body", "payload"]
    assert await deliveries_of(client) == []


# -- draining ---------------------------------------------------------------------


async def test_push_while_draining_is_503_and_can_be_redelivered(
    client: Client, webhook: Webhook, remote: GitRemote
) -> None:
    sha = remote.commit({"a": "1"})
    client.app[RUNNER].draining = True
    try:
        status_code = 0
        body = json.dumps(push_payload(sha)).encode()
        response = await client.post(
            webhook_path(webhook),
            data=body,
            headers=webhook_headers(body, webhook["secret"], delivery="drained"),
        )
        status_code = response.status
        assert status_code == 503
        assert int(response.headers["Retry-After"]) > 0
        assert "detail" in await response.json()
        assert [job["kind"] for job in await jobs_of(client)] == ["clone"]
        assert await deliveries_of(client) == []
    finally:
        client.app[RUNNER].draining = False
    # GitHub's redelivery (to the next instance) queues the job. Not waited
    # for: the simulated drain may have stopped this runner's loop.
    status, job = await send_push(client, webhook, sha, delivery="drained")
    assert (status, job["kind"], job["status"], job["sha"]) == (
        202,
        "test",
        "queued",
        sha,
    )
    assert await deliveries_of(client) == [("drained", "push", "queued", 2)]


async def test_redelivery_while_draining_answers_the_first_job(
    client: Client, webhook: Webhook, remote: GitRemote
) -> None:
    sha = remote.commit({"a": "1"})
    _, first = await send_push(client, webhook, sha, delivery="before-drain")
    await wait_for_job(client, first["number"])
    client.app[RUNNER].draining = True
    try:
        status, again = await send_push(client, webhook, sha, delivery="before-drain")
    finally:
        client.app[RUNNER].draining = False
    assert (status, again["number"]) == (202, first["number"])


async def test_ignored_push_while_draining_is_still_ignored(
    client: Client, webhook: Webhook
) -> None:
    client.app[RUNNER].draining = True
    try:
        status, body = await deliver(
            client, webhook, push_payload("e" * 40, branch="feature")
        )
    finally:
        client.app[RUNNER].draining = False
    assert (status, body) == (202, {"detail": "ignored"})


# -- end to end: job, log and commit statuses --------------------------------------


async def job_log(client: Client, job: Mapping[str, Any]) -> str:
    path = job["log_url"].removeprefix("http://hobotnica.test")
    response = await client.get(path, headers=auth_headers())
    assert response.status == 200
    return await response.text()


@pytest.mark.integrational
async def test_signed_push_runs_make_test_and_reports_success(
    client: Client, github: FakeGitHub, remote: GitRemote
) -> None:
    remote.commit({"Makefile": "test:\n\t@echo unit tests of $(GIT_COMMIT) pass\n"})
    webhook = (await register(client))["webhook"]
    sha = remote.commit({"src.txt": "v2"}, "second")
    status, queued = await send_push(client, webhook, sha)
    assert status == 202
    done = await wait_for_job(client, queued["number"])
    assert done["status"] == "success"
    assert done["exit_code"] == 0
    assert done["sha"] == sha
    assert f"unit tests of {sha} pass" in await job_log(client, done)

    posted = await wait_for_statuses(github, sha, "hobotnica/test", "success")
    assert posted[0]["state"] == "pending"
    assert {s["state"] for s in posted[:-1]} == {"pending"}
    assert "queued" in posted[0]["description"]
    assert all(s["target_url"] == done["log_url"] for s in posted)
    assert all((s["owner"], s["name"]) == ("octocat", "hello") for s in posted)
    assert posted[-1]["description"].startswith("make test passed in ")
    assert posted[-1]["description"].endswith(" s")
    assert not [s for s in github.statuses if s["context"] != "hobotnica/test"]


@pytest.mark.integrational
async def test_failing_make_test_is_failed_with_a_failure_status(
    client: Client, github: FakeGitHub, remote: GitRemote
) -> None:
    webhook = (await register(client))["webhook"]
    sha = remote.commit(
        {"Makefile": "test:\n\t@echo about to break\n\t@exit 3\n"}, "break it"
    )
    _, queued = await send_push(client, webhook, sha)
    done = await wait_for_job(client, queued["number"])
    assert (done["status"], done["exit_code"], done["sha"]) == ("failed", 2, sha)
    assert "about to break" in await job_log(client, done)
    posted = await wait_for_statuses(github, sha, "hobotnica/test", "failure")
    assert posted[0]["state"] == "pending"
    assert "exit code 2" in posted[-1]["description"]
    assert posted[-1]["target_url"] == done["log_url"]


@pytest.mark.integrational
async def test_unknown_sha_is_an_error_status(
    client: Client, github: FakeGitHub, webhook: Webhook
) -> None:
    sha = "f" * 40
    _, queued = await send_push(client, webhook, sha)
    done = await wait_for_job(client, queued["number"])
    assert done["status"] == "error"
    posted = await wait_for_statuses(github, sha, "hobotnica/test", "error")
    assert "git" in posted[-1]["description"]


@pytest.mark.integrational
async def test_jobs_do_not_wait_for_github(
    client: Client, github: FakeGitHub, webhook: Webhook, remote: GitRemote
) -> None:
    """A slow GitHub delays the statuses, never the webhook answer or the job."""
    sha = remote.commit({"a": "1"})
    await jobs_of(client)  # the caller's token is in the access cache now
    github.delay(1.0)  # every status takes a second, one after the other
    status, queued = await send_push(client, webhook, sha)
    assert status == 202
    assert github.statuses == []  # answered before GitHub has seen anything
    done = await wait_for_job(client, queued["number"])
    assert done["status"] == "success"
    assert not [s for s in github.statuses if s["state"] == "success"]
    github.delay(0)
    await wait_for_statuses(github, sha, "hobotnica/test", "success")


# -- payload parsing, without a server ---------------------------------------------


def test_parse_body_reads_json_and_form_payloads() -> None:
    data = {"ref": "refs/heads/main", "after": "a" * 40, "note": "ü & = +"}
    as_json = json.dumps(data).encode()
    assert parse_body(as_json, "application/json") == data
    assert parse_body(as_json, "application/octet-stream") == data
    form = urlencode({"payload": json.dumps(data), "other": "x"}).encode()
    assert parse_body(form, "application/x-www-form-urlencoded") == data


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (b"{", "application/json", "not valid JSON"),
        (b"[1]", "application/json", "must be a JSON object"),
        (b"payload=%7B", "application/x-www-form-urlencoded", "not valid JSON"),
        (b"payload=1", "application/x-www-form-urlencoded", "must be a JSON object"),
        (b"zen=1", "application/x-www-form-urlencoded", "is required in a form"),
        (b"\xff", "application/json", "not UTF-8"),
    ],
)
def test_parse_body_errors(body: bytes, content_type: str, message: str) -> None:
    with pytest.raises(ValidationFailed, match=message):
        parse_body(body, content_type)


@pytest.mark.parametrize(
    ("data", "branch", "removes"),
    [
        (push_payload("a" * 40), "main", False),
        (push_payload("a" * 64, branch="release/1.x"), "release/1.x", False),
        ({**push_payload("a" * 40), "ref": "refs/tags/v1"}, None, False),
        ({**push_payload(ZERO_SHA), "deleted": True}, "main", True),
        (push_payload(ZERO_SHA), "main", True),
        (push_payload("0" * 64), "main", True),
        ({**push_payload("a" * 40), "deleted": "false"}, "main", False),
    ],
)
def test_parse_push(data: dict[str, Any], branch: str | None, removes: bool) -> None:
    push = parse_push(data)
    assert push.branch == branch
    assert push.removes_branch is removes
    assert push.after == data["after"]
    assert push.sender == "octocat"


def test_parse_push_without_sender() -> None:
    push = parse_push({"ref": "refs/heads/main", "after": "a" * 40, "sender": "x"})
    assert push.sender is None


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("X-GitHub-Delivery", b"id-\xff\xfe"),
        ("X-GitHub-Delivery", b"x" * 200),
        ("X-GitHub-Event", b"issues\xff"),
        ("X-GitHub-Event", b"e" * 100),
    ],
)
async def test_signed_delivery_with_bad_header_bytes_is_422(
    client: Client, webhook: Webhook, header: str, value: bytes
) -> None:
    """The signature covers the body only: a header that is not printable
    ASCII (aiohttp keeps undecodable bytes as surrogates) is refused before
    it reaches the database, not a 500."""
    body = json.dumps({"zen": "Keep it logically awesome."}).encode()
    headers = {
        "X-GitHub-Event": b"ping",
        "X-GitHub-Delivery": b"delivery-1",
        header: value,
        "X-Hub-Signature-256": webhook_headers(body, webhook["secret"])[
            "X-Hub-Signature-256"
        ].encode(),
    }
    lines = headers.items()
    request = (
        f"POST {webhook_path(webhook)} HTTP/1.1\r\nHost: x\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n".encode()
        + b"".join(name.encode() + b": " + raw + b"\r\n" for name, raw in lines)
        + b"\r\n"
        + body
    )
    assert client.server.host is not None and client.server.port is not None
    answer = await raw_request(client.server.host, client.server.port, request)
    assert answer.status == 422, answer
    [error] = answer.body["detail"]
    assert error["loc"] == ["header", header]
    assert await deliveries_of(client) == []
