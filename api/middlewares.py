"""Request id, body limits and the one place that renders errors."""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import traceback
import uuid
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp_middlewares.annotations import Handler, Middleware
from aiohttp_middlewares.constants import NON_IDEMPOTENT_METHODS
from aiohttp_middlewares.error import error_context
from aiohttp_middlewares.shield import shield_middleware
from rororo.openapi.constants import (
    REQUEST_CORE_OPERATION_KEY,
    REQUEST_OPENAPI_CONTEXT_KEY,
)
from rororo.openapi.exceptions import OpenAPIError

from api import github
from api.errors import ApiError, BadGateway, ValidationFailed
from api.keys import RESPONSE_SCHEMAS
from api.log import REQUEST_ID_KEY, request_id_var
from api.responses import ResponseMismatch
from api.storage import RepositoryGone

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_JSON_PACKAGE = Path(json.__file__).parent
_DESERIALIZE_FAILED = re.compile(
    r"Failed to deserialize value .* with style (?P<style>[\w./+-]+)", re.DOTALL
)
# The value comes first; the last of these phrases starts the complaint.
_SCHEMA_COMPLAINT = re.compile(
    r".* (?P<complaint>(?:is not of type|is too long|is too short"
    r"|has too many properties|does not have enough properties|does not match"
    r"|is not one of|is greater than|is less than|is not a|is not valid under"
    r"|is not a multiple of|has non-unique elements|is too many|is too few"
    r"|should be non-empty|is expected to be empty)\b.*)",
    re.DOTALL,
)
# Messages about names and structure, which hold no submitted value.
_NO_VALUE_MESSAGES = (
    "Additional properties are not allowed",
    "Field required",
    "Missing",
)


def is_json_too_deep(err: BaseException) -> bool:
    """A ``RecursionError`` of the ``json`` module: the input nests too deeply."""
    if not isinstance(err, RecursionError):
        return False
    frames = traceback.extract_tb(err.__traceback__)
    return bool(frames) and Path(frames[-1].filename).parent == _JSON_PACKAGE


def without_value(item: Any) -> Any:
    """A request-validation error item whose message does not repeat the
    value it is about: that may be a secret (``PUT .../env``), or 64 KiB.

    jsonschema's messages are ``<value repr> <what is wrong>``, openapi-core's
    ``Failed to deserialize value <body> with style <type>``: only the part
    after the value is kept; an unknown shape gets a message of its own.
    """
    if not isinstance(item, dict) or not isinstance(item.get("message"), str):
        return item
    message = item["message"]
    if (parsed := _DESERIALIZE_FAILED.fullmatch(message)) is not None:
        return {**item, "message": f"cannot be read as {parsed['style']}"}
    if (found := _SCHEMA_COMPLAINT.fullmatch(message)) is not None:
        return {**item, "message": found["complaint"]}
    if message.startswith(_NO_VALUE_MESSAGES):
        return item
    return {**item, "message": "does not match the schema"}


def error_response(err: BaseException) -> web.Response:
    """Turn any exception into a JSON ``{"detail": ...}`` answer."""
    if isinstance(err, ApiError):
        return web.json_response(
            {"detail": err.detail}, status=err.status, headers=err.headers
        )
    if isinstance(err, OpenAPIError):
        data = getattr(err, "data", None) or {"detail": str(err)}
        status = getattr(err, "status", 500)
        if status >= 500:
            logger.error("OpenAPI failure: %s", err)
            data = {"detail": "Internal Server Error"}
        elif isinstance(data.get("detail"), list):
            data = {**data, "detail": [without_value(item) for item in data["detail"]]}
        return web.json_response(data, status=status, headers=err.headers)
    if isinstance(err, RepositoryGone):  # deleted while the request was served
        return web.json_response(
            {"detail": "The repository is not registered with Hobotnica any more"},
            status=404,
        )
    if isinstance(err, github.InvalidCredentials):
        return web.json_response({"detail": "Invalid credentials"}, status=403)
    if isinstance(err, github.RepositoryNotFound | github.OwnerNotFound):
        return web.json_response({"detail": "Not found on GitHub"}, status=404)
    if isinstance(err, github.RateLimited):
        retry = max(1, int(err.retry_after))
        return error_response(
            BadGateway(
                f"GitHub rate limit reached; retry in {retry} s",
                headers={"Retry-After": str(retry)},
            )
        )
    if isinstance(err, github.GitHubError):
        headers = {}
        retry_after = getattr(err, "retry_after", None)
        if retry_after:
            headers["Retry-After"] = str(max(1, int(retry_after)))
        return error_response(BadGateway(headers=headers))
    if isinstance(err, web.HTTPException):
        return web.json_response(
            {"detail": err.reason}, status=err.status, headers=_allow(err)
        )
    if is_json_too_deep(err):
        return error_response(
            ValidationFailed(["body"], "The JSON body is nested too deeply")
        )
    if isinstance(err, sqlite3.OperationalError | OSError):
        logger.exception("Storage failure")
        return web.json_response(
            {"detail": "Storage is unavailable"},
            status=503,
            headers={"Retry-After": "5"},
        )
    logger.exception("Unhandled error", exc_info=err)
    return web.json_response({"detail": "Internal Server Error"}, status=500)


