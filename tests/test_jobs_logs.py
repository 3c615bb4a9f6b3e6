"""Secret masking, capped log files, reading and following logs."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Iterable
from pathlib import Path

import pytest

from api.jobs.logs import LogWriter, SecretMasker, follow_log, open_log


def reference_mask(data: bytes, secrets: Iterable[str]) -> bytes:
    """Every occurrence of every secret, overlapping ones as one run, each
    run replaced by ``***``: the slow obvious way."""
    values = {s.encode() for s in secrets if s}
    spans = sorted(
        (i, i + len(v))
        for v in values
        for i in range(len(data))
        if data.startswith(v, i)
    )
    runs: list[list[int]] = []
    for start, end in spans:
        if runs and start < runs[-1][1]:
            runs[-1][1] = max(runs[-1][1], end)
        else:
            runs.append([start, end])
    out = bytearray()
    position = 0
    for start, end in runs:
        out += data[position:start] + b"***"
        position = end
    return bytes(out + data[position:])


def stream(masker: SecretMasker, chunks: Iterable[bytes]) -> bytes:
    return b"".join(masker.feed(chunk) for chunk in chunks) + masker.flush()


def split_at(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@pytest.mark.parametrize(
    ("secrets", "text", "expected"),
    [
        (["hunter2"], b"pw=hunter2!", b"pw=***!"),
        (["hunter2"], b"hunter2hunter2", b"******"),
        ([], b"nothing to hide", b"nothing to hide"),
        (["", "k"], b"kayak", b"***aya***"),  # empty ignored, 1 char masked
        (["ab"], b"xabx", b"x***x"),
        (["abc", "bcd"], b"abcd", b"***"),  # overlapping: masked together
        (["abc", "bcdef"], b"xabcdefx", b"x***x"),
        (["ab", "bc", "cd", "de"], b"abcde", b"***"),  # a chain of overlaps
        (["ab", "cd"], b"abcd", b"******"),  # touching: one by one
        (["bc", "abcd"], b"abcd bc", b"*** ***"),  # inside another
        (["abc", "abcdef"], b"abcdefg abcx", b"***g ***x"),  # prefix: longest
        (["a.b*c"], b"a.b*c axbbc", b"*** axbbc"),  # no regex meaning
        (["пароль"], "мой пароль".encode(), "мой ".encode() + b"***"),
    ],
)
def test_masking_in_one_piece(secrets: list[str], text: bytes, expected: bytes) -> None:
    assert stream(SecretMasker(secrets), [text]) == expected
    assert SecretMasker(secrets).mask(text) == expected


def test_secret_split_across_two_chunks() -> None:
    masker = SecretMasker(["s3cr3t-value"])
    assert stream(masker, [b"token: s3cr3", b"t-value done\n"]) == b"token: *** done\n"


def test_secret_split_across_three_chunks() -> None:
    masker = SecretMasker(["abcdefghi"])
    chunks = [b"<abc", b"def", b"ghi>"]
    assert stream(masker, chunks) == b"<***>"


def test_multibyte_secret_split_inside_a_character() -> None:
    secret = "ключ"
    data = f"[{secret}]".encode()
    cut = data.index(secret.encode()) + 3  # in the middle of "л"
    assert stream(SecretMasker([secret]), [data[:cut], data[cut:]]) == b"[***]"


def test_holds_back_only_what_may_start_a_secret() -> None:
    masker = SecretMasker(["abcd", "xy"])
    assert masker.feed(b"0123456789") == b"0123456789"
    assert masker.feed(b"") == b""
    assert masker.feed(b"--abc") == b"--"  # "abc" may still become "abcd"
    assert masker.feed(b"d") == b"***"
    assert masker.feed(b"abx") == b"ab"  # "x" may become "xy"
    assert masker.feed(b"a") == b"x"
    assert masker.feed(b"bc") == b""
    assert masker.feed(b"x") == b"abc"
    assert masker.flush() == b"x"
    assert masker.flush() == b""


def test_holds_back_at_most_longest_minus_one() -> None:
    masker = SecretMasker(["aaaa"])
    assert masker.feed(b"aaa") == b""
    assert masker.feed(b"ab") == b"***b"
    assert masker.feed(b"xaaa") == b"x"
    assert masker.flush() == b"aaa"


def test_no_secret_no_delay() -> None:
    masker = SecretMasker([])
    assert masker.feed(b"abc") == b"abc"
    assert masker.flush() == b""


def test_overlapping_secrets_split_across_chunks() -> None:
    """The second secret starts inside the first one's masked bytes and ends
    in a later chunk: its end is masked too, whatever the split."""
    secrets = ["xyz123", "123abcdefgh"]
    data = b"<xyz123abcdefgh>"
    for cuts in itertools.combinations(range(1, len(data)), 2):
        assert stream(SecretMasker(secrets), split_at(data, cuts)) == b"<***>"


def test_random_chunk_boundaries_match_the_reference() -> None:
    rng = random.Random(20240611)
    alphabet = b"ab\xd0\xbf-"
    for _ in range(2000):
        secrets = [
            "".join(rng.choice("ab-") for _ in range(rng.randint(1, 5)))
            for _ in range(rng.randint(1, 4))
        ]
        data = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 80)))
        cuts = [rng.randint(0, len(data)) for _ in range(rng.randint(0, 12))]
        expected = reference_mask(data, secrets)
        assert stream(SecretMasker(secrets), split_at(data, cuts)) == expected
        assert SecretMasker(secrets).mask(data) == expected


def test_long_output_searched_by_rare_bytes_matches_the_reference() -> None:
    """Output long enough for the masker to look for secrets by a byte that
    is rare in it (and to review that choice): floods of one byte, bytes the
    secrets share, secrets and their halves at random places."""
    rng = random.Random(20261123)
    for _ in range(100):
        secrets = [
            "".join(rng.choice("0123456789abcdef-") for _ in range(rng.randint(4, 12)))
            for _ in range(rng.randint(1, 4))
        ]
        flood = rng.choice([b"x", b"8", b"0", b"ab", b"x\n"])
        pieces = []
        for _ in range(rng.randint(10, 40)):
            secret = rng.choice(secrets).encode()
            pieces.append(
                rng.choice(
                    [
                        flood * rng.randint(0, 3000),
                        secret,
                        secret[: len(secret) // 2],
                        secret[len(secret) // 2 :],
                        bytes([rng.randrange(256)]),
                    ]
                )
            )
        data = b"".join(pieces)
        cuts = [rng.randint(0, len(data)) for _ in range(rng.randint(0, 6))]
        expected = reference_mask(data, secrets)
        assert stream(SecretMasker(secrets), split_at(data, cuts)) == expected


def test_random_text_never_shows_a_secret() -> None:
    rng = random.Random(7)
    secrets = ["ghp_abcdef123", "abc", "123456", "f12"]
    for _ in range(100):
        pieces = [
            rng.choice([*secrets, "x", "y ", "\n", "ab", "ghp_"]) for _ in range(40)
        ]
        data = "".join(pieces).encode()
        cuts = [rng.randint(0, len(data)) for _ in range(8)]
        out = stream(SecretMasker(secrets), split_at(data, cuts))
        for secret in secrets:
            assert secret.encode() not in out


def test_log_writer_masks_across_writes_and_lines(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "repo" / "1.log"
    with LogWriter(path, secrets=["topsecret"]) as log:
        log.line("$ make test TOKEN=topsecret")
        log.write(b"using tops")
        log.write(b"ecret now\nno newline")
        log.line("[hobotnica] exit status 0")
        assert log.size == path.stat().st_size
    assert path.read_bytes() == (
        b"$ make test TOKEN=***\nusing *** now\nno newline\n[hobotnica] exit status 0\n"
    )


def test_log_writer_output_is_visible_while_open(tmp_path: Path) -> None:
    path = tmp_path / "job.log"
    with LogWriter(path, secrets=["abcdef"]) as log:
        log.write(b"hello\n")
        assert path.read_bytes() == b"hello\n"
        log.write(b"abc")  # could be the start of the secret: held back
        assert path.read_bytes() == b"hello\n"
        log.close()
        log.close()
        assert path.read_bytes() == b"hello\nabc"


def test_line_comes_after_held_back_output(tmp_path: Path) -> None:
    path = tmp_path / "job.log"
    with LogWriter(path, secrets=["topsecret"]) as log:
        log.write(b"almost top")
        log.line("[hobotnica] exit status 2")
    assert path.read_bytes() == b"almost top\n[hobotnica] exit status 2\n"


def test_log_writer_cap(tmp_path: Path) -> None:
    path = tmp_path / "job.log"
    with LogWriter(path, max_bytes=10) as log:
        log.write(b"12345678")
        log.write(b"90abc")
        log.write(b"more")
        log.line("[hobotnica] done")
        assert log.truncated
    assert path.read_bytes() == b"1234567890\n[hobotnica] log truncated at 10 bytes\n"


def test_cap_applies_after_masking(tmp_path: Path) -> None:
    path = tmp_path / "job.log"
    with LogWriter(path, secrets=["SECRETVALUE"], max_bytes=10) as log:
        log.write(b"12345678SECRETVALUE")
    data = path.read_bytes()
    assert data.startswith(b"12345678**\n[hobotnica] log truncated")
    assert b"SE" not in data


def test_log_writer_appends(tmp_path: Path) -> None:
    path = tmp_path / "job.log"
    with LogWriter(path) as log:
        log.line("first")
    with LogWriter(path, max_bytes=8) as log:
        assert log.size == 6
        log.write(b"abcd")
    assert path.read_bytes() == b"first\nab\n[hobotnica] log truncated at 8 bytes\n"


def read_from(path: Path, offset: int) -> bytes | None:
    opened = open_log(path, offset)
    if opened is None:
        return None
    file, size = opened
    with file:
        data = file.read()
    assert len(data) == size
    return data


def test_open_log(tmp_path: Path) -> None:
    path = tmp_path / "job.log"
    path.write_bytes(b"0123456789")
    assert read_from(path, 0) == b"0123456789"
    assert read_from(path, 4) == b"456789"
    assert read_from(path, 9) == b"9"
    assert read_from(path, 10) is None
    assert read_from(path, 2**70) is None  # past any file system's limit
    assert read_from(tmp_path / "missing.log", 0) is None
    with pytest.raises(ValueError):
        open_log(path, -1)


async def collect(
    path: Path,
    offset: int,
    done: asyncio.Event,
    *,
    poll: float = 0.2,
    wake: asyncio.Event | None = None,
    chunk_size: int = 64 * 1024,
) -> bytes:
    async def is_finished() -> bool:
        return done.is_set()

    follower = follow_log(
        path, offset, is_finished, poll=poll, wake=wake, chunk_size=chunk_size
    )
    return b"".join([chunk async for chunk in follower])


async def test_follow_log_streams_until_finished(tmp_path: Path) -> None:
    path = tmp_path / "job.log"  # created only once the job writes
    done = asyncio.Event()
    follower = asyncio.create_task(collect(path, 0, done, poll=0.01))
    expected = b""
    with LogWriter(path) as log:
        for i in range(20):
            chunk = f"line {i}\n".encode()
            log.write(chunk)
            expected += chunk
            await asyncio.sleep(0.003)
        log.write(b"last words")  # written just before the job is marked done
    done.set()
    assert await asyncio.wait_for(follower, 5) == expected + b"last words"


async def test_follow_log_from_offset_of_finished_job(tmp_path: Path) -> None:
    path = tmp_path / "job.log"
    path.write_bytes(b"x" * 200_000)
    done = asyncio.Event()
    done.set()
    assert await collect(path, 199_990, done) == b"x" * 10
    assert len(await collect(path, 0, done, chunk_size=1000)) == 200_000
    assert await collect(tmp_path / "none.log", 0, done) == b""


async def test_follow_log_wake_cuts_the_poll_short(tmp_path: Path) -> None:
    path = tmp_path / "job.log"
    path.write_bytes(b"")
    done, wake = asyncio.Event(), asyncio.Event()
    began = time.monotonic()
    follower = asyncio.create_task(collect(path, 0, done, poll=30, wake=wake))
    await asyncio.sleep(0.05)
    path.write_bytes(b"news")
    done.set()
    wake.set()
    assert await asyncio.wait_for(follower, 5) == b"news"
    assert time.monotonic() - began < 2
    assert not wake.is_set()


async def test_follow_log_stops_early_when_closed(tmp_path: Path) -> None:
    path = tmp_path / "job.log"
    path.write_bytes(b"abc")

    async def never() -> bool:
        return False

    follower = follow_log(path, 0, never, poll=0.01)
    assert await anext(follower) == b"abc"
    await follower.aclose()


@pytest.mark.parametrize(
    ("secret", "printed"),
    [
        ("tok-123\n", b"value: tok-123"),  # pasted with its newline
        ("  padded-secret  ", b"pad: padded-secret"),  # `echo $PAD` splits
        ("line-one-xyz\nline-two-xyz", b"first: line-one-xyz"),  # a PEM's line
        ("line-one-xyz\r\nline-two-xyz", b"second: line-two-xyz"),
    ],
)
def test_printed_forms_of_a_secret_are_masked(
    tmp_path: Path, secret: str, printed: bytes
) -> None:
    path = tmp_path / "job.log"
    with LogWriter(path, secrets=[secret]) as log:
        log.write(printed)
        log.line("[hobotnica] success")  # its newline must not complete it
    stored = path.read_bytes()
    assert stored.startswith(printed.split(b" ")[0] + b" ***")
    for form in {secret, secret.strip(), *secret.splitlines()}:
        assert form.strip().encode() not in stored


def test_short_pieces_of_a_secret_are_not_masked_on_their_own() -> None:
    masker = SecretMasker(["ab\nlong-enough-line"])
    assert masker.mask(b"ab cd long-enough-line") == b"ab cd ***"
    assert SecretMasker(["\tx\t"]).mask(b"a x b") == b"a x b"
