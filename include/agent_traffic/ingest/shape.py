"""A regex format's shape as a program for the compiled fast path (`_clf.c`), and running it.

A format's regex is recognised, not listed: Python's own regex parser reads it, and a pattern
made only of literals, greedy runs over ASCII-defined classes (`\\S+`, `[^\\]]+`, `\\d{3}`),
named groups, alternatives, optional groups and `^`/`$` compiles; anything else (lazy or
possessive repeats, backreferences, lookarounds, flags, `.`, non-ASCII classes, POSIX classes)
does not, and that format keeps the DuckDB regex path. The NCSA family (combined, nginx_main,
common, vhost_combined) and ALB compile.

The program never backtracks: it follows the first path a leftmost-first, greedy matcher (RE2,
as DuckDB runs it) would try, choosing an alternative or an optional group by the next byte only
when the others cannot start there. When that path reaches the end, its captures are RE2's;
when it fails anywhere, the line is not "fast" and goes to the regex in DuckDB. Lines with a
backslash are never fast (quoted fields' `\\.` escapes are left to the regex), so branches that
start with a backslash are dropped. Classes are byte tables that hold all or none of the bytes
>= 0x80, so on valid UTF-8 (blocks with invalid UTF-8 take the regex path) a byte run is a
character run; bounded repeats count characters.

AGENT_TRAFFIC_PURE_PARSE=1 turns the fast path off (parity tests, or to rule it out).
"""

from __future__ import annotations

import os
import re
import re._constants as C  # noqa: N812 - the stdlib parser's node names
import re._parser as sre
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

ABI = 5  # the extension's functions and their arguments: a stale build (before `make setup` rebuilt it) is not used
try:
    from agent_traffic.ingest import _clf
except ImportError:  # built by `pip install -e .` where a C compiler is; else the regex path runs
    _clf = None
if getattr(_clf, "ABI", None) != ABI:
    _clf = None

