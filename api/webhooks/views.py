"""The webhook endpoint (signed by GitHub, not by a user token)."""

from __future__ import annotations

from aiohttp import web
from rororo import OperationTableDef

from api.jobs.serializers import job_to_dict
from api.keys import RUNNER, SECRET_BOX, SETTINGS, STORAGE
from api.webhooks import service

operations = OperationTableDef()


@operations.register
async def receive_webhook(request: web.Request) -> web.Response:
    intake = await service.receive(
        request.app[STORAGE],
        request.app[SECRET_BOX],
        request.app[RUNNER],
        uid=request.match_info["uid"],
        headers=request.headers,
        body=await request.read(),
        content_type=request.content_type,
    )
    if intake.job is not None:
        body = job_to_dict(
            intake.job, intake.repository, request.app[SETTINGS].base_url
        )
    else:
        body = {"detail": intake.detail}
    return web.json_response(body, status=intake.status)
