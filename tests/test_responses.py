"""Answers are checked against openapi.yaml; a mismatch is a logged 500."""

from __future__ import annotations

import copy
import json
import logging
from typing import Any

import pytest
import yaml
from pytest_aiohttp import AiohttpClient

from api import health
from api.app import SCHEMA_PATH, create_app
from api.responses import ResponseMismatch, ResponseSchemas
from api.settings import Settings

JSON = "application/json"
JOB: dict[str, Any] = {
    "number": 3,
    "repository": "octocat/hello",
    "kind": "test",
    "status": "running",
    "ref": "refs/heads/main",
    "sha": "a" * 40,
    "exit_code": None,
    "reason": None,
    "created_at": "2026-11-22T23:00:00Z",
    "started_at": "2026-11-22T23:00:01Z",
    "finished_at": None,
    "duration": None,
    "trigger": {"type": "push", "delivery": "d-1"},
    "url": "/api/repositories/octocat/hello/jobs/3",
    "log_url": "/api/repositories/octocat/hello/jobs/3/log",
}


@pytest.fixture(scope="module")
def schemas() -> ResponseSchemas:
    return ResponseSchemas.from_spec(yaml.safe_load(SCHEMA_PATH.read_text()))


def job_list(*jobs: dict[str, Any]) -> bytes:
    return json.dumps({"items": list(jobs), "total": len(jobs)}).encode()


def test_a_declared_answer_passes(schemas: ResponseSchemas) -> None:
    finished = {**JOB, "status": "success", "exit_code": 0, "duration": 1.5}
    schemas.check("list_jobs", 200, JSON, job_list(JOB, finished))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda job: job.pop("sha"), "'sha' is a required property"),
        (lambda job: job.update(started_at="yesterday"), "is not a 'date-time'"),
        (lambda job: job.update(status="sleeping"), "is not one of"),
        (lambda job: job.update(number="3"), "is not of type integer"),
        (lambda job: job.update(ref=5), "is not of type string"),
        (lambda job: job.update(created_at=None), "None for not nullable"),
    ],
)
def test_a_wrong_item_deep_in_a_list_is_found(
    schemas: ResponseSchemas, change: Any, message: str
) -> None:
    broken = copy.deepcopy(JOB)
    change(broken)
    with pytest.raises(ResponseMismatch, match=message) as caught:
        schemas.check("list_jobs", 200, JSON, job_list(JOB, broken))
    assert str(caught.value).startswith("items/1")


def test_undeclared_status_falls_back_to_default(schemas: ResponseSchemas) -> None:
    schemas.check("list_jobs", 418, JSON, b'{"detail": "teapot"}')
    with pytest.raises(ResponseMismatch, match="'detail' is a required property"):
        schemas.check("list_jobs", 418, JSON, b'{"message": "teapot"}')


def test_content_type_must_be_declared(schemas: ResponseSchemas) -> None:
    with pytest.raises(ResponseMismatch, match="'text/html' is not declared"):
        schemas.check("list_jobs", 200, "text/html", job_list(JOB))


def test_a_body_that_is_not_json_is_a_mismatch(schemas: ResponseSchemas) -> None:
    with pytest.raises(ResponseMismatch, match="not JSON"):
        schemas.check("list_jobs", 200, JSON, b"{items: []")


def test_a_text_answer_is_checked_by_status_and_content_type_only(
    schemas: ResponseSchemas,
) -> None:
    """A log holds whatever bytes a job printed, valid UTF-8 or not."""
    schemas.check("retrieve_job_log", 200, "text/plain", b"caf\xc3 \xff\xfe")
    with pytest.raises(ResponseMismatch, match="'application/json' is not declared"):
        schemas.check("retrieve_job_log", 200, "application/json", b'"log"')


def test_unknown_operation_is_a_mismatch(schemas: ResponseSchemas) -> None:
    with pytest.raises(ResponseMismatch, match="unknown operation"):
        schemas.check("no_such_operation", 200, JSON, b"{}")


def test_a_body_where_none_is_declared_is_a_mismatch() -> None:
    spec = {
        "paths": {
            "/things/{id}": {
                "delete": {
                    "operationId": "delete_thing",
                    "responses": {"204": {"description": "Deleted"}},
                }
            }
        }
    }
    schemas = ResponseSchemas.from_spec(spec)
    schemas.check("delete_thing", 204, JSON, b"")
    with pytest.raises(ResponseMismatch, match="declares no body"):
        schemas.check("delete_thing", 204, JSON, b"{}")


def test_every_operation_of_the_schema_has_its_answers(
    schemas: ResponseSchemas,
) -> None:
    spec = yaml.safe_load(SCHEMA_PATH.read_text())
    for path_item in spec["paths"].values():
        for operation in path_item.values():
            if isinstance(operation, dict) and "operationId" in operation:
                schemas.check(
                    operation["operationId"], 599, JSON, b'{"detail": "default"}'
                )


async def test_server_answers_500_and_logs_when_its_answer_is_wrong(
    aiohttp_client: AiohttpClient,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def report(self: health.HealthChecks) -> tuple[bool, dict[str, object]]:
        return True, {"status": "fine", "version": "x", "checks": {}}

    monkeypatch.setattr(health.HealthChecks, "report", report)
    client = await aiohttp_client(create_app(settings=settings))
    with caplog.at_level(logging.ERROR, logger="api.middlewares"):
        response = await client.get("/api/health")
    assert response.status == 500
    assert await response.json() == {"detail": "Internal Server Error"}
    assert "Response of /api/health does not match the schema" in caplog.text
    assert "status: 'fine' is not one of" in caplog.text