def _allow(err: web.HTTPException) -> dict[str, str]:
    allow = err.headers.get("Allow")
    return {"Allow": allow} if allow else {}


async def render_error(request: web.Request) -> web.Response:
    """Error handler for rororo's error middleware (operation handlers)."""
    with error_context(request) as context:
        return error_response(context.err)


@web.middleware
async def request_id_middleware(
    request: web.Request, handler: Handler
) -> web.StreamResponse:
    """Keep or make ``X-Request-ID``; the outermost safety net for errors."""
    given = request.headers.get(REQUEST_ID_HEADER, "")
    request_id = given if _REQUEST_ID_RE.match(given) else uuid.uuid4().hex
    request[REQUEST_ID_KEY] = request_id
    token = request_id_var.set(request_id)
    try:
        return await handler(request)
    except web.HTTPRedirection:
        raise
    except Exception as err:
        return error_response(err)
    finally:
        request_id_var.reset(token)


async def add_request_id_header(
    request: web.Request, response: web.StreamResponse
) -> None:
    request_id = request.get(REQUEST_ID_KEY)
    if request_id:
        response.headers[REQUEST_ID_HEADER] = request_id


@web.middleware
async def response_validation_middleware(
    request: web.Request, handler: Handler
) -> web.StreamResponse:
    """Validate answers against the schema; a mismatch is our bug (500).

    Runs inside rororo's middleware (which validates requests), and first
    closes the one gap of that validation: a JSON ``null`` body (see
    :func:`reject_null_body`). Streamed answers (log follow) and empty
    bodies have nothing to validate.
    """
    reject_null_body(request)
    response = await handler(request)
    operation = request.get(REQUEST_CORE_OPERATION_KEY)
    if (
        operation is None
        or not isinstance(response, web.Response)
        or not isinstance(response.body, bytes)
        or (not response.body and response.content_type == "text/plain")
    ):
        return response
    try:
        request.config_dict[RESPONSE_SCHEMAS].check(
            operation.operation_id,
            response.status,
            response.content_type,
            response.body,
        )
    except ResponseMismatch as err:
        logger.error("Response of %s does not match the schema: %s", request.path, err)
        return web.json_response({"detail": "Internal Server Error"}, status=500)
    return response


def reject_null_body(request: web.Request) -> None:
    """422 for a JSON ``null`` where the schema requires a body.

    openapi-core 0.13 (pinned by rororo) returns ``None`` for a ``null``
    value without validating it, so ``null`` passes for a required object
    body and handlers would get ``None`` as their data.
    """
    operation = request.get(REQUEST_CORE_OPERATION_KEY)
    request_body = getattr(operation, "request_body", None)
    if request_body is None or not getattr(request_body, "required", False):
        return
    context = request.get(REQUEST_OPENAPI_CONTEXT_KEY)
    if context is None or context.data is not None:
        return
    media_type = getattr(request_body, "content", {}).get(request.content_type)
    if getattr(getattr(media_type, "schema", None), "nullable", False):
        return
    raise ValidationFailed(["body"], "A request body is required, not null")


def body_limit_middleware(
    default_limit: int, large_limit: int, large_routes: frozenset[str]
) -> Middleware:
    """Small bodies everywhere, large ones only on the named routes.

    The app's ``client_max_size`` is the large limit; routes named in
    ``large_routes`` (rororo names routes by operationId) keep it, every
    other request is cut down to ``default_limit``.
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method not in NON_IDEMPOTENT_METHODS:
            return await handler(request)
        route_name = request.match_info.route.name or ""
        limit = large_limit if route_name in large_routes else default_limit
        length = request.content_length
        if length is not None and length > limit:
            return web.json_response(
                {"detail": f"Request body is larger than {limit} bytes"},
                status=413,
            )
        if limit != large_limit:
            request = request.clone(client_max_size=limit)
        return await handler(request)

    return middleware


def outer_middlewares(
    body_limit: int, large_body_limit: int, large_routes: frozenset[str]
) -> list[Middleware]:
    """Middlewares that run before rororo's validation, outermost first."""
    return [
        request_id_middleware,
        shield_middleware(methods=NON_IDEMPOTENT_METHODS),
        body_limit_middleware(body_limit, large_body_limit, large_routes),
    ]
