"""The webhook endpoint (signed by GitHub, not by a user token).

Declared in openapi.yaml like every route, but served outside rororo's
request validation: a delivery without a well-formed signature header is
refused before its body is read, the signature is checked on the raw bytes
before the body is parsed at all, so an unsigned 25 MB body costs almost
nothing and a signed delivery is not parsed twice. Its answers are the
schema's shapes.
"""

from __future__ import annotations

import re

from aiohttp import web

from api.errors import NotFound
from api.jobs.serializers import job_to_dict
from api.keys import RUNNER, SECRET_BOX, SETTINGS, STORAGE
from api.webhooks import service

PATH = "/api/webhooks/{uid}"
ROUTE_NAME = "receive_webhook"
_UID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


async def receive_webhook(request: web.Request) -> web.Response:
    uid = request.match_info["uid"]
    if not _UID_RE.match(uid):
        raise NotFound("Unknown webhook")
    intake = await service.receive(
        request.app[STORAGE],
        request.app[SECRET_BOX],
        request.app[RUNNER],
        uid=uid,
        headers=request.headers,
        read_body=request.read,
        content_type=request.content_type,
    )
    if intake.job is not None:
        body = job_to_dict(
            intake.job, intake.repository, request.app[SETTINGS].base_url
        )
    else:
        body = {"detail": intake.detail}
    return web.json_response(body, status=intake.status)


def setup_webhooks(app: web.Application) -> None:
    app.router.add_post(PATH, receive_webhook, name=ROUTE_NAME)
