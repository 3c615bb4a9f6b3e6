"""Run every benchmark with modest sizes (``make bench``), then sum up.

Each benchmark runs as ``python -m bench.<name> ...`` in a process of its
own, its output shown as it comes; the RESULT lines of all of them are
repeated at the end. The full-size runs are each script's defaults (see
``python -m bench.<name> --help`` and bench/README.md).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from bench.common import ROOT, machine

# Modest sizes: the whole suite takes a few minutes.
SUITE: dict[str, list[str]] = {
    "push_to_start": ["--pushes", "20", "--warmup", "3"],
    "log_throughput": ["--rounds", "3"],
    "intake": ["--duration", "5", "--repeats", "2", "--rejects", "3"],
    "footprint": ["--rounds", "1"],
    "responsiveness": ["--rounds", "8"],
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run_all", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--only", action="append", choices=list(SUITE), help="run just these"
    )
    parser.add_argument(
        "--source", default=None, help="run the servers from this checkout"
    )
    args = parser.parse_args(argv)
    names = args.only or list(SUITE)
    print(f"# bench.run_all: {', '.join(names)}; {machine()}", flush=True)
    results: list[str] = []
    failed: list[str] = []
    for name in names:
        command = [sys.executable, "-m", f"bench.{name}", *SUITE[name]]
        if args.source:
            command += ["--source", args.source]
        print(f"\n$ {' '.join(command[1:])}", flush=True)
        started = time.monotonic()
        process = subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        assert process.stdout is not None
        for line in process.stdout:
            print(line, end="", flush=True)
            if line.startswith("RESULT"):
                results.append(line.rstrip())
        if process.wait() != 0:
            failed.append(name)
            results.append(f"RESULT {name} did not finish (exit {process.returncode})")
        print(f"# {name}: {time.monotonic() - started:.0f} s", flush=True)
    print("\n# summary")
    for line in results:
        print(line)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
