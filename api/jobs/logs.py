"""Job log files: secret masking, a size cap, reading and following.

A log is the exact byte stream of a job (git and make output plus Hobotnica's
own lines) after masking, so ``open_log(path, offset)`` can serve any suffix
of it and a follower can resume from the last byte it has seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

MASK = b"***"
DEFAULT_MAX_BYTES = 50 * 2**20
TRUNCATED = "\n[hobotnica] log truncated at {} bytes\n"


# Finding secrets fast: ``bytes.find`` is C, but its skip tables hash bytes
# modulo 64, so output flooded with a byte that collides with one in a
# secret (``x`` and ``8``) slows it down to one step per byte. A secret that
# has a byte which is rare in the output is looked for by that byte alone
# (``memchr``), each hit checked in place. The choice is reviewed every
# REVIEW_EVERY chunks on a sample of the output, and dropped for plain
# ``find`` as soon as the byte turns out to be common.
REVIEW_EVERY = 32
SAMPLE_BYTES = 8192
MIN_REVIEW_BYTES = 4096
RARE = 1 / 1024  # anchor bytes are at most this frequent in the sample
ANCHOR_HITS = 64  # candidates per search before giving up an anchor


# A piece of a secret (a line of it, or it without surrounding whitespace)
# is masked on its own from this length on; the whole value always is.
MIN_PIECE = 4


def printed_forms(secret: str) -> set[str]:
    """What of ``secret`` a job may print on its own: the value, the value
    without surrounding whitespace (``echo $KEY`` of a pasted key with a
    trailing newline), and each line of a multi-line value (a PEM key)."""
    if not secret:
        return set()
    pieces = {secret.strip(), *(line.strip() for line in secret.splitlines())}
    return {secret} | {piece for piece in pieces if len(piece) >= MIN_PIECE}


class SecretMasker:
    """Replaces every secret value (in each of its ``printed_forms``) by
    ``***`` in a stream of chunks.

    Occurrences of secrets that overlap are masked together, as one ``***``
    (secrets ``abc`` and ``bcd`` in ``abcd``): masking only one of them
    would show the rest of the other. Occurrences that merely touch
    (``hunter2hunter2``) are masked one by one.

    The output does not depend on where the stream was split: ``feed`` holds
    back the end of a chunk (at most ``longest - 1`` bytes) only while it
    could still be the start of a secret, and keeps the last ``longest - 1``
    bytes of a masked run it has emitted (``_masked_tail``), so that a secret
    starting inside them and ending in the next chunk extends that run.

    Each secret is searched for on its own in C (``bytes.find`` of the secret
    or of a rare byte of it, see ``REVIEW_EVERY``) and again only past its
    last occurrence, so output without secrets costs a few fast passes and
    no copy.
    """

    def __init__(self, secrets: Iterable[str]) -> None:
        values = {form.encode() for secret in secrets for form in printed_forms(secret)}
        self._values = sorted(values, key=lambda value: (-len(value), value))
        self._keep = len(self._values[0]) - 1 if self._values else 0
        first_bytes = b"".join(
            re.escape(bytes([byte])) for byte in sorted({v[0] for v in self._values})
        )
        self._may_start = re.compile(
            b"[" + first_bytes + b"]" if first_bytes else b"(?!)"
        )
        # Per secret: (byte, its offset in the secret) to search by, or None.
        self._anchors: list[tuple[bytes, int] | None] = [None] * len(self._values)
        self._until_review = 0
        self._pending = b""
        # Raw bytes that ended the last emitted run of masked output (emitted
        # as ``***`` already): only to see secrets that overlap them.
        self._masked_tail = b""

    def feed(self, chunk: bytes) -> bytes:
        """Return the masked bytes that are safe to emit so far."""
        if not self._values:
            return chunk
        tail = self._masked_tail
        data = tail + self._pending + chunk if tail or self._pending else chunk
        if len(data) >= MIN_REVIEW_BYTES:
            self._until_review -= 1
            if self._until_review < 0:
                self._review(data)
        # An occurrence starting before ``decided`` has all the bytes it needs.
        decided = len(data) - self._keep
        pieces, position, run_start = self._masked_runs(
            data, len(tail), decided, self._anchors
        )
        # A secret that may start from ``decided`` on is held back; one that
        # may start inside the last masked run could still extend it, so
        # then everything after that run is.
        held = max(position, self._undecided_from(data, max(decided, 0)))
        self._pending = data[held:]
        if held != position:
            self._masked_tail = b""
        elif run_start is not None:
            self._masked_tail = data[max(position - self._keep, run_start) : position]
        if not pieces:
            return data if held == len(data) and not tail else data[position:held]
        pieces.append(data[position:held])
        return b"".join(pieces)

    def _review(self, data: bytes) -> None:
        """Pick, per secret, a byte that is rare in (a sample of) the output.

        Secrets share their bytes where they can (bytes absent from the
        sample first, then those covering most secrets), so that output
        without secrets costs one ``memchr`` pass per distinct byte
        (see ``_absent``), however many secrets there are.
        """
        self._until_review = REVIEW_EVERY
        sample = data[:SAMPLE_BYTES]
        most = len(sample) * RARE
        values = self._values
        counts = {byte: sample.count(byte) for byte in set(b"".join(values))}
        rare = {byte for byte, count in counts.items() if count <= most}
        uncovered = {i for i, value in enumerate(values) if rare.intersection(value)}
        self._anchors[:] = [None] * len(values)
        while uncovered:
            covering = {
                byte: found
                for byte in rare
                if (found := {i for i in uncovered if byte in values[i]})
            }
            byte = min(
                covering, key=lambda b: (counts[b] > 0, -len(covering[b]), counts[b], b)
            )
            for index in covering[byte]:
                self._anchors[index] = (bytes([byte]), values[index].index(byte))
            uncovered -= covering[byte]

    def _masked_runs(
        self,
        data: bytes,
        base: int,
        stop: int,
        anchors: list[tuple[bytes, int] | None],
    ) -> tuple[list[bytes], int, int | None]:
        """Mask the occurrences that start before ``stop``, overlapping ones
        together, in ``data[base:]`` (``data[:base]`` is a masked tail).

        Returns the output pieces up to the end of the last run of masked
        bytes, where that end is (``base`` if none) and where that run
        starts (None if none ends after ``base``). A run that starts inside
        the masked tail continues the ``***`` emitted for it.
        """
        pieces: list[bytes] = []
        position = base
        run_start: int | None = None
        if stop <= 0:
            return pieces, position, run_start
        values = self._values
        # A search never runs into the undecided end (and ``end`` is never
        # negative: ``find`` would count that from the end).
        ends = [min(len(data), stop + len(value) - 1) for value in values]
        absent = _absent(data, anchors)
        found = [
            -1
            if (anchor := anchors[index]) is not None and anchor[0] in absent
            else self._find(data, index, 0, ends[index], anchors)
            for index in range(len(values))
        ]
        start, end = -1, -1  # the run being collected
        while True:
            index = -1
            for candidate, at in enumerate(found):
                if at >= 0 and (index < 0 or at < found[index]):
                    index = candidate
            if index < 0 or found[index] >= end:
                # The run is complete: emit it (unless it lies in the tail).
                if end > base:
                    if start >= base:
                        pieces += (data[position:start], MASK)
                    position, run_start = end, start
                if index < 0:
                    return pieces, position, run_start
                start = found[index]
            at = found[index]
            end = max(end, at + len(values[index]))
            # Past this occurrence; one inside the run so far changes nothing.
            found[index] = self._find(
                data,
                index,
                max(at + 1, end - len(values[index]) + 1),
                ends[index],
                anchors,
            )

    def _find(
        self,
        data: bytes,
        index: int,
        start: int,
        end: int,
        anchors: list[tuple[bytes, int] | None],
    ) -> int:
        """First occurrence of secret ``index`` in ``data[start:end]``, or -1."""
        value = self._values[index]
        anchor = anchors[index]
        if anchor is None:
            return data.find(value, start, end)
        byte, offset = anchor
        # Where the anchor byte sits when the whole secret fits in the range.
        position = start + offset
        limit = end - len(value) + offset + 1
        for _ in range(ANCHOR_HITS):
            position = data.find(byte, position, limit)
            if position < 0:
                return -1
            if data.startswith(value, position - offset):
                return position - offset
            position += 1
        anchors[index] = None  # not rare after all: plain find until a review
        return data.find(value, position - offset, end)

    def _undecided_from(self, data: bytes, start: int) -> int:
        """First position from ``start`` on where a secret may begin."""
        position = start
        while (candidate := self._may_start.search(data, position)) is not None:
            position = candidate.start()
            tail = data[position:]
            if any(tail[: len(value)] == value[: len(tail)] for value in self._values):
                return position
            position += 1
        return len(data)

    def flush(self) -> bytes:
        """End of stream: mask and return what was held back."""
        data = self._masked_tail + self._pending
        base = len(self._masked_tail)
        self._masked_tail = self._pending = b""
        return self._mask_all(data, base)

    def mask(self, data: bytes) -> bytes:
        """Mask one complete piece of data (not part of the stream)."""
        if not self._values or not data:
            return data
        return self._mask_all(data, 0)

    def _mask_all(self, data: bytes, base: int) -> bytes:
        pieces, position, _ = self._masked_runs(
            data, base, len(data), [None] * len(self._values)
        )
        if not pieces:
            return data[position:]
        pieces.append(data[position:])
        return b"".join(pieces)


def _absent(data: bytes, anchors: list[tuple[bytes, int] | None]) -> set[bytes]:
    """The anchor bytes that do not occur in ``data`` at all: one pass each,
    however many secrets share them."""
    return {
        byte
        for byte in {anchor[0] for anchor in anchors if anchor is not None}
        if data.find(byte) < 0
    }


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
        try:
            self._file: BinaryIO = path.open("ab", buffering=0)
        except FileNotFoundError:  # the repository's first log
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("ab", buffering=0)
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
        if self._truncated:
            return  # dropped anyway: no need to mask it
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


def open_log(path: Path, offset: int) -> tuple[BinaryIO, int] | None:
    """The stored log opened at ``offset``, and how many bytes it holds from
    there now; None when it holds none (or does not exist)."""
    if offset < 0:
        raise ValueError("offset must not be negative")
    try:
        file = path.open("rb")
    except FileNotFoundError:
        return None
    size = os.fstat(file.fileno()).st_size - offset
    if size <= 0:  # nothing there (and seek fails past the FS's limit)
        file.close()
        return None
    file.seek(offset)
    return file, size


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
    try:
        file.seek(offset)
    except (OSError, OverflowError, ValueError):
        file.close()
        return io.BytesIO()  # past any size this file system allows: never data
    return file


async def _nap(poll: float, wake: asyncio.Event | None) -> None:
    if wake is None:
        await asyncio.sleep(poll)
        return
    # Not wait_for: on 3.11 it may swallow a cancel that comes with a wake.
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(poll):
            await wake.wait()
    wake.clear()
