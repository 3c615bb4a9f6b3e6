"""``make swagger-ui``: the docs page for an API that runs elsewhere.

The page and its assets come from this process; requests under ``/api`` are
proxied to the API so that "Try it out" works without CORS.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from api.ui import setup_docs

logger = logging.getLogger(__name__)

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "upgrade",
        "host",
        "content-length",
        "content-encoding",
    }
)

API_URL_KEY = web.AppKey("api_url", str)
SESSION_KEY = web.AppKey("session", aiohttp.ClientSession)


async def proxy(request: web.Request) -> web.StreamResponse:
    target = request.app[API_URL_KEY] + request.rel_url.path_qs
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
    try:
        async with request.app[SESSION_KEY].request(
            request.method, target, headers=headers, data=await request.read()
        ) as upstream:
            body = await upstream.read()
            out = {
                k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP
            }
            return web.Response(body=body, status=upstream.status, headers=out)
    except aiohttp.ClientError as err:
        return web.json_response({"detail": f"API unreachable: {err}"}, status=502)


async def session_context(app: web.Application) -> AsyncIterator[None]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        app[SESSION_KEY] = session
        yield


async def redirect_to_docs(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/api/docs")


def create_standalone_app(api_url: str) -> web.Application:
    app = web.Application()
    app[API_URL_KEY] = api_url.rstrip("/")
    setup_docs(app)
    app.router.add_get("/", redirect_to_docs)
    app.router.add_route("*", "/api/{tail:(?!docs).*}", proxy)
    app.cleanup_ctx.append(session_context)
    return app


def run_standalone(host: str, port: int, api_url: str) -> int:
    logger.info("Swagger UI on http://%s:%s/api/docs for %s", host, port, api_url)
    web.run_app(create_standalone_app(api_url), host=host, port=port, print=None)
    return 0
