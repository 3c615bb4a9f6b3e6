"""Operation handlers of jobs: deploys, listing, logs, cancelling."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path

from aiohttp import web
from rororo import OperationTableDef, openapi_context

from api import auth
from api.errors import ValidationFailed
from api.jobs import service
from api.jobs.logs import follow_log, open_log
from api.jobs.serializers import job_to_dict
from api.keys import RUNNER, SETTINGS, STORAGE
from api.storage.records import JobKind

operations = OperationTableDef()

LOG_CHUNK = 256 * 1024


@operations.register
async def create_deploy(request: web.Request) -> web.Response:
    with openapi_context(request) as context:
        body = context.data
    if not isinstance(body, Mapping):
        if body:
            raise ValidationFailed(["body"], "must be a JSON object")
        body = {}
    ref, sha = body.get("ref"), body.get("sha")
    require_tests = bool(body.get("require_tests", False))
    allowed, repository = await auth.authorize_registered(request, push=True)
    job = await service.queue_deploy(
        request.app[STORAGE],
        request.app[RUNNER],
        repository,
        login=allowed.caller.login,
        ref=ref,
        sha=sha,
        require_tests=require_tests,
    )
    data = job_to_dict(job, repository, request.app[SETTINGS].base_url)
    return web.json_response(data, status=202, headers={"Location": data["url"]})


@operations.register
async def list_jobs(request: web.Request) -> web.Response:
    with openapi_context(request) as context:
        kind = context.parameters.query.get("kind")
        limit = context.parameters.query.get("limit", 20)
        offset = context.parameters.query.get("offset", 0)
    _, repository = await auth.authorize_registered(request, push=False)
    jobs, total = await request.app[STORAGE].jobs.list_page(
        repository.id,
        kind=None if kind is None else JobKind(kind),
        limit=limit,
        offset=offset,
    )
    base_url = request.app[SETTINGS].base_url
    items = [job_to_dict(job, repository, base_url) for job in jobs]
    return web.json_response({"items": items, "total": total})


@operations.register
async def retrieve_job(request: web.Request) -> web.Response:
    with openapi_context(request) as context:
        number = context.parameters.path["number"]
    _, repository = await auth.authorize_registered(request, push=False)
    job = await service.get_job(request.app[STORAGE], repository, number)
    return web.json_response(
        job_to_dict(job, repository, request.app[SETTINGS].base_url)
    )


@operations.register
async def cancel_job(request: web.Request) -> web.Response:
    with openapi_context(request) as context:
        number = context.parameters.path["number"]
    _, repository = await auth.authorize_registered(request, push=True)
    storage = request.app[STORAGE]
    job = await service.get_job(storage, repository, number)
    updated = await service.cancel(storage, request.app[RUNNER], repository, job)
    return web.json_response(
        job_to_dict(updated, repository, request.app[SETTINGS].base_url), status=202
    )


@operations.register
async def retrieve_job_log(request: web.Request) -> web.StreamResponse:
    with openapi_context(request) as context:
        number = context.parameters.path["number"]
        offset = context.parameters.query.get("offset", 0)
        follow = context.parameters.query.get("follow", False)
    _, repository = await auth.authorize_registered(request, push=False)
    storage = request.app[STORAGE]
    runner = request.app[RUNNER]
    job = await service.get_job(storage, repository, number)
    path = service.job_log_path(runner, repository, job)
    headers = {"X-Job-Status": str(job.status), "Cache-Control": "no-store"}
    if not follow or job.status.is_finished:
        return await send_stored_log(request, path, offset, headers)

    async def is_finished() -> bool:
        if client_gone(request):  # nobody to stream to: stop polling
            return True
        current = await storage.jobs.get_by_id(job.id)
        if current is None or current.status.is_finished:
            return True
        # A draining server exits once its own jobs have ended: a follower
        # of any other job ends now and resumes (``?offset=``) on the other
        # instance, where nginx sends it.
        return runner.draining and current.runner != runner.instance_id

    response = web.StreamResponse(headers={**headers, "X-Accel-Buffering": "no"})
    response.content_type = "text/plain"
    response.charset = "utf-8"
    await response.prepare(request)
    following = follow_log(
        path,
        offset,
        is_finished,
        wake=runner.output_event(job.id),
        chunk_size=LOG_CHUNK,
    )
    with contextlib.suppress(ConnectionResetError):
        async with contextlib.aclosing(following):
            async for chunk in following:
                await response.write(chunk)
        if not client_gone(request):
            await response.write_eof()
    return response


def client_gone(request: web.Request) -> bool:
    """Whether the client has closed the connection (a follower that left)."""
    return request.transport is None or request.transport.is_closing()


async def send_stored_log(
    request: web.Request, path: Path, offset: int, headers: Mapping[str, str]
) -> web.StreamResponse:
    """The log from ``offset`` as stored now (Content-Length), read and sent
    a chunk at a time: a 50 MiB log neither sits in memory nor holds up the
    event loop while it is read."""
    opened = open_log(path, offset)
    if opened is None:
        return web.Response(
            body=b"", content_type="text/plain", charset="utf-8", headers=headers
        )
    file, size = opened
    with file:
        if size <= LOG_CHUNK:
            return web.Response(
                body=file.read(size),
                content_type="text/plain",
                charset="utf-8",
                headers=headers,
            )
        response = web.StreamResponse(headers=headers)
        response.content_type = "text/plain"
        response.charset = "utf-8"
        response.content_length = size
        await response.prepare(request)
        # A client that goes away mid-way is no error of ours.
        with contextlib.suppress(ConnectionResetError):
            while size > 0 and (chunk := file.read(min(LOG_CHUNK, size))):
                await response.write(chunk)
                size -= len(chunk)
            await response.write_eof()
    return response
