"""A stand-in for `hobotnica serve` that behaves like it where a switch looks.

    python standin.py serve --host 127.0.0.1 --port 8081

- ``GET /api/health``: 200 ``{"status": "ok", "port": N}``; 503 while draining.
- ``GET /api/repositories/{owner}/{name}``: 200 with the port that served it,
  draining or not (reads keep working while a real instance drains).
- ``POST /api/webhooks/{uid}``: 202 with the port, like a queued job; 503
  while draining (a real instance takes no new jobs then).
- SIGTERM: start draining, keep accepting connections for
  ``STANDIN_DRAIN_SECONDS`` (default 2), then exit 0, like the real server
  waiting for its running jobs.
- ``STANDIN_START_DELAY`` seconds (default 0) pass before it listens, like a
  slow start (migrations, imports).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

from aiohttp import web

DRAINING = web.AppKey("draining", asyncio.Event)
PORT = web.AppKey("port", int)


async def health(request: web.Request) -> web.Response:
    port = request.app[PORT]
    if request.app[DRAINING].is_set():
        return web.json_response(
            {"status": "draining", "port": port},
            status=503,
            headers={"Retry-After": "5"},
        )
    return web.json_response({"status": "ok", "port": port})


async def retrieve_repository(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "owner": request.match_info["owner"],
            "name": request.match_info["name"],
            "port": request.app[PORT],
        }
    )


async def receive_webhook(request: web.Request) -> web.Response:
    await request.read()
    if request.app[DRAINING].is_set():
        return web.json_response(
            {"detail": "draining"}, status=503, headers={"Retry-After": "10"}
        )
    return web.json_response({"port": request.app[PORT]}, status=202)


async def serve(host: str, port: int) -> None:
    await asyncio.sleep(float(os.environ.get("STANDIN_START_DELAY", "0")))
    app = web.Application()
    app[DRAINING] = asyncio.Event()
    app[PORT] = port
    app.router.add_get("/api/health", health)
    app.router.add_get("/api/repositories/{owner}/{name}", retrieve_repository)
    app.router.add_post("/api/webhooks/{uid}", receive_webhook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    print(f"standin: listening on {host}:{port}", flush=True)

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    app[DRAINING].set()
    drain = float(os.environ.get("STANDIN_DRAIN_SECONDS", "2"))
    print(f"standin: SIGTERM, draining for {drain} s", flush=True)
    await asyncio.sleep(drain)
    await runner.cleanup()
    print("standin: exiting", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="standin")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve")
    serve_parser.add_argument("--host", default="127.0.0.1")
    serve_parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
