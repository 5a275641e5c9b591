"""Stream an object's bytes, decompressed by content (magic bytes), never by file name.

gzip (including multi-member files, as `cat a.gz b.gz` and many log shippers produce), bzip2,
zstd and plain text. A truncated or corrupt stream raises ObjectReadError at the end, after the
caller has seen the blocks: callers must not commit anything from an object until the iterator is
exhausted without error.
"""

from __future__ import annotations

import bz2
import zlib
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

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


def _members(chunks: Iterator[bytes], new: Callable[[], Any], magic: bytes, kind: str) -> Iterator[bytes]:
    """Decompress concatenated members/streams (gzip and bzip2 both allow them)."""
    d = new()
    fed = padding = False
    for chunk in chunks:
        data = chunk
        if padding:  # only zero bytes may follow the zero padding after the last member
            if data.strip(b"\x00"):
                raise ObjectReadError(f"bytes after the last {kind} member are not {kind}")
            continue
        while data:
            fed = True
            out = d.decompress(data)
            if out:
                yield out
            if not d.eof:
                break
            data, d, fed = d.unused_data, new(), False
            if data and not data.startswith(magic):
                if data.strip(b"\x00"):
                    raise ObjectReadError(f"bytes after the last {kind} member are not {kind}")
                data, padding = b"", True
    if fed and not d.eof:
        raise ObjectReadError(f"truncated {kind} stream: the object ends inside a member")


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
    if kind == "gzip":  # wbits 32+15: a gzip or zlib header, detected per member
        return kind, _wrap(_members(chunks, lambda: zlib.decompressobj(wbits=47), GZIP_MAGIC, kind), kind)
    if kind == "bzip2":
        return kind, _wrap(_members(chunks, bz2.BZ2Decompressor, BZIP2_MAGIC, kind), kind)
    if kind == "zstd":
        return kind, _zstd(chunks)
    return kind, chunks


def _wrap(it: Iterator[bytes], kind: str) -> Iterator[bytes]:
    try:
        yield from it
    except (zlib.error, OSError, EOFError, ValueError) as exc:
        raise ObjectReadError(f"corrupt {kind} stream: {exc}") from None
