"""Compression is recognised by content, and a truncated stream is an error, never silent."""

from __future__ import annotations

import bz2
import gzip
import io

import pytest
import zstandard

from agent_traffic.errors import ObjectReadError
from agent_traffic.ingest.decompress import decompressed_blocks

DATA = b"".join(b"203.0.113.%d - - line %d\n" % (i % 250, i) for i in range(60_000))


def _read(blob: bytes) -> tuple[str, bytes]:
    kind, it = decompressed_blocks(io.BytesIO(blob))
    return kind, b"".join(it)


@pytest.mark.parametrize(
    ("kind", "blob"),
    [
        ("gzip", gzip.compress(DATA)),
        ("gzip", gzip.compress(DATA[:1000]) + gzip.compress(DATA[1000:])),  # multi-member
        ("bzip2", bz2.compress(DATA)),
        ("bzip2", bz2.compress(DATA[:5]) + bz2.compress(DATA[5:])),  # multi-stream
        ("zstd", zstandard.ZstdCompressor().compress(DATA)),
        ("none", DATA),
    ],
)
def test_by_content(kind: str, blob: bytes) -> None:
    assert _read(blob) == (kind, DATA)


@pytest.mark.parametrize(
    "blob",
    [gzip.compress(DATA), bz2.compress(DATA), zstandard.ZstdCompressor().compress(DATA)],
)
def test_truncated_stream_raises(blob: bytes) -> None:
    with pytest.raises(ObjectReadError, match="truncated"):
        _read(blob[: len(blob) // 2])


def test_corrupt_gzip_raises() -> None:
    blob = bytearray(gzip.compress(DATA))
    blob[len(blob) // 2 : len(blob) // 2 + 64] = b"\x00" * 64
    with pytest.raises(ObjectReadError):
        _read(bytes(blob))


def test_zero_padding_after_gzip_is_tolerated() -> None:
    assert _read(gzip.compress(DATA) + b"\x00" * 512) == ("gzip", DATA)


def test_every_zstd_frame_is_read() -> None:
    c = zstandard.ZstdCompressor()
    assert _read(c.compress(DATA[:777]) + c.compress(DATA[777:])) == ("zstd", DATA)


def test_a_member_ending_on_a_feed_boundary_then_padding(monkeypatch: pytest.MonkeyPatch) -> None:
    import agent_traffic.ingest.decompress as dec

    member = gzip.compress(DATA)
    monkeypatch.setattr(dec, "FEED_SIZE", len(member))  # the padding starts a slice of its own
    assert _read(member + gzip.compress(b"tail\n") + b"\x00" * 100) == ("gzip", DATA + b"tail\n")
    with pytest.raises(ObjectReadError, match="bytes after the last gzip member"):
        _read(member + b"garbage")


def _pieces(blob: bytes) -> tuple[int, int]:
    total = biggest = 0
    for piece in decompressed_blocks(io.BytesIO(blob))[1]:
        total += len(piece)
        biggest = max(biggest, len(piece))
    return total, biggest


@pytest.mark.parametrize("compress", [gzip.compress, bz2.compress])
def test_gzip_and_bzip2_pieces_are_capped_whatever_the_ratio(compress, monkeypatch: pytest.MonkeyPatch) -> None:
    import agent_traffic.ingest.decompress as dec

    monkeypatch.setattr(dec, "MAX_PIECE", 64 * 1024)
    data = b"GET / HTTP/1.1 200 0\n" * 100_000  # 2 MB that compress a thousand times and more
    assert _pieces(compress(data)) == (len(data), 64 * 1024)


def test_zstd_pieces_stay_small_whatever_the_ratio() -> None:
    data = b"GET / HTTP/1.1 200 0\n" * 2_000_000  # 42 MB in a few kilobytes
    total, biggest = _pieces(zstandard.ZstdCompressor().compress(data))
    assert total == len(data) and biggest <= 16 * 1024 * 1024  # bounded, never the whole object


def test_peek_returns_the_head_and_every_block_again() -> None:
    from agent_traffic.ingest.decompress import peek

    head, it = peek(iter([b"ab", b"cd", b"ef"]), 3)
    assert head == b"abc" and b"".join(it) == b"abcdef"
    head, it = peek(iter([]), 3)
    assert head == b"" and list(it) == []
