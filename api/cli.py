"""``hobotnica`` console script: ``serve`` and ``swagger-ui``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence

from aiohttp import web

from api import __version__
from api.app import create_app
from api.jobs.process import become_subreaper
from api.keys import RUNNER
from api.log import RequestIdAccessLogger, setup_logging
from api.settings import Settings, SettingsError
from api.ui.standalone import run_standalone

logger = logging.getLogger("api.cli")

ACCESS_LOG_FORMAT = '%a "%r" %s %b %Tfs "%{User-Agent}i"'
# Once the jobs are drained, aiohttp waits this long for requests still in
# progress, cuts their request bodies and waits as long again, then cancels
# them. Its default of 60 s would let a follower whose client reads nothing
# keep a stopping server alive for two minutes.
REQUEST_GRACE = 2.5


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hobotnica", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve_parser = commands.add_parser("serve", help="run the server")
    serve_parser.add_argument("--host", help="listen address (HOBOTNICA_HOST)")
    serve_parser.add_argument("--port", type=int, help="listen port (HOBOTNICA_PORT)")

    docs_parser = commands.add_parser(
        "swagger-ui", help="serve Swagger UI for an API running elsewhere"
    )
    docs_parser.add_argument("--host", default="127.0.0.1")
    docs_parser.add_argument("--port", type=int, default=8422)
    docs_parser.add_argument("--api", default="http://127.0.0.1:8080")

    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as err:
        print(f"hobotnica: {err}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level)

    if args.command == "swagger-ui":
        return run_standalone(args.host, args.port, args.api)

    overrides = {}
    if args.host:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    settings = settings.with_overrides(**overrides)
    try:
        asyncio.run(serve(settings))
    except OSError as err:
        print(f"hobotnica: cannot serve: {err}", file=sys.stderr)
        return 1
    return 0


async def serve(settings: Settings) -> None:
    """Serve until SIGTERM/SIGINT, then drain running jobs and exit.

    While draining, the listening socket stays open: new job requests get
    503 with Retry-After and health reports the drain, so a proxy switches
    away while followers of this instance's jobs keep streaming (followers
    of other jobs end, to resume on the other instance).
    """
    # Adopt orphaned job processes, so that killed ones are reaped at once
    # even where PID 1 does not reap (containers).
    become_subreaper()
    app = create_app(settings=settings)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        shutdown_timeout=REQUEST_GRACE,
        access_log_class=RequestIdAccessLogger,
        access_log_format=ACCESS_LOG_FORMAT,
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, reuse_address=True)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    logger.info(
        "Hobotnica %s listening on http://%s:%s, data dir %s",
        __version__,
        settings.host,
        settings.port,
        settings.data_dir.resolve(),
    )

    stop = asyncio.Event()
    force = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            logger.warning(
                "Second %s: interrupting running jobs now", signal.Signals(signum).name
            )
            force.set()
        else:
            logger.info("%s: draining", signal.Signals(signum).name)
            stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)

    await stop.wait()
    drain = asyncio.create_task(app[RUNNER].drain(settings.shutdown_timeout))
    forced = asyncio.create_task(force.wait())
    await asyncio.wait({drain, forced}, return_when=asyncio.FIRST_COMPLETED)
    if not drain.done():
        await app[RUNNER].close()
        await drain
    forced.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await forced
    await runner.cleanup()
    logger.info("Stopped")