PURE_ENV = "AGENT_TRAFFIC_PURE_PARSE"
LIT, RUN, SAVE_START, SAVE_END, DISPATCH, JMP, FAIL, END, ACCEPT = range(9)
MAX_SLOTS = 64
#: RE2's classes (ASCII), not Python's Unicode ones
_CATEGORY = {
    C.CATEGORY_DIGIT: frozenset(range(48, 58)),
    C.CATEGORY_SPACE: frozenset(b"\t\n\f\r "),
    C.CATEGORY_WORD: frozenset(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_"),
}
_NOT_CATEGORY = {C.CATEGORY_NOT_DIGIT: C.CATEGORY_DIGIT, C.CATEGORY_NOT_SPACE: C.CATEGORY_SPACE,
                 C.CATEGORY_NOT_WORD: C.CATEGORY_WORD}
_ALL = frozenset(range(256))
_HIGH = frozenset(range(128, 256))
_FLAGS = C.SRE_FLAG_IGNORECASE | C.SRE_FLAG_MULTILINE | C.SRE_FLAG_DOTALL | C.SRE_FLAG_VERBOSE


class Unsupported(Exception):
    """The regex uses syntax the fast path does not run: the format keeps the regex path."""


def enabled() -> bool:
    """The extension is built and not switched off."""
    return _clf is not None and os.environ.get(PURE_ENV, "") not in ("1", "true", "yes")


@dataclass(frozen=True)
class Shape:
    """A compiled regex: instructions (4 x int32 each), 256-byte class tables, literal bytes, and
    the raw field each capture slot fills."""

    program: bytes
    classes: bytes
    pool: bytes
    slots: tuple[str, ...]

    def scan(self, buf: bytes | memoryview, starts: np.ndarray, lengths: np.ndarray,
             method_token: bytes | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(fast per line, Arrow string views (slot, line, 16 bytes) into `buf`, empty where not fast;
        with `method_token` (a class table) two more slots, the request's method and target as
        parse.py's query splits it, and whether each is present (2, line))."""
        fast, views, valid, _ = self.scan_canonical(buf, starts, lengths, method_token)
        return fast, views, valid

    def scan_canonical(self, buf: bytes | memoryview, starts: np.ndarray, lengths: np.ndarray,
                       method_token: bytes | None = None, canon: tuple[int, int, int, int] | None = None,
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """scan(), and with `canon` (the slots of time, status, bytes and client_ip, -1 where the
        format has none; needs `method_token`) two more view slots, the target's path and query,
        ints (3, line): time (epoch us), status, bytes, and three more rows of `valid`: query and
        bytes present, the line canonical (its columns read with certainty: parse.py's query skips it)."""
        if _clf is None:
            raise RuntimeError("the compiled fast path is not built")
        n = len(starts)
        req = self.slots.index("request") if method_token is not None and "request" in self.slots else -1
        if req < 0:
            canon = None
        extra = (4 if canon else 2) if req >= 0 else 0
        fast = np.zeros(n, np.uint8)
        views = np.empty((len(self.slots) + extra, n, 16), np.uint8)
        valid = np.zeros(((5 if canon else 2) if req >= 0 else 0, n), np.uint8)
        ints = np.zeros((3 if canon else 0, n), np.int64)
        _clf.scan(buf, np.ascontiguousarray(starts, np.int64), np.ascontiguousarray(lengths, np.int64),
                  self.program, self.classes, self.pool, len(self.slots), fast, views, req, method_token or b"", valid,
                  np.array(canon or (), np.int32).tobytes(), ints)
        return fast.view(np.bool_), views, valid.view(np.bool_), ints

    def columns(self, buf: bytes | memoryview, starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, dict[str, pa.Array]]:
        """(fast per line, a string_view array per field pointing into `buf`)."""
        fast, views, _ = self.scan(buf, starts, lengths)
        data = pa.py_buffer(buf)
        return fast, {name: pa.Array.from_buffers(pa.string_view(), len(fast), [None, pa.py_buffer(views[k]), data])
                      for k, name in enumerate(self.slots)}


def count_lines(buf: bytes | memoryview) -> int:
    """The block's lines: its newlines, plus one for a last line without one."""
    if not enabled():
        a = np.frombuffer(buf, np.uint8)
        return int(np.count_nonzero(a == 10)) + (len(a) > 0 and a[-1] != 10)
    return _clf.count_lines(buf)


def line_spans(buf: bytes | memoryview) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each line's offset and length in the block, terminator (`\\n` or `\\r\\n`) excluded, and an
    Arrow string view (16 bytes) pointing at it: one pass in C (numpy took four, and a fancy
    index for the views' prefixes; `parse.frame` keeps that path where the extension is not)."""
    n = _clf.count_lines(buf)
    starts, lengths, views = np.empty(n, np.int64), np.empty(n, np.int64), np.empty((n, 16), np.uint8)
    _clf.frame(buf, starts, lengths, views)
    return starts, lengths, views


def event_ids(buf: bytes | memoryview, starts: np.ndarray, lengths: np.ndarray, line_numbers: np.ndarray,
              source_object: str) -> pa.Array:
    """The query's event ids, md5(source_object || ':' || line_number || ':' || line) in hex, of
    lines that are the block's bytes as they stand (valid UTF-8): computed in C, with the GIL
    released, instead of by a concatenation and md5() per line in DuckDB."""
    if _clf is None:
        raise RuntimeError("the compiled fast path is not built")
    n = len(starts)
    out = np.empty(32 * n, np.uint8)
    _clf.event_ids(buf, np.ascontiguousarray(starts, np.int64), np.ascontiguousarray(lengths, np.int64),
                   np.ascontiguousarray(line_numbers, np.int64), source_object.encode() + b":", out)
    offsets = np.arange(0, 32 * n + 1, 32, dtype=np.int64)
    return pa.Array.from_buffers(pa.large_string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(out)])



def ipv6_packed(texts: pa.Array) -> tuple[np.ndarray, np.ndarray] | None:
    """The 16 bytes of each value that is plain IPv6 text (S16) and the mask of those values, read
    by inet_pton in C for the verifier (crawlers come from thousands of IPv6 addresses a day);
    every other value (IPv4, brackets, spaces, zone ids, non-ASCII) is left to the caller. None
    where the extension is not built."""
    if _clf is None:
        return None
    vals = texts.cast(pa.large_string())
    n = len(vals)
    offsets = np.frombuffer(vals.buffers()[1], np.int64, n + 1, 8 * vals.offset) if n else np.zeros(1, np.int64)
    data = vals.buffers()[2] or b""
    out, ok = np.zeros(n, "S16"), np.zeros(n, np.uint8)
    _clf.ipv6(data, np.ascontiguousarray(offsets), out.view(np.uint8), ok)
    return out, ok.view(bool)

def class_table(regex: str) -> bytes:
    """The 256-byte table of a one-class pattern such as `[a-z]+` (RE2's meaning of its classes)."""
    items = list(sre.parse(regex))
    members = _single_class(list(items[0][1][2])) if len(items) == 1 and items[0][0] == C.MAX_REPEAT else None
    if members is None:
        raise ValueError(f"{regex!r} is not one class")
    return bytes(int(b in members) for b in range(256))


def compile_shape(regex: str, fields: tuple[str, ...]) -> Shape | None:
    """The regex as a fast-path program, or None when it uses syntax the program cannot run."""
    if "[:" in regex or "{," in regex:  # POSIX classes, `{,n}`: Python and RE2 read them differently
        return None
    try:
        tree = sre.parse(regex)
        if tree.state.flags & _FLAGS:
            return None
        return _Compiler(tree.state.groupdict, fields).run(list(tree))
    except (Unsupported, re.error, RecursionError, ValueError):  # ValueError: a lone surrogate
        return None


class _Compiler:
    def __init__(self, groups: dict[str, int], fields: tuple[str, ...]) -> None:
        names = {gid: name for name, gid in groups.items()}
        self.slot_of = {gid: fields.index(name) for gid, name in names.items() if name in fields}
        if len(self.slot_of) != len(fields) or len(fields) > MAX_SLOTS:
            raise Unsupported("every raw field must be a group")
        self.fields = fields
        self.code: list[list[int]] = []
        self.classes: list[frozenset[int]] = []
        self.pool = bytearray()

    def run(self, items: list) -> Shape:
        if items and items[0] == (C.AT, C.AT_BEGINNING):
            items = items[1:]
        self.seq(items)
        self.emit(ACCEPT)
        program = np.array(self.code, np.int32).tobytes()
        tables = b"".join(bytes(int(b in cls) for b in range(256)) for cls in self.classes)
        return Shape(program, tables, bytes(self.pool), self.fields)

    def emit(self, op: int, a: int = 0, b: int = 0, c: int = 0) -> int:
        self.code.append([op, a, b, c])
        return len(self.code) - 1

    def cls(self, members: frozenset[int]) -> int:
        if members not in self.classes:
            self.classes.append(members)
        return self.classes.index(members)

    def seq(self, items: list) -> None:
        for op, av in items:
            self.item(op, av)

    def item(self, op: object, av: object) -> None:
        if op == C.LITERAL:
            data = chr(av).encode()  # type: ignore[arg-type]
            self.emit(LIT, len(self.pool), len(data))
            self.pool += data
        elif op == C.AT and av == C.AT_END:
            self.emit(END)
        elif op == C.SUBPATTERN:
            gid, add, dele, sub = av  # type: ignore[misc]
            if add or dele:
                raise Unsupported("inline flags")
            slot = self.slot_of.get(gid) if gid else None
            if slot is not None:
                self.emit(SAVE_START, slot)
            self.seq(list(sub))
            if slot is not None:
                self.emit(SAVE_END, slot)
        elif op == C.MAX_REPEAT:
            lo, hi, sub = av  # type: ignore[misc]
            single = _single_class(list(sub))
            if single is not None:
                self.emit(RUN, self.cls(single), lo, -1 if hi == C.MAXREPEAT else hi)
            elif (lo, hi) == (0, 1):
                self.optional(list(sub))
            else:
                raise Unsupported("a repeat of more than one class")
        elif op == C.BRANCH:
            self.branch([list(b) for b in _no_backslash(av[1])])  # type: ignore[index]
        else:
            members = _class(op, av)
            if members is None:
                raise Unsupported(str(op))
            self.emit(RUN, self.cls(members), 1, 1)

    def optional(self, sub: list) -> None:
        """`(?:X)?`: X when the next byte can start it (greedy: tried first), else skipped."""
        first, empty = _first(sub)
        if empty:
            raise Unsupported("an optional group that can match nothing")
        at = self.emit(DISPATCH, self.cls(first), len(self.code) + 1, 0)
        self.seq(sub)
        self.code[at][3] = len(self.code)

    def branch(self, alts: list[list]) -> None:
        """The first alternative whose first byte fits; if it then fails, the line is not fast."""
        if not alts:
            self.emit(FAIL)
            return
        jumps = []
        for alt in alts:
            first, empty = _first(alt)
            if empty:
                raise Unsupported("an alternative that can match nothing")
            at = self.emit(DISPATCH, self.cls(first), len(self.code) + 1, 0)
            self.seq(alt)
            jumps.append(self.emit(JMP))
            self.code[at][3] = len(self.code)
        self.emit(FAIL)
        for j in jumps:
            self.code[j][1] = len(self.code)


def _no_backslash(alts: list) -> list:
    """Alternatives that can match in a line without a backslash."""
    return [a for a in alts if not (len(a) and a[0] == (C.LITERAL, 92))]


def _class(op: object, av: object) -> frozenset[int] | None:
    """The bytes a one-character item matches (all or none of 0x80-0xFF), or None."""
    if op == C.LITERAL:
        return frozenset([av]) if av < 128 else None  # type: ignore[operator, list-item]
    if op == C.NOT_LITERAL:
        return _ALL - {av} if av < 128 else None  # type: ignore[operator]
    if op != C.IN:
        return None
    members: set[int] = set()
    negate = False
    for k, v in av:  # type: ignore[attr-defined]
        if k == C.NEGATE:
            negate = True
        elif k == C.LITERAL and v < 128:
            members.add(v)
        elif k == C.RANGE and v[1] < 128:
            members.update(range(v[0], v[1] + 1))
        elif k == C.CATEGORY and v in _CATEGORY:
            members |= _CATEGORY[v]
        elif k == C.CATEGORY and v in _NOT_CATEGORY:
            members |= _ALL - _CATEGORY[_NOT_CATEGORY[v]]
        else:
            return None
    return _ALL - frozenset(members) if negate else frozenset(members)


def _single_class(sub: list) -> frozenset[int] | None:
    """The class of a repeated body that is one character wide (alternatives of classes merged)."""
    if len(sub) != 1:
        return None
    op, av = sub[0]
    if op == C.BRANCH:
        alts = _no_backslash(av[1])
        classes = [_single_class(list(a)) for a in alts]
        if not alts or any(c is None for c in classes):
            return None
        return frozenset().union(*classes)  # type: ignore[arg-type]
    if op == C.SUBPATTERN and not av[0]:  # a group that captures nothing
        return _single_class(list(av[3])) if not (av[1] or av[2]) else None
    return _class(op, av)


def _first(items: list) -> tuple[frozenset[int], bool]:
    """(the bytes a match of `items` can start with, whether it can match nothing)."""
    first: set[int] = set()
    for op, av in items:
        if op == C.LITERAL:
            return frozenset(first | {chr(av).encode()[0]}), False
        if op == C.AT:
            if av != C.AT_END:
                raise Unsupported("an assertion")
            continue  # matches nothing: what follows starts at the same place (the line's end)
        if op == C.SUBPATTERN:
            f, empty = _first(list(av[3]))
        elif op == C.MAX_REPEAT:
            lo, _, sub = av
            f, empty = _first(list(sub))
            empty = empty or lo == 0
        elif op == C.BRANCH:
            parts = [_first(list(a)) for a in _no_backslash(av[1])]
            f = frozenset().union(*(p[0] for p in parts))
            empty = any(p[1] for p in parts)
        else:
            c = _class(op, av)
            if c is None:
                raise Unsupported(str(op))
            f, empty = c, False
        first |= f
        if not empty:
            return frozenset(first), False
    return frozenset(first), True
