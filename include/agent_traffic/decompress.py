"""Stream an object's bytes, decompressed by content (magic bytes), never by file name.

gzip (including multi-member files, as `cat a.gz b.gz` and many log shippers produce), bzip2,
zstd and plain text. A truncated or corrupt stream raises ObjectReadError at the end, after the
caller has seen the blocks: callers must not commit anything from an object until the iterator is
exhausted without error.
"""

from __future__ import annotations

import bz2
import zlib
from collections.abc import Iterator
from typing import BinaryIO

from agent_traffic.errors import ObjectReadError

READ_SIZE = 4 * 1024 * 1024

GZIP_MAGIC = b"\x1f\x8b"
BZIP2_MAGIC = b"BZh"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def sniff_compression(head: bytes) -> str:
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(BZIP2_MAGIC):
        return "bzip2"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    return "none"


def _chunks(f: BinaryIO, first: bytes) -> Iterator[bytes]:
    if first:
        yield first
    while chunk := f.read(READ_SIZE):
        yield chunk


def _gzip(chunks: Iterator[bytes]) -> Iterator[bytes]:
    d = zlib.decompressobj(wbits=47)  # 32+15: gzip or zlib header, auto-detected
    fed = padding = False
    for chunk in chunks:
        data = chunk
        if padding:
            if data.strip(b"\x00"):
                raise ObjectReadError("bytes after the last gzip member are not gzip")
            continue
        while data:
            fed = True
            out = d.decompress(data)
            if out:
                yield out
            if not d.eof:
                break
            data, d, fed = d.unused_data, zlib.decompressobj(wbits=47), False
            if data and not data.startswith(GZIP_MAGIC):
                if data.strip(b"\x00"):
                    raise ObjectReadError("bytes after the last gzip member are not gzip")
                data, padding = b"", True
    if fed and not d.eof:
        raise ObjectReadError("truncated gzip stream: the object ends inside a member")


def _bzip2(chunks: Iterator[bytes]) -> Iterator[bytes]:
    d = bz2.BZ2Decompressor()
    fed = False
    for chunk in chunks:
        data = chunk
        while data:
            fed = True
            out = d.decompress(data)
            if out:
                yield out
            if not d.eof:
                break
            data, d, fed = d.unused_data, bz2.BZ2Decompressor(), False
    if fed and not d.eof:
        raise ObjectReadError("truncated bzip2 stream: the object ends inside a stream")


def _zstd(chunks: Iterator[bytes]) -> Iterator[bytes]:
    import zstandard

    d = zstandard.ZstdDecompressor().decompressobj()
    try:
        for chunk in chunks:
            out = d.decompress(chunk)
            if out:
                yield out
    except zstandard.ZstdError as exc:
        raise ObjectReadError(f"corrupt zstd stream: {exc}") from None
    if not d.eof:
        raise ObjectReadError("truncated zstd stream")


def decompressed_blocks(f: BinaryIO) -> tuple[str, Iterator[bytes]]:
    """(compression name, iterator of decompressed byte blocks) for an open binary file."""
    head = f.read(READ_SIZE)
    kind = sniff_compression(head)
    chunks = _chunks(f, head)
    if kind == "gzip":
        return kind, _wrap(_gzip(chunks), "gzip")
    if kind == "bzip2":
        return kind, _wrap(_bzip2(chunks), "bzip2")
    if kind == "zstd":
        return kind, _zstd(chunks)
    return kind, chunks


def _wrap(it: Iterator[bytes], kind: str) -> Iterator[bytes]:
    try:
        yield from it
    except (zlib.error, OSError, EOFError, ValueError) as exc:
        raise ObjectReadError(f"corrupt {kind} stream: {exc}") from None
