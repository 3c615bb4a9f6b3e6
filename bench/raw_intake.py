"""A bare aiohttp webhook receiver: the reference for ``bench.intake``.

``python -m bench.raw_intake --port P --secret S`` answers
``POST /hooks/{uid}``: 401 unless ``X-Hub-Signature-256`` is the body's
HMAC-SHA256 with S (constant-time compare), then parses the JSON and answers
202 ``{"detail": "ignored"}`` for a push to another branch than ``main``
(200 ``{"detail": "would run"}`` otherwise). No database, no validation
beyond that, no access log: what aiohttp alone costs.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json

from aiohttp import web

BRANCH_REF = "refs/heads/main"


def make_app(secret: bytes, max_body: int) -> web.Application:
    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        given = request.headers.get("X-Hub-Signature-256", "")
        expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(given.encode(), expected.encode()):
            return web.json_response({"detail": "Invalid signature"}, status=401)
        payload = json.loads(body)
        if payload.get("ref") != BRANCH_REF:
            return web.json_response({"detail": "ignored"}, status=202)
        return web.json_response({"detail": "would run"}, status=200)

    app = web.Application(client_max_size=max_body)
    app.router.add_post("/hooks/{uid}", receive)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.raw_intake", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--max-body", type=int, default=25 * 2**20)
    args = parser.parse_args(argv)
    web.run_app(
        make_app(args.secret.encode(), args.max_body),
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        print=None,
    )


if __name__ == "__main__":
    main()
