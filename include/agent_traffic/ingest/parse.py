"""Parse one source object into canonical events and quarantine rows, in DuckDB.

Decompressed bytes are cut into blocks of whole lines (in a background thread, so reading and
decompressing overlap with parsing), framed into numbered lines without copying them (the C
extension finds the newlines, numpy where it is not built; the Arrow arrays point into the
block), and each block is parsed by one DuckDB query: a format-specific select of raw fields,
then one canonicalisation shared by every format. Memory is bounded by the block size, whatever
the object's size.

Every line read ends in exactly one outcome: an event, a quarantine row with its reason and exact
bytes, or a counted skip (blank line, CSV header, W3C directive, a JSON record that is not a
request). Invalid UTF-8 is repaired (U+FFFD) for parsing and counted; quarantine keeps the bytes.
"""

from __future__ import annotations

import csv
import ipaddress
import queue
import re
import threading
from collections import Counter
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, TypeVar

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from agent_traffic.arrow_values import (
    flags,
    from_numpy,
    lean_memory_pool,
    present,
    scalar,
    strings,
    to_numpy,
)
from agent_traffic.config import HOSTNAME
from agent_traffic.formats import (
    MAX_ONEPASS_GROUPS,
    TIME_UNITS,
    LogFormat,
    duck_connection,
    json_path,
    quote_split,
    regex_batches,
)
from agent_traffic.ingest.shape import (
    class_table,
    compile_shape,
    count_lines,
    enabled,
    event_ids,
    line_spans,
)
from agent_traffic.schema import QUARANTINE_SCHEMA

BLANK = "blank"
HEADER = "header"
NOT_REQUEST = "not a request record"
UNKNOWN_HOST = "host matches no configured site"
OTHER_HOST = "other host"  # a host no site lists, skipped (counted) by a source's default `other_hosts: skip`
NO_HOST = "no host field to match a site"
INVALID_HOST = "host is not a valid hostname"
#: A host as staged and sent: a hostname (the config's rule for site names) or a bracketed IPv6 address
VALID_HOST = re.compile(rf"(?:{HOSTNAME.pattern}|\[[0-9a-f:.]+\])")
SKIP_REASONS = (BLANK, NOT_REQUEST, OTHER_HOST)
CLF_TIME = "%d/%b/%Y:%H:%M:%S %z"
#: Times a log line may carry: wider than any real log, narrower than Python's and pandas' ranges
#: (year 10000, `infinity` or a BC date would overflow them and end the run)
TS_RANGE = ("1900-01-01 00:00:00+00", "2200-01-01 00:00:00+00")
TS_OUT_OF_RANGE = "timestamp out of range (before 1900 or after 2199)"
METHOD_TOKEN = "[!#$%&'*+.^_`|~0-9A-Za-z-]+"  # RFC 9110: a request method is any token
_METHOD_TABLE = class_table(METHOD_TOKEN)  # the same, for the compiled fast path
MAX_HOSTS_TRACKED = 10_000  # distinct unknown hosts remembered per object (then folded)
TOP_HOSTS = 20  # unknown hosts listed per object in its stats
SCAN_ROWS = 16_384  # lines per Arrow batch handed to DuckDB

T = TypeVar("T")


