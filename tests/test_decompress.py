"""Compression is recognised by content, and a truncated stream is an error, never silent."""

from __future__ import annotations

import bz2
import gzip
import io

import pytest
import zstandard

from agent_traffic.decompress import decompressed_blocks
from agent_traffic.errors import ObjectReadError

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
