"""The fake GitHub of the tests as a process of its own, for the benchmarks.

``python -m bench.fake_github --repo octocat/hello --repo octocat/other``
serves on a free loopback port, prints ``URL http://127.0.0.1:PORT`` once it
listens, and runs until it gets SIGTERM or SIGINT. The user ``octocat`` (token
:data:`bench.common.TOKEN`) is ADMIN of every repository named.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

from tests.fakes.github import FakeGitHub
from tests.support import TOKEN, USER


async def serve(repos: list[str]) -> None:
    fake = FakeGitHub()
    fake.add_user(USER, token=TOKEN)
    for full_name in repos:
        owner, name = full_name.split("/", 1)
        fake.add_repo(owner, name, permissions={USER: "ADMIN"})
    url = await fake.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"URL {url}", flush=True)
    try:
        await stop.wait()
    finally:
        await fake.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.fake_github", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--repo", action="append", default=[], help="owner/name (repeatable)"
    )
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.repo))
    sys.exit(0)


if __name__ == "__main__":
    main()
