"""Stream an object's bytes, decompressed by content (magic bytes), never by file name.

gzip (including multi-member files, as `cat a.gz b.gz` and many log shippers produce), bzip2
(multi-stream), zstd (multi-frame) and plain text. A truncated or corrupt stream raises
ObjectReadError at the end, after the caller has seen the blocks: callers must not commit
anything from an object until the iterator is exhausted without error.

Memory stays bounded whatever the compression ratio (a highly repetitive log compresses a
thousand times and more): gzip and bzip2 pieces are capped at `MAX_PIECE` bytes, and zstd, which
cannot cap its output, is fed 1 KiB slices at a time.
"""

from __future__ import annotations

import bz2
from collections.abc import Callable, Iterable, Iterator
from typing import Any, BinaryIO

from isal import isal_zlib  # ISA-L inflate: zlib's format and API, ~2.7x less CPU per byte

from agent_traffic.errors import ObjectReadError

READ_SIZE = 4 * 1024 * 1024
MAX_PIECE = 8 * 1024 * 1024  # decompressed bytes per piece at most (gzip and bzip2)
FEED_SIZE = 64 * 1024  # compressed bytes per decompressor call
ZSTD_FEED_SIZE = 1024  # zstd cannot cap its output: 1 KiB slices expand to ~10 MiB at most

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


def _slices(chunks: Iterator[bytes], size: int) -> Iterator[bytes]:
    for chunk in chunks:
        view = memoryview(chunk)
        for i in range(0, len(view), size):
            yield bytes(view[i : i + size])


def _zlib_feed(d: Any, data: bytes) -> Iterator[bytes]:
    while True:
        out = d.decompress(data, MAX_PIECE)
        if out:
            yield out
        data = d.unconsumed_tail
        if d.eof or (not data and len(out) < MAX_PIECE):
            return


def _bz2_feed(d: Any, data: bytes) -> Iterator[bytes]:
    out = d.decompress(data, MAX_PIECE)
    while True:
        if out:
            yield out
        if d.eof or d.needs_input:
            return
        out = d.decompress(b"", MAX_PIECE)


def _zstd_feed(d: Any, data: bytes) -> Iterator[bytes]:
    out = d.decompress(data)
    if out:
        yield out


def _members(chunks: Iterator[bytes], kind: str) -> Iterator[bytes]:
    """Decompress concatenated members/streams/frames (gzip, bzip2 and zstd all allow them)."""
    new, feed, magic, size = _CODECS[kind]
    d = new()
    fed = padding = False
    for chunk in _slices(chunks, size):
        data = chunk
        if padding:  # only zero bytes may follow the zero padding after the last member
            if data.strip(b"\x00"):
                raise ObjectReadError(f"bytes after the last {kind} member are not {kind}")
            continue
        while data:
            if not fed and not data.startswith(magic[: len(data)]):  # between two members
                if data.strip(b"\x00"):
                    raise ObjectReadError(f"bytes after the last {kind} member are not {kind}")
                padding = True
                break
            fed = True
            yield from feed(d, data)
            if not d.eof:
                break
            data, d, fed = d.unused_data, new(), False
    if fed and not d.eof:
        raise ObjectReadError(f"truncated {kind} stream: the object ends inside a member")


def _zstd() -> Any:
    import zstandard

    return zstandard.ZstdDecompressor().decompressobj()


_CODECS: dict[str, tuple[Callable[[], Any], Callable[[Any, bytes], Iterator[bytes]], bytes, int]] = {
    "gzip": (lambda: isal_zlib.decompressobj(wbits=47), _zlib_feed, GZIP_MAGIC, FEED_SIZE),  # gzip or zlib header
    "bzip2": (bz2.BZ2Decompressor, _bz2_feed, BZIP2_MAGIC, FEED_SIZE),
    "zstd": (_zstd, _zstd_feed, ZSTD_MAGIC, ZSTD_FEED_SIZE),
}


def decompressed_blocks(f: BinaryIO) -> tuple[str, Iterator[bytes]]:
    """(compression name, iterator of decompressed byte blocks) for an open binary file."""
    head = f.read(READ_SIZE)
    kind = sniff_compression(head)
    chunks = _chunks(f, head)
    if kind in _CODECS:
        return kind, _wrap(_members(chunks, kind), kind)
    return kind, chunks


SNIFF_BYTES = 256 * 1024  # decompressed bytes read ahead to detect the format


def peek(blocks: Iterable[bytes], size: int = SNIFF_BYTES) -> tuple[bytes, Iterator[bytes]]:
    """The first `size` bytes (or fewer, at the end), and an iterator over all the blocks again."""
    it = iter(blocks)
    head: list[bytes] = []
    n = 0
    for block in it:
        head.append(block)
        n += len(block)
        if n >= size:
            break

    def again() -> Iterator[bytes]:
        yield from head
        yield from it

    return b"".join(head)[:size], again()


def _wrap(it: Iterator[bytes], kind: str) -> Iterator[bytes]:
    import zstandard

    try:
        yield from it
    except (isal_zlib.error, OSError, EOFError, ValueError, zstandard.ZstdError) as exc:
        raise ObjectReadError(f"corrupt {kind} stream: {exc}") from None