@dataclass
class ParseStats:
    lines_read: int = 0
    parsed: int = 0
    quarantined: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    invalid_utf8: int = 0
    unknown_hosts: Counter[str] = field(default_factory=Counter)

    def add(self, other: ParseStats) -> None:
        self.lines_read += other.lines_read
        self.parsed += other.parsed
        self.quarantined += other.quarantined
        self.skipped.update(other.skipped)
        self.reasons.update(other.reasons)
        self.invalid_utf8 += other.invalid_utf8
        self.unknown_hosts.update(other.unknown_hosts)
        if len(self.unknown_hosts) > MAX_HOSTS_TRACKED:  # random Host headers must not eat memory
            keep = self.unknown_hosts.most_common(MAX_HOSTS_TRACKED // 10)
            folded = self.unknown_hosts.total() - sum(n for _, n in keep)
            self.unknown_hosts = Counter(dict(keep))
            self.unknown_hosts["(other hosts)"] += folded

    @property
    def balanced(self) -> bool:
        return self.lines_read == self.parsed + self.quarantined + sum(self.skipped.values())

    def as_dict(self) -> dict:
        return {
            "lines_read": self.lines_read,
            "parsed": self.parsed,
            "quarantined": self.quarantined,
            "skipped": dict(self.skipped),
            "quarantine_reasons": dict(self.reasons),
            "invalid_utf8": self.invalid_utf8,
            "unknown_hosts": dict(self.unknown_hosts.most_common(TOP_HOSTS)),
            "balanced": self.balanced,
        }


@dataclass(frozen=True)
class ParseContext:
    """What the parser needs to know besides the bytes."""

    object_id: str
    source_object: str
    fmt: LogFormat
    default_site: str | None  # for logs that carry no host field
    default_host: str | None
    scheme: str
    host_sites: dict[str, str]  # hostname (or *.suffix) -> site name
    max_line_bytes: int
    trusted_proxies: tuple[str, ...] = ()  # CIDRs: the client is read from X-Forwarded-For past them
    other_hosts: str = "quarantine"  # a host no site lists: "quarantine" or "skip" (counted); with
    other_site: str | None = None  # a site name, such a line is staged under that site instead

    @property
    def forwarded(self) -> bool:
        """The client address comes from X-Forwarded-For: trusted proxies set, and a field for it."""
        return bool(self.trusted_proxies) and "forwarded_for" in self.fmt.fields


class ParsedBlock:
    """A block's events and quarantine rows, and its counts: cut from the block's query rows
    where they are first read, which in the pipeline is the classifying thread, so the parsing
    thread goes on to the next block meanwhile (`steps._stage_blocks`)."""

    def __init__(self, split: Callable[[], tuple[pa.Table, pa.Table, ParseStats]]) -> None:
        self._split: Callable[[], tuple[pa.Table, pa.Table, ParseStats]] | None = split

    @cached_property
    def _parts(self) -> tuple[pa.Table, pa.Table, ParseStats]:
        assert self._split is not None
        parts, self._split = self._split(), None  # the block's query rows are freed with it
        return parts

    @property
    def events(self) -> pa.Table:
        return self._parts[0]

    @property
    def quarantine(self) -> pa.Table:
        return self._parts[1]

    @property
    def stats(self) -> ParseStats:
        return self._parts[2]


# ---------------------------------------------------------------------------------------------
# Line framing


@dataclass
class Lines:
    """One block of numbered lines, without their terminators (`\n` or `\r\n`)."""

    first_line: int
    buf: bytes | memoryview  # the block
    starts: np.ndarray  # byte offset of each line in `buf`
    lengths: np.ndarray  # its length, terminator excluded
    text: pa.Array  # string_view over `buf`: valid UTF-8 (repaired where the input was not)
    repaired: int = 0

    def lines(self, rows: np.ndarray) -> pa.Array:
        """Some lines of the block as `text` has them (string_view arrays have no take kernel)."""
        if self.repaired:
            return self.text.cast(pa.large_string()).take(from_numpy(rows))
        views = _views(np.frombuffer(self.buf, np.uint8), self.starts[rows], self.lengths[rows])
        return pa.Array.from_buffers(pa.string_view(), len(rows), [None, pa.py_buffer(views), pa.py_buffer(self.buf)])

    def raw_many(self, rows: np.ndarray) -> pa.Array:
        """The exact bytes of many lines of the block (binary), without a Python object per line."""
        a = np.frombuffer(self.buf, np.uint8)
        views = _views(a, self.starts[rows], self.lengths[rows])
        return pa.Array.from_buffers(pa.binary_view(), len(rows), [None, pa.py_buffer(views),
                                                                    pa.py_buffer(self.buf)]).cast(pa.binary())

    def raw(self, i: int) -> bytes:
        """The exact bytes of the i-th line of the block."""
        s = int(self.starts[i])
        return bytes(self.buf[s : s + int(self.lengths[i])])


MAX_BLOCK = 1 << 30  # string views address a block with 32-bit offsets


def cut_blocks(pieces: Iterable[bytes], block_bytes: int, max_line_bytes: int) -> Iterator[bytes | memoryview]:
    """Join decompressed pieces into blocks of whole lines, about `block_bytes` each.

    A line that does not end within a block and is longer than `max_line_bytes` is kept only up
    to `max_line_bytes + 1` bytes (enough to quarantine it as too long) and the rest is skipped
    up to its newline, so one endless line cannot exhaust memory.
    """
    block_bytes = min(block_bytes, MAX_BLOCK // 2)
    pending: list[bytes] = []
    size = 0
    long_head: bytes | None = None
    for piece in pieces:
        if long_head is not None:
            nl = piece.find(b"\n")
            if nl < 0:
                continue
            pending, size = [long_head + b"\n"], len(long_head) + 1
            piece, long_head = piece[nl + 1 :], None
        pending.append(piece)
        size += len(piece)
        if size < block_bytes:
            continue
        buf = b"".join(pending)
        pending, size = [], 0
        cut = buf.rfind(b"\n")
        if cut < 0:  # no line end in a whole block: one long line
            if len(buf) > max_line_bytes:
                long_head = buf[: max_line_bytes + 1]
            else:
                pending, size = [buf], len(buf)
            continue
        yield buf if cut == len(buf) - 1 else memoryview(buf)[: cut + 1]  # no copy of the block
        if cut < len(buf) - 1:
            pending, size = [buf[cut + 1 :]], len(buf) - cut - 1
    if long_head is not None:
        pending.append(long_head)
    buf = b"".join(pending)
    if buf:
        yield buf


SHORT_LINE = 16  # lines shorter than this and than the format's shortest match skip the query
_WHITESPACE = np.zeros(256, bool)
_WHITESPACE[[9, 10, 11, 12, 13, 32]] = True  # what the query trims before it calls a line blank


def shortest_match(fmt: LogFormat) -> int:
    """The fewest characters a line of a regex format has (Python's own regex parser says; 1 if it
    cannot tell): a shorter line cannot match."""
    import re._parser as sre_parse  # noqa: PLC0415 - stdlib, needed for regex formats only

    try:
        return max(1, int(sre_parse.parse(fmt.regex or "").getwidth()[0]))
    except Exception:  # noqa: BLE001 - a syntax Python does not know (RE2's): no shortcut
        return 1


BLOCK_LINES = 262_144  # lines per block at most (`parse.block_lines`): a block's memory grows with lines too
_WINDOW = 1 << 22  # bytes searched for newlines at a time, so finding them takes bounded memory


def by_lines(buf: bytes | memoryview, max_lines: int) -> Iterator[bytes | memoryview]:
    """Cut a block of whole lines into blocks of at most `max_lines` lines (views, no copy): 32 MB
    of blank lines are 32 million lines, and each line costs parsing memory whatever its length."""
    if count_lines(buf) <= max_lines:
        yield buf
        return
    a = np.frombuffer(buf, np.uint8)
    view, start = memoryview(buf), 0
    while start < len(a):
        need, pos, cut = max_lines, start, -1
        while pos < len(a):
            nl = np.flatnonzero(a[pos : pos + _WINDOW] == 10)
            if len(nl) >= need:
                cut = pos + int(nl[need - 1])
                break
            need, pos = need - len(nl), pos + _WINDOW
        if cut < 0 or cut == len(a) - 1:
            yield view[start:]
            return
        yield view[start : cut + 1]
        start = cut + 1


def frame(buf: bytes | memoryview, first_line: int) -> Lines:
    """Number the lines of a block: an Arrow string_view array points at each line inside the
    block, terminator excluded, without copying the bytes. The C extension finds the lines
    (`shape.line_spans`); without it, numpy does."""
    if enabled():
        starts, lengths, views = line_spans(buf)
    else:
        a = np.frombuffer(buf, np.uint8)
        ends = np.flatnonzero(a == 10)
        if len(a) and a[-1] != 10:
            ends = np.append(ends, len(a))
        starts = np.zeros(len(ends), np.int64)
        starts[1:] = ends[:-1] + 1
        lengths = ends - starts
        has_cr = lengths > 0
        has_cr[has_cr] = a[ends[has_cr] - 1] == 13
        lengths -= has_cr
        views = _views(a, starts, lengths)
    n = len(starts)
    text = pa.Array.from_buffers(pa.string_view(), n, [None, pa.py_buffer(views), pa.py_buffer(buf)])
    try:
        text.validate(full=True)
        return Lines(first_line, buf, starts, lengths, text)
    except pa.ArrowInvalid:
        return _repaired(buf, starts, lengths, first_line)


def _views(a: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Arrow string views (16 bytes each): length, 4-byte prefix, buffer 0, offset; or inline."""
    n = len(starts)
    views = np.zeros((n, 16), np.uint8)
    words = views.view(np.int32)
    words[:, 0] = lengths
    if len(a):
        pick = np.minimum(starts[:, None] + np.arange(4), len(a) - 1)
        views[:, 4:8] = a[pick]
    words[:, 3] = starts
    short = np.flatnonzero(lengths <= 12)  # short strings live inside the view, zero-padded
    if len(short) and len(a):
        k = np.arange(12)
        inside = k < lengths[short, None]
        picked = a[np.minimum(starts[short, None] + k, len(a) - 1)]
        views[short, 4:] = np.where(inside, picked, 0)
    return views


def _repaired(buf: bytes | memoryview, starts: np.ndarray, lengths: np.ndarray, first_line: int) -> Lines:
    texts, bad = [], 0
    for s, ln in zip(starts.tolist(), lengths.tolist(), strict=True):
        seg = bytes(buf[s : s + ln])
        try:
            texts.append(seg.decode("utf-8"))
        except UnicodeDecodeError:
            texts.append(seg.decode("utf-8", errors="replace"))
            bad += 1
    return Lines(first_line, buf, starts, lengths, strings(texts, pa.string_view()), bad)


def in_background(it: Iterator[T], depth: int = 1) -> Generator[T, None, None]:
    """Run an iterator in a thread, `depth` items ahead: reads, zlib/bz2/zstd, DuckDB and Arrow drop
    the GIL, so the stage after it works on block n while this one makes block n+1."""
    q: queue.Queue[tuple[BaseException | None, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item: tuple[BaseException | None, Any]) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for item in it:
                if not put((None, item)):
                    return
            put((None, done))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            put((exc, None))

    t = threading.Thread(target=run, name="agent-traffic-read", daemon=True)
    t.start()
    try:
        while True:
            exc, item = q.get()
            if exc is not None:
                raise exc
            if item is done:
                return
            yield item
    finally:
        stop.set()
        t.join()


# ---------------------------------------------------------------------------------------------
# SQL


def _q(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _f(name: str) -> str:
    return f'"f_{name}"'


def _null_if_empty(expr: str, name: str) -> str:
    return f"NULLIF({expr}, '')" if name == "bytes" else f"NULLIF(NULLIF({expr}, ''), '-')"


def request_presplit(fmt: LogFormat) -> bool:
    """The compiled fast path also splits the request (method, target) for this regex format: it
    has a request field, read as captured (a backslash decode is a no-op on fast lines, which
    have no backslash; a url or plus decode would change it before the split)."""
    return fmt.kind == "regex" and "request" in fmt.fields and fmt.decode.get("request") in (None, "backslash")


CANON_FIELDS = ("client_ip", "time", "request", "status", "bytes", "referer", "user_agent", "forwarded_for")


def canon_slots(ctx: ParseContext, slots: tuple[str, ...]) -> tuple[int, int, int, int] | None:
    """The capture slots of time, status, bytes and client_ip (-1: none) when the compiled fast path
    can hand this object's lines canonical (shape.Shape.scan_canonical): a CLF-timed NCSA format
    read as captured, of one site whose host is already canonical, without proxies. Else None."""
    fmt, host = ctx.fmt, ctx.default_host or ""
    if not (request_presplit(fmt) and set(fmt.fields) <= set(CANON_FIELDS) and not ctx.forwarded
            and fmt.timestamp.fields == ("time",) and fmt.timestamp.format == CLF_TIME and not fmt.duration
            and not fmt.skip_without and all(fmt.decode.get(n) in (None, "backslash") for n in fmt.fields)
            and ctx.default_site and host and host.isascii() and host == host.lower() and not set(host) & set(":@")):
        return None
    return tuple(slots.index(n) if n in slots else -1 for n in ("time", "status", "bytes", "client_ip"))  # type: ignore[return-value]


def _raw_select(fmt: LogFormat, layout: tuple[str, ...] | None, presplit: bool = False) -> str:
    """SELECT line_number, line, matched and one VARCHAR column f_<name> per raw field (regex
    formats also `fast`: the line was read by cutting it at its quotes, or by the compiled fast
    path when `presplit`)."""
    names = fmt.fields
    if fmt.kind == "regex":
        return _regex_select(fmt.regex or "", names, presplit, presplit and request_presplit(fmt))
    if fmt.kind == "json":
        paths = list(dict.fromkeys(fmt.columns))
        plist = "[" + ", ".join(_q(json_path(p)) for p in paths) + "]"
        cols = ", ".join(
            "coalesce(" + ", ".join(_null_if_empty(f"v[{paths.index(p) + 1}]", n) for p in fmt.sources_of(n))
            + f", NULL) AS {_f(n)}"
            for n in names
        )
        return (
            f"SELECT line_number, line, v IS NOT NULL AS matched, {cols} FROM (SELECT line_number, line, "
            f"CASE WHEN starts_with(line, '{{') THEN try(json_extract_string(line, {plist})) END AS v FROM l)"
        )
    if fmt.kind == "w3c":
        pos = {c: i + 1 for i, c in enumerate(layout or ())}

        def w3c_col(n: str) -> str:
            idx = [pos[c] for c in fmt.sources_of(n) if c in pos]
            return "coalesce(" + ", ".join(_null_if_empty(f"p[{i}]", n) for i in idx) + ", NULL::VARCHAR)"

        cols = ", ".join(f"{w3c_col(n)} AS {_f(n)}" for n in names)
        n_cols = len(layout) if layout else -1
        return (
            f"SELECT line_number, line, len(p) = {n_cols} AS matched, {cols} FROM "
            f"(SELECT line_number, line, string_split(line, {_q(fmt.delimiter)}) AS p FROM l)"
        )
    cols = ", ".join(f"{_null_if_empty(_f(n), n)} AS {_f(n)}" for n in names)
    return f"SELECT line_number, line, matched, {cols} FROM l"


def _extracts(subject: str, regex: str, prefix: str, when: str | None) -> tuple[list[str], dict[str, str]]:
    """regexp_extract in one-pass batches (only on rows where `when`, if given): the SELECT items
    and each group's expression."""
    exprs, where = [], {}
    for i, (rx, ns) in enumerate(regex_batches(regex)):
        if ns:
            names = ", ".join(_q(n) for n in ns)
            extract = f"regexp_extract({subject}, {_q(rx)}, [{names}])"
            exprs.append(f"{extract if when is None else f'CASE WHEN {when} THEN {extract} END'} AS {prefix}{i}")
            where |= {n: f'{prefix}{i}."{n}"' for n in ns}
    return exprs, where


WHOLE = "__whole"  # a group around a whole piece: it equals the piece exactly when the piece matched


def _regex_select(regex: str, names: tuple[str, ...], presplit: bool = False, request: bool = False) -> str:
    """The raw fields as VARCHAR (NULL for '' and '-'), and `matched`. With `presplit`, the lines
    come with their fields read already (c_<field>: the compiled fast path's, or for the lines it
    left, regex_fields' from a query on those lines alone), so this query runs no regex."""
    matched = "coalesce(" + ", ".join(f"NULLIF({_f(n)}, '')" for n in names) + ") IS NOT NULL"
    cols = ", ".join(f"{_null_if_empty(_f(n), n)} AS {_f(n)}" for n in names)
    if presplit:  # and the event id (k_event_id); with `request`, the request's method and target
        fields = ", ".join(f'"c_{n}" AS {_f(n)}' for n in names)
        split = ", k_event_id" + (", c_method, c_target" if request else "")
        return (f"SELECT line_number, line, fast, {matched} AS matched, {cols}{split} FROM "
                f"(SELECT line_number, line, c_fast AS fast, {fields}{split} FROM l)")
    return f"SELECT line_number, line, fast, {matched} AS matched, {cols} FROM ({regex_fields(regex, names)})"


def regex_fields(regex: str, names: tuple[str, ...], cut: bool = True) -> str:
    """SELECT line_number, line, fast and the raw fields f_<name> ('' when absent) of the lines in `l`.

    With `cut`, lines without a backslash that have the format's quotes are cut at them, and only
    the pieces between quotes meet the regex engine (formats.QuoteSplit); other lines, the regex.
    Without it every line meets the regex, in a shorter query (the few lines the compiled fast
    path leaves: for them, planning the longer query costs more than it saves).

    A piece between quotes with at most three groups is matched once: a group around the whole
    piece, which RE2 extracts in the same one-pass run, says whether it matched (it equals the
    piece), instead of a second run to ask. Each field's choice between the two readings is made
    once and shared by `matched` and the output column."""
    split = quote_split(regex) if cut else None
    exprs, where = _extracts("line", regex, "m", "NOT fast" if split else None)
    pieces: list[str] = []
    if split:
        k = len(split.quoted)
        pre = ["NOT contains(line, '\\')", f"len(p) >= {2 * k + 1}" if split.open_tail else f"len(p) = {2 * k + 1}"]
        post: list[str] = []
        quick = {name: f"p[{2 * j + 2}]" for j, name in enumerate(split.quoted) if name}
        for i in range(len(split.pieces)):
            part, lit, last = f"p[{2 * i + 1}]", split.literal(i), i == len(split.pieces) - 1
            if lit is None:
                groups = sum(len(ns) for _, ns in regex_batches(split.pattern(i)))
                if last or groups >= MAX_ONEPASS_GROUPS:  # a prefix match, or no room left in one pass
                    pre.append(f"regexp_matches({part}, {_q(split.pattern(i))})")
                    more, at = _extracts(part, split.pattern(i), f"s{i}_", "pre")
                else:
                    more, at = _extracts(part, f"^(?P<{WHOLE}>{split.pieces[i]})$", f"s{i}_", "pre")
                    # CASE, not OR: DuckDB evaluates both sides of an OR on every row
                    post.append(f"CASE WHEN {part} = '' THEN regexp_matches({part}, {_q(split.pattern(i))}) "
                                f"ELSE {at.pop(WHOLE)} = {part} END")
                pieces, quick = pieces + more, quick | at
            elif lit or not last:
                pre.append(f"{part} = {_q(lit)}" if not last else f"starts_with({part}, {_q(lit)})")
        source = f"(SELECT *, {' AND '.join(pre)} AS pre FROM (SELECT line_number, line, string_split(line, '\"') AS p FROM l))"
        if pieces:
            source = f"(SELECT *, {', '.join(pieces)} FROM {source})"
        source = f"(SELECT *, {' AND '.join(['pre', *post])} AS fast FROM {source})"
        where = {n: f"CASE WHEN fast THEN {quick[n]} ELSE {where[n]} END" for n in names}
    else:
        source = "(SELECT *, false AS fast FROM l)"
    fields = ", ".join(f"{where[n]} AS {_f(n)}" for n in names)
    return f"SELECT line_number, line, fast, {fields} FROM (SELECT *, {', '.join(exprs)} FROM {source})"


def _decode(expr: str, how: str | None) -> str:
    if how == "backslash":  # nginx \xHH (UTF-8 arrives as \xC3\xBC), Apache \" \\ \t: via a BLOB cast
        hexed = (f"replace(replace(replace(regexp_replace({expr}, '\\\\\\\\', '\\\\x5C', 'g'), '\\\"', '\\x22'), "
                 f"'\\t', '\\x09'), '\\n', '\\x0A')")
        return f"CASE WHEN contains({expr}, '\\') THEN coalesce(try(decode(CAST({hexed} AS BLOB))), {expr}) ELSE {expr} END"
    if how == "url":  # CloudFront encodes user agents, often twice
        return (f"CASE WHEN contains({expr}, '%') THEN coalesce(try(url_decode(url_decode({expr}))), "
                f"try(url_decode({expr})), {expr}) ELSE {expr} END")
    if how == "plus":  # IIS writes spaces as +
        return f"replace({expr}, '+', ' ')"
    return expr


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _bare(address: str) -> str:
    """An address as X-Forwarded-For may carry it, without port or brackets: [v6]:p, v4:p."""
    a = address.strip()
    if a.startswith("[") and "]" in a:
        return a[1 : a.index("]")]
    return a.split(":", 1)[0] if a.count(":") == 1 else a


def forwarded_client(remote: str | None, forwarded: str | None, proxies: Sequence[Network]) -> str | None:
    """The client behind your proxies, as nginx's realip module finds it (`real_ip_recursive on`):
    walking from the connecting address back through X-Forwarded-For, the first address that is not
    one of `proxies`. Addresses left of it were written by the client and are not trusted, so a bot
    cannot claim another's address by sending the header itself. A value that is no address ends
    the walk and is the answer (it reads as unverifiable, never as verified)."""
    chain = [b for b in (_bare(x) for x in (forwarded or "").split(",")) if b and b != "-"]
    if remote:
        chain.append(remote)
    for address in reversed(chain):
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return address
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        if not any(ip in net for net in proxies):
            return address
    return chain[0] if chain else remote


def with_forwarded_clients(out: pa.Table, proxies: Sequence[Network]) -> pa.Table:
    """client_ip from each row's connecting address and X-Forwarded-For: rows without the header
    keep theirs, the others are dictionary-encoded by (address, header) and each distinct pair is
    answered once (as annotator.py answers user agents). forwarded_for is dropped: events keep
    their schema."""
    ip = out["client_ip"]
    pairs = pc.binary_join_element_wise(pc.fill_null(ip, scalar("", ip.type)), out["forwarded_for"],
                                        scalar("\x1f"))  # null: no header
    codes = pc.dictionary_encode(pairs).combine_chunks()
    answers = [forwarded_client(remote or None, header, proxies)
               for remote, header in (p.split("\x1f", 1) for p in codes.dictionary.to_pylist())]
    forwarded = pc.take(strings(answers, ip.type), codes.indices)
    idx = out.schema.get_field_index("client_ip")
    out = out.set_column(idx, out.schema.field(idx), pc.if_else(pc.is_null(pairs), ip, forwarded))
    return out.drop_columns(["forwarded_for"])


def _epoch_cols(fmt: LogFormat) -> str:
    """t_int / t_dec: the raw time as an integer or a decimal epoch, when it is one."""
    ts = fmt.timestamp
    if ts.format:
        return "NULL::HUGEINT AS t_int, NULL::DOUBLE AS t_dec"
    return ("CASE WHEN regexp_full_match(t_raw, '-?[0-9]{1,20}') THEN TRY_CAST(t_raw AS HUGEINT) END AS t_int, "
            "CASE WHEN regexp_full_match(t_raw, '-?[0-9]*\\.[0-9]+(?:[eE][+-]?[0-9]+)?|-?[0-9]+[eE][+-]?[0-9]+') "
            "THEN TRY_CAST(t_raw AS DOUBLE) END AS t_dec")


def _ts_sql(fmt: LogFormat) -> str:
    """Integer and decimal epochs (the unit from the format, else from the magnitude), RFC 3339
    and ISO 8601 with any offset and precision, CLF; all to UTC."""
    ts = fmt.timestamp
    v = "t_raw"
    if ts.format:
        if "%z" in ts.format or "%Z" in ts.format:
            return f"try_strptime({v}, {_q(ts.format)})"
        return f"CAST(try_strptime({v}, {_q(ts.format)}) AS TIMESTAMPTZ)"
    i, d = "t_int", "t_dec"
    if ts.unit:
        us = {"s": f"{i} * 1000000", "ms": f"{i} * 1000", "us": i, "ns": f"{i} // 1000"}[ts.unit]
        secs = f"{d} / {TIME_UNITS[ts.unit]}"
    else:
        us = (f"CASE WHEN abs({i}) >= 100000000000000000 THEN {i} // 1000 WHEN abs({i}) >= 100000000000000 "
              f"THEN {i} WHEN abs({i}) >= 100000000000 THEN {i} * 1000 ELSE {i} * 1000000 END")
        secs = (f"CASE WHEN abs({d}) >= 1e17 THEN {d} / 1e9 WHEN abs({d}) >= 1e14 THEN {d} / 1e6 "
                f"WHEN abs({d}) >= 1e11 THEN {d} / 1e3 ELSE {d} END")
    text = "NULL" if ts.unit else f"coalesce(TRY_CAST({v} AS TIMESTAMPTZ), try_strptime({v}, {_q(CLF_TIME)}))"
    return (f"CASE WHEN {i} IS NOT NULL THEN CASE WHEN ({us}) BETWEEN 0 AND 253402300799999999 "
            f"THEN make_timestamp(({us})::BIGINT)::TIMESTAMPTZ END "
            f"WHEN {d} IS NOT NULL THEN CASE WHEN ({secs}) BETWEEN 0 AND 253402300799 THEN to_timestamp({secs}) END "
            f"ELSE {text} END")


def _duration_sql(fmt: LogFormat) -> str:
    if not fmt.duration:
        return "NULL::DOUBLE"
    xs = [f"TRY_CAST(rtrim({_f(n)}, 's') AS DOUBLE)" for n in fmt.duration.fields]
    factor = 1000.0 / TIME_UNITS[fmt.duration.unit]
    ok = " AND ".join(f"{x} >= 0" for x in xs)
    return f"CASE WHEN {ok} THEN ({' + '.join(xs)}) * {factor} END"


def _site_case(host_sites: dict[str, str]) -> str:
    """Exact hostnames first, then `*.suffix` wildcards, longest suffix first."""
    exact: dict[str, list[str]] = {}
    wild: list[tuple[str, str]] = []
    for h, site in host_sites.items():
        h = h.lower()
        if h.startswith("*."):
            wild.append((h[1:], site))
        else:
            exact.setdefault(site, []).append(h)
    parts = [f"WHEN host IN ({', '.join(_q(h) for h in hs)}) THEN {_q(site)}" for site, hs in exact.items()]
    parts += [f"WHEN ends_with(host, {_q(suffix)}) THEN {_q(site)}"
              for suffix, site in sorted(wild, key=lambda w: -len(w[0]))]
    return "CASE " + " ".join(parts) + " END" if parts else "NULL::VARCHAR"


ABS_URL = "^([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)"
WHITESPACE = "' ' || chr(9) || chr(11) || chr(12) || chr(13)"


def build_sql(ctx: ParseContext, layout: tuple[str, ...] | None = None, presplit: bool = False) -> str:
    """One query: raw fields -> canonical event columns + `reason` (NULL for a good event);
    `presplit`: the lines come with the compiled fast path's columns (c_fast, c_<field>)."""
    fmt = ctx.fmt
    have = set(fmt.fields)

    def col(name: str) -> str:
        return _decode(_f(name), fmt.decode.get(name)) if name in have else "NULL::VARCHAR"

    t_raw = " || ' ' || ".join(col(n) for n in fmt.timestamp.fields)
    req_parts = f"string_split({col('request')}, ' ')" if "request" in have else "NULL::VARCHAR[]"
    req_ok = f"len(rp) >= 2 AND regexp_full_match(rp[1], {_q(METHOD_TOKEN)})"
    method, target = f"CASE WHEN {req_ok} THEN rp[1] END", f"CASE WHEN {req_ok} THEN NULLIF(rp[2], '') END"
    if presplit and request_presplit(fmt):  # fast lines come split (c_method, c_target)
        req_parts = f"CASE WHEN NOT fast THEN {req_parts} END"
        method, target = f"CASE WHEN fast THEN c_method ELSE {method} END", f"CASE WHEN fast THEN c_target ELSE {target} END"
    from_pq = (f"CASE WHEN {col('path')} IS NOT NULL THEN {col('path')} || coalesce('?' || {col('query')}, '') END"
               if "path" in have else "NULL")
    host = f"coalesce({col('host')}, auth.a" + (f", {_q(ctx.default_host)})" if ctx.default_host else ")")
    site = _q(ctx.default_site) if ctx.default_site else _site_case(ctx.host_sites)
    if ctx.other_site and not ctx.default_site:
        site = f"coalesce({site}, {_q(ctx.other_site)})"
    other = OTHER_HOST if ctx.other_hosts == "skip" else UNKNOWN_HOST
    skip = f"WHEN skip_field IS NULL THEN {_q(NOT_REQUEST)}" if fmt.skip_without else ""
    fwd = f" {col('forwarded_for')} AS forwarded_for," if ctx.forwarded else ""
    max_b = int(ctx.max_line_bytes)
    event_id = ("k_event_id" if presplit  # computed in C over the same bytes (shape.event_ids)
                else f"md5({_q(ctx.source_object)} || ':' || line_number::VARCHAR || ':' || line)")
    return f"""
    WITH l AS (SELECT * FROM lines_in),  -- l: the block's lines (line_number, line)
    fields AS ({_raw_select(fmt, layout, presplit)}),
    request_split AS (
      SELECT *, {req_parts} AS rp FROM (SELECT *, {t_raw} AS t_raw FROM fields)
    ),
    request AS (
      SELECT *,
        upper(coalesce({col('method')}, {method})) AS method,
        coalesce({col('target')}, {target}, {from_pq}, {col('url')}) AS target
      FROM request_split
    ),
    authority AS (
      SELECT *,
        CASE WHEN abs_url IS NOT NULL THEN regexp_extract(abs_url, {_q(ABS_URL)}, ['s', 'a']) END AS auth
      FROM (SELECT *, coalesce(CASE WHEN contains({col('url')}, '://') THEN {col('url')} END,
                               CASE WHEN contains(target, '://') THEN target END) AS abs_url,
                      {_epoch_cols(fmt)} FROM request)
    ),
    typed AS (
      SELECT line_number, line, matched, t_raw, method, target,{" k_event_id," if presplit else ""}
        {_ts_sql(fmt)} AS ts,
        TRY_CAST({col('status')} AS INTEGER) AS status,
        coalesce(TRY_CAST({col('bytes')} AS BIGINT), CASE WHEN {col('bytes')} = '-' THEN 0 END) AS bytes,
        {_duration_sql(fmt)} AS duration_ms,
        {col('client_ip')} AS ip,
        coalesce({col('user_agent')}, '') AS user_agent,
        {col('referer')} AS referer,
        {col('content_type')} AS content_type,{fwd}
        lower({host}) AS h,
        lower(coalesce({col('scheme')}, auth.s)) AS sch,
        {_f(fmt.skip_without) if fmt.skip_without else 'NULL'} AS skip_field
      FROM authority
    ),
    normalized AS (
      SELECT *,
        CASE WHEN contains(h, ':') OR contains(h, '@') THEN regexp_replace(regexp_replace(h, '^.*@', ''), ':[0-9]*$', '')
             ELSE h END AS host,
        CASE WHEN starts_with(target, '/') THEN target
             WHEN contains(target, '://') THEN coalesce(NULLIF(regexp_replace(target, '^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*', ''), ''), '/')
             ELSE target END AS t2,
        CASE WHEN sch IN ('http', 'ws') THEN 'http' WHEN sch IN ('https', 'h2', 'wss', 'grpcs') THEN 'https'
             ELSE {_q(ctx.scheme)} END AS scheme,
        CASE WHEN NOT contains(ip, ':') THEN ip
             WHEN regexp_full_match(ip, '[0-9.]+:[0-9]+') THEN split_part(ip, ':', 1)
             WHEN starts_with(ip, '[') THEN regexp_extract(ip, '^\\[([^\\]]*)\\]', 1)
             ELSE ip END AS client_ip
      FROM typed
    ),
    located AS (
      SELECT *, {site} AS site,
        CASE WHEN strpos(t2, '?') > 0 THEN substr(t2, 1, strpos(t2, '?') - 1) ELSE t2 END AS path,
        CASE WHEN strpos(t2, '?') > 0 THEN NULLIF(substr(t2, strpos(t2, '?') + 1), '') END AS query
      FROM normalized
    )
    SELECT
      {event_id} AS event_id,
      ts, site, coalesce(host, '') AS host, method, path, query,
      scheme || '://' || coalesce(host, '') || path || CASE WHEN query IS NULL THEN '' ELSE '?' || query END AS url,
      status, bytes, duration_ms, client_ip, user_agent, referer, content_type,
      {_q(ctx.source_object)} AS source_object, line_number,{" forwarded_for," if ctx.forwarded else ""}
      CASE
        WHEN strlen(line) > {max_b} THEN 'line longer than {max_b} bytes'
        WHEN NOT matched AND trim(line, {WHITESPACE}) = '' THEN {_q(BLANK)}
        WHEN NOT matched THEN {_q(f"does not match format {fmt.id}")}
        {skip}
        WHEN t_raw IS NULL THEN 'no timestamp'
        WHEN ts IS NULL THEN 'unparseable timestamp'
        WHEN NOT (ts >= TIMESTAMPTZ '{TS_RANGE[0]}' AND ts < TIMESTAMPTZ '{TS_RANGE[1]}') THEN {_q(TS_OUT_OF_RANGE)}
        WHEN method IS NULL OR target IS NULL THEN 'unparseable request line'
        WHEN status IS NULL OR status NOT BETWEEN 100 AND 599 THEN 'status not in 100-599'
        WHEN NOT starts_with(path, '/') THEN 'request target is not a path'
        WHEN site IS NULL AND host IS NULL THEN {_q(NO_HOST)}
        WHEN site IS NULL THEN {_q(other)}
      END AS reason
    FROM located
    """


# ---------------------------------------------------------------------------------------------
# Block parsing


def with_invalid_hosts(out: pa.Table) -> pa.Table:
    """Lines whose host is not a hostname (a `/`, NUL, newline, markup, over 253 characters) get
    INVALID_HOST as their reason, ahead of the site checks (a host ending in a site's suffix is
    still refused) and behind the line's own faults. Checked once per distinct host: a regex per
    line in the query cost more than the rest of the line's parsing."""
    bad = [h for h in pc.unique(out["host"]).to_pylist() if h and (len(h) > 253 or not VALID_HOST.fullmatch(h))]
    if not bad:
        return out
    reason = out["reason"]
    own_fault = pc.and_(pc.is_valid(reason), pc.invert(pc.is_in(reason, strings([UNKNOWN_HOST, OTHER_HOST, NO_HOST],
                                                                                  reason.type))))
    mask = pc.and_(pc.is_in(out["host"], strings(bad, out["host"].type)), pc.invert(own_fault))
    return out.set_column(out.schema.get_field_index("reason"), "reason",
                          pc.if_else(mask, scalar(INVALID_HOST, reason.type), reason))


def _csv_table(lines: list[str], first_line: int, fmt: LogFormat) -> tuple[pa.Table, int]:
    """CSV formats: split fields in Python (quoted commas), then hand DuckDB plain columns."""
    names = list(fmt.fields)
    idx = {h: i for i, h in enumerate(fmt.header)}
    sources = {n: [idx[c] for c in fmt.sources_of(n)] for n in names}
    cols: dict[str, list[str | None]] = {n: [] for n in names}
    nums: list[int] = []
    kept: list[str] = []
    matched: list[bool] = []
    headers = 0
    for i, line in enumerate(lines):
        num = first_line + i
        row = next(csv.reader([line]), []) if line.strip() else []
        if num == 1 and [c.strip() for c in row[: len(fmt.header)]] == list(fmt.header):
            headers += 1
            continue
        ok = len(row) == len(fmt.header)
        nums.append(num)
        kept.append(line)
        matched.append(ok)
        for n in names:
            cols[n].append(next((row[j] for j in sources[n] if row[j]), None) if ok else None)
    data: dict[str, pa.Array] = {
        "line_number": from_numpy(np.array(nums, np.int64)),
        "line": strings(kept, pa.large_string()),
        "matched": from_numpy(np.array(matched, np.bool_)),
    }
    for n in names:
        data[f"f_{n}"] = strings(cols[n], pa.large_string())
    return pa.table(data), headers


#: duckdb 2.0's own runner of one statement to Arrow: `con.sql("EXECUTE ...")` runs a non-SELECT at
#: once into DuckDB's memory and copies that into Arrow, which costs a block's rows twice in memory
_SUBMIT = getattr(getattr(duckdb, "_seam", None), "submit", None)
ARROW_BATCH = 131_072  # rows per Arrow batch, as to_arrow_table() makes them


def _view_array(a: pa.Array) -> np.ndarray:
    """The 16-byte views of a string_view array (V16), without a copy."""
    return np.frombuffer(a.buffers()[1], np.dtype("V16"), len(a), 16 * a.offset)


def _with_views(a: pa.Array, views: np.ndarray, bits: pa.Buffer | None = None) -> pa.Array:
    """A string_view array of `views` (one per row) over the data buffers of `a`, which they point into."""
    return pa.Array.from_buffers(pa.string_view(), len(views), [bits, pa.py_buffer(views), *a.buffers()[2:]])


def _rows(table: pa.Table, rows: np.ndarray) -> pa.Table:
    """table.take(rows), string views included (Arrow has no take for them): their 16-byte views
    gathered in numpy, pointing into the same data buffers."""
    cols, indices = [], from_numpy(rows.astype(np.int64))
    for col in table.columns:
        a = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
        if a.type != pa.string_view():
            cols.append(a.take(indices))
            continue
        bits = None
        if a.null_count:
            valid = present(a)[rows]
            bits = pa.py_buffer(np.packbits(valid, bitorder="little"))
        cols.append(_with_views(a, _view_array(a)[rows], bits))
    return pa.Table.from_arrays(cols, schema=table.schema)


class _Lines:
    """What a prepared query reads as `lines_in`: the table it holds when the query runs (DuckDB
    asks for its Arrow stream at each execution, and reads the schema once, when preparing)."""

    def __init__(self, table: pa.Table) -> None:
        self.table: pa.Table | None = table

    def __arrow_c_stream__(self, requested_schema: object = None) -> object:
        assert self.table is not None, "a prepared query runs only with its lines"
        return self.table.__arrow_c_stream__(requested_schema)


class Prepared:
    """A block query prepared once and run on each block of an object: parsing, binding and
    planning the query cost ~25 ms of CPU each time, as much as running it on a block of 30,000
    lines. It has a cursor of its own, whose `lines_in` is only ever its own _Lines, so a rebind
    finds the same lines; run() sets them, and drops them after."""

    def __init__(self, sql: str, lines: pa.Table) -> None:
        self.con = duck_connection().cursor()
        self.con.execute("SET TimeZone = 'UTC'")
        self.lines = _Lines(lines)
        self.con.register("lines_in", self.lines)
        self.con.execute("PREPARE block_query AS " + sql)
        self.lines.table = None

    def run(self, lines: pa.Table) -> pa.Table:
        self.lines.table = lines
        try:
            if _SUBMIT is not None:  # straight into Arrow, as a SELECT's to_arrow_table() runs
                return _SUBMIT(self.con, "EXECUTE block_query", None, "arrow", ARROW_BATCH).arrow_table()
            return self.con.sql("EXECUTE block_query").to_arrow_table()  # materialized first: more memory
        finally:
            self.lines.table = None

    def close(self) -> None:
        self.con.close()


class BlockParser:
    """Parses the blocks of one object; W3C formats carry the `#Fields:` layout across blocks."""

    def __init__(self, ctx: ParseContext) -> None:
        self.ctx = ctx
        self.layout: tuple[str, ...] | None = ctx.fmt.default_fields or None
        self._sql: dict[tuple[tuple[str, ...] | None, bool], str] = {}
        self.con = duck_connection()
        self._ran: set[tuple[str, pa.Schema]] = set()
        self._prepared: dict[tuple[str, pa.Schema], Prepared] = {}
        self._proxies = [ipaddress.ip_network(n, strict=False) for n in ctx.trusted_proxies]
        self.min_len = min(shortest_match(ctx.fmt), SHORT_LINE) if ctx.fmt.kind == "regex" else 1
        # the compiled fast path, where it is built and the format's regex has a shape it runs
        self.shape = compile_shape(ctx.fmt.regex or "", ctx.fmt.fields) if ctx.fmt.kind == "regex" and enabled() else None
        self._raw_sql: str | None = None
        self.canon = canon_slots(ctx, self.shape.slots) if self.shape is not None else None

    def close(self) -> None:
        """Drop the prepared queries (their cursors and plans)."""
        for query in self._prepared.values():
            query.close()
        self._prepared.clear()

    def _query(self, table: pa.Table, layout: tuple[str, ...] | None) -> pa.Table:
        if "k_canon" in table.column_names:  # canonical lines skip the query: their columns are built here
            canon = flags(table["k_canon"])
            out = self._query(_rows(table, np.flatnonzero(~canon)).drop_columns(["k_canon"]), layout)
            return pa.concat_tables([out, self._canon_rows(_rows(table, np.flatnonzero(canon)), out.schema)])
        presplit = "c_fast" in table.column_names
        sql = self._sql.get((layout, presplit))
        if sql is None:
            sql = self._sql[layout, presplit] = build_sql(self.ctx, layout, presplit)
        return self._run(table, sql)

    def _canon_rows(self, c: pa.Table, schema: pa.Schema) -> pa.Table:
        """The event columns (`schema`: the query's) of canonical lines, as the C read them: what the
        query gives those lines, with no expression left but the NULLs of empty or `-` fields and
        the url. Built in Arrow, they skip DuckDB's scan and its copy of every string into Arrow
        (about a tenth of a task's CPU, a third of its system time: docs/performance.md)."""
        n, ctx, have = c.num_rows, self.ctx, set(self.ctx.fmt.fields)
        text = pa.string()

        def const(v: str | None) -> pa.Array:
            return pa.nulls(n, text) if v is None else pa.repeat(scalar(v, text), n)

        def raw(name: str, empty: bool = False) -> pa.Array:
            """NULLIF(NULLIF(x, ''), '-') (`empty`: coalesce(that, '')), decided on the 16-byte views
            (length, then the first byte) before the one copy of the strings."""
            if name not in have:
                return const("" if empty else None)
            a = c[f"c_{name}"].combine_chunks()
            words = _view_array(a).view(np.int32).reshape(-1, 4)  # length, then the first bytes
            gone = (words[:, 0] == 0) | ((words[:, 0] == 1) & ((words[:, 1] & 0xFF) == ord("-")))
            if a.null_count:
                gone |= ~present(a)
            if empty:  # an empty string: a zero view
                words = words.copy()
                words[gone] = 0
                return _with_views(a, words).cast(text)
            return _with_views(a, words, pa.py_buffer(np.packbits(~gone, bitorder="little"))).cast(text)

        def target() -> pa.Array:
            """The target, or the path where the query is empty (`/a?`): picked among the views,
            which all point into the block (canonical lines are fast lines)."""
            path, full = c["k_path"].combine_chunks(), c["c_target"].combine_chunks()
            no_query = ~present(c["k_query"])
            return _with_views(full, np.where(no_query, _view_array(path), _view_array(full))).cast(text)

        path, query = c["k_path"].cast(text), c["k_query"].cast(text)
        cols = [c["k_event_id"], c["k_ts"], const(ctx.default_site or ""), const(ctx.default_host or ""),
                c["c_method"].cast(text), path, query,
                pc.binary_join_element_wise(scalar(f"{ctx.scheme}://{ctx.default_host}", text), target(), scalar("")),
                c["k_status"], c["k_bytes"], pa.nulls(n, pa.float64()), raw("client_ip"),
                raw("user_agent", empty=True), raw("referer"), const(None), const(ctx.source_object), c["line_number"],
                const(None)]
        return pa.Table.from_arrays([col.cast(f.type) for col, f in zip(cols, schema, strict=True)], schema=schema)

    def _run(self, table: pa.Table, sql: str) -> pa.Table:
        # several record batches, so DuckDB spreads a registered table over its threads (one batch
        # = one thread); a prepared query's stand-in stream is scanned on one (docs/performance.md)
        lines = pa.Table.from_batches(table.to_batches(max_chunksize=SCAN_ROWS), table.schema)
        key = (sql, table.schema)
        query = self._prepared.get(key)
        if query is None and key in self._ran:  # the second block of this shape: prepare the query
            query = self._prepared[key] = Prepared(sql, lines)
        if query is not None:
            return query.run(lines)
        self._ran.add(key)
        self.con.register("lines_in", lines)
        try:
            return self.con.sql(sql).to_arrow_table()
        finally:
            self.con.unregister("lines_in")

    def parse(self, block: Lines) -> ParsedBlock:
        n = len(block.text)
        stats = ParseStats(lines_read=n, invalid_utf8=block.repaired)
        nums = from_numpy(np.arange(block.first_line, block.first_line + n, dtype=np.int64))
        fmt = self.ctx.fmt
        pre = None  # lines decided without the query
        if fmt.kind == "csv":
            lines = block.text.to_pylist()
            tbl, headers = _csv_table(lines, block.first_line, fmt)
            stats.skipped[HEADER] += headers
            outs = [self._query(tbl, None)]
        elif fmt.kind == "w3c":
            outs = self._w3c(block, nums, stats)
        else:
            # Lines too short for the format are decided without a query (blank, or no match), so
            # a flood of empty or two-byte lines costs a numpy pass, not a parse per line.
            short = block.lengths < self.min_len
            keep = None
            if short.any():
                pre = self._short_lines(block, np.flatnonzero(short), stats)
                keep = np.flatnonzero(~short)
                nums, text = nums.take(from_numpy(keep)), block.lines(keep)
            else:
                text = block.text
            cols = {"line_number": nums, "line": text}
            if self.shape is not None and not block.repaired:
                cols |= self._fast_fields(block, keep, nums)
            outs = [self._query(pa.table(cols), None)]
        outs = [o for o in outs if o.num_rows] or outs[:1]
        out = pa.concat_tables(outs) if len(outs) > 1 else outs[0]
        if self.ctx.forwarded:
            out = with_forwarded_clients(out, self._proxies)
        out = with_invalid_hosts(out)
        # the block's bytes are only read again for quarantine rows: without any, they are freed now
        source = block if pre is not None or out["reason"].null_count < out.num_rows else None
        return ParsedBlock(lambda: self._split(out, source, stats, pre))

    def _fast_fields(self, block: Lines, keep: np.ndarray | None, nums: pa.Array) -> dict[str, pa.Array]:
        """c_fast, k_event_id and c_<field> for the lines in `keep` (None: all): the compiled fast
        path's fields, string views into the block; the lines it left (a backslash, another shape)
        get the regex's fields from a query on those lines alone, in views into that query's
        strings. With a canon plan, also k_canon and the canonical lines' columns (k_ts, k_status,
        k_bytes, k_path, k_query; k_: no format field has that name)."""
        assert self.shape is not None
        starts, lengths = (block.starts, block.lengths) if keep is None else (block.starts[keep], block.lengths[keep])
        split = request_presplit(self.ctx.fmt)
        fast, views, valid, ints = self.shape.scan_canonical(block.buf, starts, lengths, _METHOD_TABLE if split else None,
                                                             self.canon)
        slow = np.flatnonzero(~fast)
        raw = None
        if len(slow):
            if self._raw_sql is None:
                self._raw_sql = ("WITH l AS (SELECT * FROM lines_in) "
                                 + regex_fields(self.ctx.fmt.regex or "", self.ctx.fmt.fields, cut=False))
            lines = pa.table({"line_number": nums.take(from_numpy(slow)),
                              "line": block.lines(slow if keep is None else keep[slow])})
            raw = self._run(lines, self._raw_sql).sort_by("line_number")
        cols = {"c_fast": from_numpy(fast),
                "k_event_id": event_ids(block.buf, starts, lengths, to_numpy(nums), self.ctx.source_object)}
        for k, name in enumerate(self.shape.slots):
            buffers = [None, None, pa.py_buffer(block.buf)]
            if raw is not None:
                vals = pc.fill_null(raw[f"f_{name}"], scalar("", raw[f"f_{name}"].type)).combine_chunks().cast(
                    pa.large_string())
                offsets = np.frombuffer(vals.buffers()[1], np.int64, len(vals) + 1, vals.offset * 8)
                data = vals.buffers()[2] or pa.py_buffer(b"")
                lens = np.diff(offsets)
                patch = _views(np.frombuffer(data, np.uint8), offsets[:-1], lens)
                patch.view(np.int32)[lens > 12, 2] = 1  # long strings point into buffer 1: the query's
                views[k, slow] = patch
                buffers.append(data)
            buffers[1] = pa.py_buffer(views[k])
            cols[f"c_{name}"] = pa.Array.from_buffers(pa.string_view(), len(fast), buffers)
        canon = len(ints) > 0
        # the view slots after the fields, and the row of `valid` saying where each is present
        # (method and target: on fast lines; the query: where there is one; the path: no NULLs)
        extra = [("c_method", 0), ("c_target", 1), ("k_path", None), ("k_query", 2)][: 4 if canon else 2 if split else 0]
        for k, (name, row) in enumerate(extra):
            bits = None if row is None else pa.py_buffer(np.packbits(valid[row], bitorder="little"))
            cols[name] = pa.Array.from_buffers(pa.string_view(), len(fast), [bits, pa.py_buffer(views[len(self.shape.slots) + k]),
                                                                            pa.py_buffer(block.buf)])
        if canon:
            n = len(fast)
            cols["k_canon"] = from_numpy(valid[4] & (lengths <= self.ctx.max_line_bytes))
            cols["k_ts"] = pa.Array.from_buffers(pa.timestamp("us", "UTC"), n, [None, pa.py_buffer(ints[0])])
            cols["k_status"] = from_numpy(ints[1].astype(np.int32))
            cols["k_bytes"] = pa.Array.from_buffers(pa.int64(), n, [pa.py_buffer(np.packbits(valid[3], bitorder="little")),
                                                                    pa.py_buffer(ints[2])])
        return cols

    def _short_lines(self, block: Lines, rows: np.ndarray, stats: ParseStats) -> pa.Table | None:
        """Lines shorter than the format's shortest match: blank ones counted, the rest quarantined
        as not matching (line_number, reason, host rows, as the query's bad rows are)."""
        a = np.frombuffer(block.buf, np.uint8)
        lengths = block.lengths[rows]
        k = np.arange(int(lengths.max()) if len(rows) else 0)  # a two-byte flood looks at one byte a line
        if len(a) and len(k):
            picked = a[np.minimum(block.starts[rows, None] + k, len(a) - 1)]
            blank = np.all(~(k < lengths[:, None]) | _WHITESPACE[picked], axis=1)
        else:
            blank = np.ones(len(rows), bool)
        stats.skipped[BLANK] += int(blank.sum())
        bad = rows[~blank]
        if not len(bad):
            return None
        return pa.table({"line_number": from_numpy((bad + block.first_line).astype(np.int64)),
                         "reason": pa.repeat(scalar(f"does not match format {self.ctx.fmt.id}"), len(bad)),
                         "host": pa.nulls(len(bad), pa.string())})

    def _w3c(self, block: Lines, nums: pa.Array, stats: ParseStats) -> list[pa.Table]:
        """Directive lines (`#...`) are counted as headers; `#Fields:` sets the columns after it."""
        a = np.frombuffer(block.buf, np.uint8)
        firsts = a[np.minimum(block.starts, max(len(a) - 1, 0))] if len(a) else np.zeros(0, np.uint8)
        marks = np.flatnonzero((block.lengths > 0) & (firsts == ord("#"))).tolist()
        outs, start = [], 0
        for pos in [*marks, len(block.text)]:
            if pos > start:
                tbl = pa.table({"line_number": nums[start:pos], "line": block.text[start:pos]})
                outs.append(self._query(tbl, self.layout))
            if pos < len(block.text):
                line = block.text[pos].as_py()
                if line.startswith("#Fields:"):
                    self.layout = tuple(line[len("#Fields:") :].split())
                stats.skipped[HEADER] += 1
            start = pos + 1
        if not outs:
            outs.append(self._query(pa.table({"line_number": nums[:0], "line": block.text[:0]}), self.layout))
        return outs

    def _split(self, out: pa.Table, block: Lines | None, stats: ParseStats,
               pre: pa.Table | None = None) -> tuple[pa.Table, pa.Table, ParseStats]:
        reason = out["reason"]
        ln = to_numpy(out["line_number"])
        # a query's rows come in line order, but for canonical lines (after the query's rows)
        order = None if len(ln) < 2 or bool(np.all(ln[1:] > ln[:-1])) else np.argsort(ln, kind="stable")
        if reason.null_count == len(reason):  # the usual block: every line an event, no copy
            events, bad = out.drop_columns(["reason"]), out.slice(0, 0).select(["line_number", "reason", "host"])
            if order is not None:
                events = events.take(from_numpy(order))
        else:
            good = pc.is_null(reason)
            if order is None:
                events = out.filter(good).drop_columns(["reason"])
            else:  # the events in line order, in one copy
                events = out.drop_columns(["reason"]).take(from_numpy(order[flags(good)[order]]))
            bad = out.filter(pc.invert(good)).select(["line_number", "reason", "host"])
        if pre is not None:
            bad = pa.concat_tables([bad, pre], promote_options="permissive")
        if bad.num_rows:
            unknown = bad.filter(pc.is_in(bad["reason"], strings([UNKNOWN_HOST, OTHER_HOST])))
            for r in pc.value_counts(unknown["host"]).to_pylist() if unknown.num_rows else ():
                stats.unknown_hosts[r["values"]] += r["counts"]
            skip = pc.is_in(bad["reason"], strings(SKIP_REASONS))
            for r in pc.value_counts(bad.filter(skip)["reason"]).to_pylist():
                stats.skipped[r["values"]] += r["counts"]
            bad = bad.filter(pc.invert(skip))
            if len(bad) > 1:
                bad = bad.sort_by("line_number")
            for r in pc.value_counts(bad["reason"]).to_pylist():
                stats.reasons[r["values"]] += r["counts"]
        stats.parsed = events.num_rows
        stats.quarantined = bad.num_rows
        return events, self._quarantine_rows(bad, block), stats

    def _quarantine_rows(self, bad: pa.Table, block: Lines | None) -> pa.Table:
        """`bad` as quarantine rows, each with its line's exact bytes (`block`: None when `bad` is empty)."""
        nums = bad["line_number"]
        raw = block.raw_many(to_numpy(nums) - block.first_line) if block is not None else pa.nulls(0, pa.binary())
        k = len(raw)
        return pa.table(
            {
                "object_id": pa.repeat(scalar(self.ctx.object_id), k),
                "source_object": pa.repeat(scalar(self.ctx.source_object), k),
                "line_number": nums.cast(pa.int64()),
                "reason": bad["reason"].cast(pa.string()),
                "raw": raw,
            },
            schema=QUARANTINE_SCHEMA,
        )


def blank_lines(data: bytes) -> int | None:
    """How many lines `data` holds when each is blank as the parser counts blank lines (nothing but
    spaces, tabs, vertical tabs, form feeds and a CR), else None."""
    if data.translate(None, b" \t\v\f\r\n"):
        return None
    return data.count(b"\n") + (bool(data) and not data.endswith(b"\n"))


def sample_lines(head: bytes) -> list[str]:
    """The whole lines at the start of an object, for detection (a cut last line is dropped)."""
    text = head.decode("utf-8", errors="replace")
    lines = text.split("\n")
    return lines[:-1] if len(lines) > 1 else lines


def sample_match(head: bytes, fmt: LogFormat) -> tuple[int, int]:
    """(non-blank lines, lines with the format's structure) among the first lines of an object.

    Runs the real parser on them, so "matches" means what parsing means, for every kind.
    """
    cut = head.rfind(b"\n")
    head = head[: cut + 1] if cut >= 0 else head
    if not head:
        return 0, 0
    ctx = ParseContext("sample", "sample", fmt, "sample", "sample", "https", {}, 1 << 30)
    parser = BlockParser(ctx)
    try:
        st = parser.parse(frame(head, 1)).stats
    finally:
        parser.close()
    lines = st.lines_read - sum(st.skipped.values())
    return lines, lines - st.reasons.get(f"does not match format {fmt.id}", 0)


def parse_blocks(blocks: Iterable[bytes], ctx: ParseContext, block_bytes: int,
                 block_lines: int = BLOCK_LINES) -> Iterator[ParsedBlock]:
    """Parse decompressed bytes; yields events and quarantine rows per block, in line order."""
    lean_memory_pool()
    parser = BlockParser(ctx)  # its DuckDB connection is the thread's, reused by the next object
    # reading, decompressing and framing in one thread, the DuckDB parse in this one
    cut = cut_blocks(blocks, block_bytes, ctx.max_line_bytes)
    try:
        for lines in in_background(_framed(b for block in cut for b in by_lines(block, block_lines))):
            yield parser.parse(lines)
    finally:
        parser.close()


def _framed(blocks: Iterable[bytes | memoryview]) -> Iterator[Lines]:
    next_line = 1
    for buf in blocks:
        lines = frame(buf, next_line)
        next_line += len(lines.text)
        yield lines
