"""Job log files: secret masking, a size cap, reading and following.

A log is the exact byte stream of a job (git and make output plus Hobotnica's
own lines) after masking, so ``read_log(path, offset)`` can serve any suffix
of it and a follower can resume from the last byte it has seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

MASK = b"***"
DEFAULT_MAX_BYTES = 50 * 2**20
TRUNCATED = "\n[hobotnica] log truncated at {} bytes\n"


class SecretMasker:
    """Replaces every secret value by ``***`` in a stream of chunks.

    At each position the longest secret that matches wins, then scanning goes
    on after it (leftmost-longest), so the output does not depend on where
    the stream was split: ``feed`` holds back the end of a chunk (at most
    ``longest - 1`` bytes) only while it could still be the start of a secret.
    """

    def __init__(self, secrets: Iterable[str]) -> None:
        values = {secret.encode() for secret in secrets if secret}
        ordered = sorted(values, key=lambda value: (-len(value), value))
        # Alternatives are tried in order: longest first at each position.
        self._pattern = (
            re.compile(b"|".join(re.escape(value) for value in ordered))
            if ordered
            else None
        )
        self._values = ordered
        self._first_bytes = {value[0] for value in ordered}
        self._keep = len(ordered[0]) - 1 if ordered else 0
        self._pending = b""

    def feed(self, chunk: bytes) -> bytes:
        """Return the masked bytes that are safe to emit so far."""
        if self._pattern is None:
            return chunk
        data = self._pending + chunk
        # A match starting before ``decided`` has all the bytes it needs.
        decided = len(data) - self._keep
        out: list[bytes] = []
        emitted = 0
        for match in self._pattern.finditer(data):
            if match.start() >= decided:
                break
            out += (data[emitted : match.start()], MASK)
            emitted = match.end()
        held = self._undecided_from(data, max(emitted, decided))
        out.append(data[emitted:held])
        self._pending = data[held:]
        return b"".join(out)

    def _undecided_from(self, data: bytes, start: int) -> int:
        """First position from ``start`` on where a secret may begin."""
        for position in range(start, len(data)):
            if data[position] not in self._first_bytes:
                continue
            tail = data[position:]
            if any(tail[: len(value)] == value[: len(tail)] for value in self._values):
                return position
        return len(data)

    def flush(self) -> bytes:
        """End of stream: mask and return what was held back."""
        pending, self._pending = self._pending, b""
        return self.mask(pending)

    def mask(self, data: bytes) -> bytes:
        """Mask one complete piece of data (not part of the stream)."""
        if self._pattern is None:
            return data
        return self._pattern.sub(MASK, data)


class LogWriter:
    """Appends a job's output to its log file, masked and capped.

    Writes go straight to the file (unbuffered) so followers see them at
    once. Past ``max_bytes`` the log gets one marker line and the rest of the
    output is dropped; the job itself is not affected.
    """

    def __init__(
        self,
        path: Path,
        *,
        secrets: Iterable[str] = (),
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: BinaryIO = path.open("ab", buffering=0)
        self._masker = SecretMasker(secrets)
        self._max_bytes = max_bytes
        self._size = self._file.seek(0, 2)  # appending: count what is there
        self._truncated = False
        self._ends_with_newline = True

    @property
    def size(self) -> int:
        return self._size

    @property
    def truncated(self) -> bool:
        return self._truncated

    def write(self, chunk: bytes) -> None:
        """Write command output (a chunk of a stream)."""
        self._store(self._masker.feed(chunk))

    def line(self, text: str) -> None:
        """Write a line of Hobotnica's own, e.g. ``$ git fetch ...``.

        Output held back by the masker goes first, and the line starts on a
        line of its own.
        """
        self._store(self._masker.flush())
        prefix = b"" if self._ends_with_newline else b"\n"
        self._store(prefix + self._masker.mask(text.rstrip("\n").encode()) + b"\n")

    def close(self) -> None:
        if self._file.closed:
            return
        try:
            self._store(self._masker.flush())
        finally:
            self._file.close()

    def __enter__(self) -> LogWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _store(self, data: bytes) -> None:
        if self._truncated or not data:
            return
        room = self._max_bytes - self._size
        if len(data) > room:
            self._truncated = True
            data = data[: max(room, 0)] + TRUNCATED.format(self._max_bytes).encode()
        self._write_all(data)

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = self._file.write(view)
            if written <= 0:
                raise OSError(f"could not write to {self._file.name}")
            view = view[written:]
        self._size += len(data)
        self._ends_with_newline = data.endswith(b"\n")


def read_log(path: Path, offset: int, limit: int = 1 << 20) -> bytes:
    """Exactly the stored bytes from ``offset`` on (at most ``limit``)."""
    if offset < 0 or limit < 0:
        raise ValueError("offset and limit must not be negative")
    try:
        with path.open("rb") as file:
            file.seek(offset)
            return file.read(limit)
    except FileNotFoundError:
        return b""


async def follow_log(
    path: Path,
    offset: int,
    is_finished: Callable[[], Awaitable[bool]],
    *,
    poll: float = 0.2,
    wake: asyncio.Event | None = None,
    chunk_size: int = 64 * 1024,
) -> AsyncGenerator[bytes, None]:
    """Yield the log from ``offset`` as it grows, until the job has finished.

    ``is_finished`` is asked before each read to the end of the file, so once
    it says yes, everything written before that is still yielded. ``wake``,
    when set by the writer, cuts the ``poll`` wait short.
    """
    position = offset
    with contextlib.ExitStack() as stack:
        file: BinaryIO | None = None
        while True:
            finished = await is_finished()
            if file is None:
                file = _open_at(path, position)
                if file is not None:
                    stack.enter_context(file)
            while file is not None and (data := file.read(chunk_size)):
                position += len(data)
                yield data
            if finished:
                return
            await _nap(poll, wake)


def _open_at(path: Path, offset: int) -> BinaryIO | None:
    try:
        file = path.open("rb")
    except FileNotFoundError:
        return None
    file.seek(offset)
    return file


async def _nap(poll: float, wake: asyncio.Event | None) -> None:
    if wake is None:
        await asyncio.sleep(poll)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(wake.wait(), poll)
    wake.clear()
