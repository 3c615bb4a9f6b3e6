"""Answers checked against ``openapi.yaml`` before they leave the server.

openapi-core 0.13 (what rororo validates requests with) unmarshals a whole
answer into its own objects to validate it, which costs milliseconds per
item of a list. An answer only needs checking, so each declared
``(operationId, status, media type)`` gets one ``OAS30Validator`` of
openapi-schema-validator (the validator openapi-core itself runs), built
once at startup. JSON bodies are checked against their schema; other media
types (job logs are ``text/plain``: any bytes a job printed) only by status
and content type.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

from jsonschema import RefResolver
from jsonschema.exceptions import best_match
from openapi_schema_validator import OAS30Validator, oas30_format_checker

JSON_MEDIA_TYPES = frozenset({"application/json", "application/problem+json"})

MediaValidators = dict[str, OAS30Validator | None]


class ResponseMismatch(Exception):
    """An answer the schema does not declare: a bug of the server."""


class ResponseSchemas:
    """Declared answers of every operation, ready to check."""

    def __init__(self, operations: dict[str, dict[str, MediaValidators]]) -> None:
        self._operations = operations

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> ResponseSchemas:
        resolver = RefResolver.from_schema(spec)
        operations: dict[str, dict[str, MediaValidators]] = {}
        for operation in iter_operations(spec):
            operations[operation["operationId"]] = {
                status: media_validators(resolve(spec, response), resolver)
                for status, response in operation.get("responses", {}).items()
            }
        return cls(operations)

    def check(
        self, operation_id: str, status: int, content_type: str, body: bytes
    ) -> None:
        """Raise :class:`ResponseMismatch` unless the answer is declared."""
        responses = self._operations.get(operation_id)
        if responses is None:
            raise ResponseMismatch(f"unknown operation {operation_id!r}")
        for key in (str(status), f"{status // 100}XX", "default"):
            if key in responses:
                media = responses[key]
                break
        else:
            raise ResponseMismatch(f"status {status} is not declared")
        if not media:
            if body:
                raise ResponseMismatch(f"status {status} declares no body")
            return
        if content_type not in media:
            raise ResponseMismatch(
                f"content type {content_type!r} is not declared for {status}"
            )
        validator = media[content_type]
        if validator is None:
            return
        instance = decode_json(body)
        error = best_match(validator.iter_errors(instance))
        if error is not None:
            where = "/".join(str(part) for part in error.absolute_path) or "body"
            raise ResponseMismatch(f"{where}: {error.message}")


def iter_operations(spec: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    for path_item in spec.get("paths", {}).values():
        for method, operation in path_item.items():
            if method in {"get", "put", "post", "delete", "patch", "head", "options"}:
                yield operation


def resolve(spec: Mapping[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """Follow a local ``$ref`` (``#/components/responses/...``)."""
    while "$ref" in node:
        target: Any = spec
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def media_validators(
    response: Mapping[str, Any], resolver: RefResolver
) -> MediaValidators:
    return {
        media_type: (
            OAS30Validator(
                content["schema"],
                resolver=resolver,
                format_checker=oas30_format_checker,
                read=True,
            )
            if "schema" in content and is_json(media_type)
            else None
        )
        for media_type, content in response.get("content", {}).items()
    }


def is_json(media_type: str) -> bool:
    return media_type in JSON_MEDIA_TYPES or media_type.endswith("+json")


def decode_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError as err:  # UnicodeDecodeError included
        raise ResponseMismatch(f"body is not JSON: {err}") from None
