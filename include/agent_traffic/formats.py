"""Log-format definitions (data files, extendable in the config) and `format: auto` detection.

A format says how to get *raw fields* (strings named like the canonical event: client_ip, time,
request, ...) out of one line; `parse.py` turns raw fields into canonical events the same way
for every format. Four kinds cover the common logs:

- `regex`: an RE2 pattern with named groups (nginx, Apache, ALB, any line-oriented log);
- `csv`:   a header line and comma-separated values (the Scrunch backfill CSV);
- `json`:  one JSON object per line; `columns` maps field paths (`a.b[0]`) to raw fields;
- `w3c`:   W3C extended (CloudFront, IIS): the `#Fields:` directive names the columns.

Detection runs in DuckDB, the engine that parses, so a pattern or path means the same in both.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa
import yaml

from agent_traffic.arrow_values import strings
from agent_traffic.errors import ConfigError

if TYPE_CHECKING:
    import duckdb

RAW_FIELDS = (
    "client_ip", "time", "request", "method", "target", "path", "query", "url", "scheme", "status",
    "bytes", "referer", "user_agent", "host", "duration", "content_type", "forwarded_for",
)  # fmt: skip
TIME_UNITS = {"s": 1, "ms": 1e3, "us": 1e6, "ns": 1e9}
DECODERS = ("backslash", "url", "plus")
KINDS = ("regex", "csv", "json", "w3c")
TARGET_FIELDS = ("request", "target", "path", "url")  # one of these gives the request target
MAX_ONEPASS_GROUPS = 4  # RE2 extracts up to 4 groups with its fast one-pass matcher
SAMPLE_LINES = 100


@dataclass(frozen=True)
class TimeSpec:
    fields: tuple[str, ...] = ("time",)  # joined with a space (W3C `date` + `time`)
    format: str | None = None  # strptime format; None: epoch by magnitude, RFC 3339, or CLF
    unit: str | None = None  # epoch unit when the format knows it


@dataclass(frozen=True)
class DurationSpec:
    fields: tuple[str, ...] = ("duration",)  # summed (ALB logs three processing times)
    unit: str = "ms"


@dataclass(frozen=True)
class LogFormat:
    id: str
    kind: Literal["regex", "csv", "json", "w3c"]
    description: str = ""
    aliases: tuple[str, ...] = ()
    regex: str | None = None
    header: tuple[str, ...] = ()  # csv: the expected header line
    columns: Mapping[str, str] = field(default_factory=dict)  # column or path -> raw field
    delimiter: str = "\t"  # w3c
    default_fields: tuple[str, ...] = ()  # w3c: columns of lines before any #Fields directive
    timestamp: TimeSpec = TimeSpec()
    duration: DurationSpec | None = None
    decode: Mapping[str, str] = field(default_factory=dict)  # raw field -> backslash|url|plus
    skip_without: str | None = None  # json: lines without this raw field are not requests
    detect: str | None = None
    priority: int = 0

    @property
    def fields(self) -> tuple[str, ...]:
        """Raw field names this format yields, in order (regex group order for regex formats)."""
        if self.kind == "regex":
            return _regex_fields(self.regex or "")
        return tuple(dict.fromkeys(self.columns.values()))

    @property
    def yields_host(self) -> bool:
        """True when lines carry the request host (a host field, or an absolute URL)."""
        return "host" in self.fields or "url" in self.fields

    def sources_of(self, raw: str) -> list[str]:
        """Columns or paths feeding a raw field, in order of preference."""
        return [c for c, r in self.columns.items() if r == raw]

    def with_columns(self, columns: Mapping[str, str], where: str) -> LogFormat:
        """This format with another field mapping (a Fastly customer's own field names)."""
        if self.kind == "regex":
            raise ConfigError(f"{where}: format {self.id!r} is a regex format; `columns` needs a "
                              "json, csv or w3c format")
        d = _as_definition(self) | {"columns": dict(columns)}
        return _build(d, where)


def _as_definition(fmt: LogFormat) -> dict[str, Any]:
    d = dataclasses.asdict(fmt)
    d["timestamp"] = {"field": list(fmt.timestamp.fields), "format": fmt.timestamp.format,
                      "unit": fmt.timestamp.unit}
    d["duration"] = ({"field": list(fmt.duration.fields), "unit": fmt.duration.unit}
                     if fmt.duration else None)
    return d


# ---------------------------------------------------------------------------------------------
# DuckDB

_local = threading.local()
THREADS = min(4, os.cpu_count() or 2)


def duck_connection() -> duckdb.DuckDBPyConnection:
    """This thread's in-memory DuckDB connection (UTC), reused: opening one costs ~25 ms, which
    adds up over thousands of small CDN objects."""
    import duckdb  # here: a process that only reads formats (a delivery task's config) needs no DuckDB

    con = getattr(_local, "con", None)
    if con is None:
        con = _local.con = duckdb.connect(":memory:", config={"threads": THREADS})
        con.execute("SET TimeZone = 'UTC'")
    return con


# ---------------------------------------------------------------------------------------------
# Regex helpers: named groups, and splitting into one-pass batches


def _syntax(regex: str) -> Iterator[tuple[int, str, int]]:
    """(position, character, group depth) of each character that is syntax: not escaped, not in
    a [class]. A group's own parentheses are at the depth outside it."""
    depth, i, in_class = 0, 0, False
    while i < len(regex):
        c = regex[i]
        if c == "\\":
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
            i += 1 if regex[i + 1 : i + 2] == "]" else 2 if regex[i + 1 : i + 3] == "^]" else 0
        else:
            depth -= c == ")"
            yield i, c, depth
            depth += c == "("
        i += 1


def _scan_groups(regex: str) -> Iterable[tuple[int, int, str | None]]:
    """(start, end of the group opener, name or None) for each capturing group, in order."""
    for i, c, _ in _syntax(regex):
        if c == "(":
            m = re.match(r"\(\?P?<([A-Za-z_][A-Za-z0-9_]*)>", regex[i:])
            if m:
                yield i, i + m.end(), m.group(1)
            elif regex[i + 1 : i + 2] != "?":
                yield i, i + 1, None


def group_names(regex: str) -> list[str]:
    return [name for _, _, name in _scan_groups(regex) if name]


@functools.lru_cache(maxsize=1024)
def _regex_fields(regex: str) -> tuple[str, ...]:
    """A regex format's fields, scanned once per pattern (parsing asks for them per block)."""
    return tuple(group_names(regex))


def regex_batches(regex: str) -> list[tuple[str, list[str]]]:
    """The pattern once per batch of at most 4 named groups, every other group non-capturing.

    RE2 extracts up to four groups with its one-pass matcher and falls back to a much slower one
    beyond: two passes of four groups cost about a fifth of one pass of seven.
    """
    groups = list(_scan_groups(regex))
    names = [g[2] for g in groups if g[2]]
    out = []
    for b in range(0, max(len(names), 1), MAX_ONEPASS_GROUPS):
        keep = set(names[b : b + MAX_ONEPASS_GROUPS])
        parts, pos = [], 0
        for start, end, name in groups:
            parts.append(regex[pos:start])
            parts.append(regex[start:end] if name in keep else "(?:")
            pos = end
        parts.append(regex[pos:])
        out.append(("".join(parts), [n for n in names if n in keep]))
    return out


# A quoted field as log formats write it: `"(?:[^"\\]|\\.)*"` (backslash escapes allowed) or
# `"[^"]*"`, captured by a named group or not.
_QUOTED_BODY = "(?:" + re.escape('(?:[^"\\\\]|\\\\.)*') + "|" + re.escape('[^"]*') + ")"
_QUOTED = re.compile('"(?:' + r"\(\?P?<(?P<name>[A-Za-z_][A-Za-z0-9_]*)>" + _QUOTED_BODY + r"\)|" + _QUOTED_BODY + ')"')


@dataclass(frozen=True)
class QuoteSplit:
    """A regex read as pieces between quoted fields, for lines without a backslash.

    In such a line a quoted field holds no `"`, so cutting the line at its double quotes gives
    the quoted fields and the text between them directly; only the short pieces between quotes
    need the regex engine. parse.py uses this when a line has exactly the format's quotes (or
    more, when nothing follows the last quoted field) and every piece matches; other lines take
    the whole regex. Both read the same fields: a test compares them on fuzzed lines.
    """

    pieces: tuple[str, ...]  # the pattern before, between and after the quoted fields
    quoted: tuple[str | None, ...]  # the group each quoted field fills (None: not captured)

    @property
    def open_tail(self) -> bool:
        """Nothing is required after the last quoted field, so later quotes may follow."""
        return self.pieces[-1] == ""

    def pattern(self, i: int) -> str:
        """Piece i anchored to its whole part (the last piece: to the part's start)."""
        return "^(?:" + self.pieces[i] + (")" if i == len(self.pieces) - 1 else ")$")

    def literal(self, i: int) -> str | None:
        """Piece i as plain text, when it has no regex syntax (compared, not matched)."""
        piece = self.pieces[i]
        return piece if re.fullmatch(r"[^\\^$.|?*+()\[\]{}]*", piece) else None


def quote_split(regex: str) -> QuoteSplit | None:
    """The regex's quoted fields and the pieces around them, or None when it cannot be cut.

    Cut only at quoted fields outside any group, only when the pattern is anchored at the start,
    has no alternatives at the top, no inline flags (they would not carry into later pieces) and
    no other double quote.
    """
    if not regex.startswith("^") or re.search(r"\(\?[a-zA-Z-]*[:)]", regex.replace("(?:", "")):
        return None
    cuts: list[tuple[int, int, str | None]] = []
    for i, c, depth in _syntax(regex):
        if depth or (cuts and i < cuts[-1][1]):  # inside a group, or inside the last quoted field
            continue
        if c == "|":  # alternatives: the pieces would not line up
            return None
        if c == '"' and (m := _QUOTED.match(regex, i)):
            cuts.append((i, m.end(), m.group("name")))
    pieces, pos = [], 1
    for start, end, _ in cuts:
        pieces.append(regex[pos:start])
        pos = end
    pieces.append(regex[pos:])
    if not cuts or any('"' in p for p in pieces):
        return None
    return QuoteSplit(tuple(pieces), tuple(name for _, _, name in cuts))


# ---------------------------------------------------------------------------------------------
# JSON paths


def json_path(path: str) -> str:
    """`request.headers.User-Agent[0]` -> `$."request"."headers"."User-Agent"[0]` (DuckDB)."""
    if path.startswith("$"):
        return path
    out = ["$"]
    for part in re.findall(r'"[^"]*"|[^.]+', path):
        key, _, rest = part.partition("[") if not part.startswith('"') else (part, "", "")
        key = key.strip('"')
        if not key:
            raise ValueError(f"bad field path {path!r}")
        out.append('."' + key.replace('"', '\\"') + '"')
        if rest:
            if not re.fullmatch(r"\d+\](\[\d+\])*", rest):
                raise ValueError(f"bad array index in field path {path!r}; write e.g. a.b[0]")
            out.append("[" + rest)
    return "".join(out)


# ---------------------------------------------------------------------------------------------
# Loading and validation


def _names(v: Any, what: str) -> tuple[str, ...]:
    if isinstance(v, str):
        return (v,)
    if isinstance(v, list | tuple) and v and all(isinstance(x, str) for x in v):
        return tuple(v)
    raise ValueError(f"{what} must be a field name or a list of field names")


def _check_regex_re2(regex: str, what: str) -> None:
    import duckdb

    try:
        duckdb.sql("SELECT regexp_matches('', $1)", params=[regex]).fetchall()
    except duckdb.Error as exc:
        raise ValueError(f"{what} is not a valid RE2 pattern: {exc}") from None


def _build(d: Mapping[str, Any], where: str, *, re2: bool = True) -> LogFormat:
    """A format from its definition, checked (`re2`: its patterns compiled by DuckDB's RE2 too)."""
    fid = d.get("id", "?") if isinstance(d, Mapping) else "?"
    try:
        if not isinstance(d, Mapping):
            raise ValueError("each format must be a mapping")
        known = {f.name for f in dataclasses.fields(LogFormat)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown key(s) {unknown}; known: {sorted(known)}")
        kind = d.get("kind")
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {list(KINDS)}, got {kind!r}")
        ts = d.get("timestamp") or {}
        if not isinstance(ts, Mapping):
            raise ValueError("timestamp must be a mapping like {field: time, format: '%d/%b/%Y:%H:%M:%S %z'}")
        if ts.get("unit") and ts["unit"] not in TIME_UNITS:
            raise ValueError(f"timestamp.unit must be one of {list(TIME_UNITS)}")
        dur = d.get("duration")
        if dur is not None and (not isinstance(dur, Mapping) or dur.get("unit") not in TIME_UNITS):
            raise ValueError(f"duration needs a unit, one of {list(TIME_UNITS)}: {{field: duration, unit: s}}")
        columns = d.get("columns") or {}
        if not isinstance(columns, Mapping):
            raise ValueError("columns must be a mapping of column (or JSON path) -> raw field")
        fmt = LogFormat(
            id=str(d["id"]),
            kind=kind,
            description=str(d.get("description") or ""),
            aliases=tuple(d.get("aliases") or ()),
            regex=d.get("regex"),
            header=tuple(d.get("header") or ()),
            columns={str(k): str(v) for k, v in columns.items()},
            delimiter=str(d.get("delimiter") or "\t"),
            default_fields=tuple(d.get("default_fields") or ()),
            timestamp=TimeSpec(_names(ts.get("field", "time"), "timestamp.field"), ts.get("format"), ts.get("unit")),
            duration=DurationSpec(_names(dur.get("field", "duration"), "duration.field"), dur["unit"]) if dur else None,
            decode=dict(d.get("decode") or {}),
            skip_without=d.get("skip_without"),
            detect=d.get("detect"),
            priority=int(d.get("priority") or 0),
        )
        _validate(fmt, re2=re2)
        return fmt
    except (KeyError, ValueError, TypeError) as exc:
        msg = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
        raise ConfigError(f"{where}: format {fid!r}: {msg}") from None


def _validate(fmt: LogFormat, *, re2: bool = True) -> None:
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", fmt.id):
        raise ValueError("id must be lower case letters, digits, '_' or '-'")
    if fmt.kind == "regex":
        if not fmt.regex:
            raise ValueError("a regex format needs `regex` (an RE2 pattern with named groups)")
        if re2:
            _check_regex_re2(fmt.regex, "regex")
        if not group_names(fmt.regex):
            raise ValueError("the regex has no named group like (?P<status>\\d{3})")
        dupes = {n for n in group_names(fmt.regex) if group_names(fmt.regex).count(n) > 1}
        if dupes:
            raise ValueError(f"group names must be unique; repeated: {sorted(dupes)}")
    elif not fmt.columns:
        raise ValueError(f"a {fmt.kind} format needs `columns` (column or path -> raw field)")
    if fmt.kind == "csv":
        if not fmt.header:
            raise ValueError("a csv format needs `header` (the column names, in order)")
        missing = sorted(set(fmt.columns) - set(fmt.header))
        if missing:
            raise ValueError(f"columns {missing} are not in the header {list(fmt.header)}")
    if fmt.kind == "json":
        for path in fmt.columns:
            json_path(path)
    if fmt.kind == "w3c" and len(fmt.delimiter) != 1:
        raise ValueError("delimiter must be one character (a tab for CloudFront, a space for IIS)")
    yielded = set(fmt.fields)
    referenced = set(fmt.timestamp.fields) | set(fmt.duration.fields if fmt.duration else ())
    extra = yielded - set(RAW_FIELDS) - referenced
    if extra:
        raise ValueError(
            f"unknown raw field name(s) {sorted(extra)}; use one of {list(RAW_FIELDS)}, or a name "
            "that timestamp.field or duration.field uses"
        )
    for what, names in (("timestamp.field", fmt.timestamp.fields),
                        ("duration.field", fmt.duration.fields if fmt.duration else ())):
        missing = sorted(set(names) - yielded)
        if missing:
            raise ValueError(f"{what} names {missing}, which the format does not yield")
    if "status" not in yielded or not yielded & set(TARGET_FIELDS) or not yielded & {"method", "request"}:
        raise ValueError(f"a format must yield `status`, `method` (or `request`) and one of {list(TARGET_FIELDS)}")
    for raw, how in fmt.decode.items():
        if raw not in yielded or how not in DECODERS:
            raise ValueError(f"decode: {raw!r}: must be a yielded field decoded by one of {list(DECODERS)}")
    if fmt.skip_without and fmt.skip_without not in yielded:
        raise ValueError(f"skip_without: {fmt.skip_without!r} is not a yielded field")
    if fmt.detect and re2:
        _check_regex_re2(fmt.detect, "detect")


def load_formats(extra: Sequence[Mapping[str, Any]] = ()) -> dict[str, LogFormat]:
    """The packaged formats, then the user's (a user format with the same id replaces ours).

    Aliases (e.g. `nginx_combined` for `combined`) are keys too, mapping to the same format.
    """
    by_id = dict(_packaged())
    for i, f in enumerate(extra):
        fmt = _build(f, f"config formats[{i}]")
        by_id[fmt.id] = fmt
    out = dict(by_id)
    for fmt in by_id.values():
        for alias in fmt.aliases:
            out.setdefault(alias, fmt)
    return out


def _packaged_definitions() -> list[dict[str, Any]]:
    text = resources.files("agent_traffic").joinpath("data/formats.yaml").read_text("utf-8")
    return yaml.safe_load(text)["formats"]


@functools.cache
def _packaged() -> dict[str, LogFormat]:
    """The formats the package ships, checked but for compiling their patterns, which the tests
    do (`test_formats.py`): every process loading a config did it, 0.04 s of a delivery task's CPU
    with DuckDB's import. A user's formats are compiled when the config is read."""
    return {f["id"]: _build(f, "formats.yaml", re2=False) for f in _packaged_definitions()}


def validate_definitions(defs: Sequence[Any]) -> None:
    """Check user format definitions (the config's `formats:`); raises ValueError naming one."""
    for i, d in enumerate(defs):
        try:
            _build(d, f"formats[{i}]")
        except ConfigError as exc:
            raise ValueError(str(exc)) from None


# ---------------------------------------------------------------------------------------------
# Detection


def _q(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _score_sql(fmt: LogFormat, i: int) -> tuple[str, str, str]:
    """(inner column, hit expression, fields-resolved expression) for format number i, over the
    sample table `s` (one line per row)."""
    if fmt.kind == "json":
        paths = list(dict.fromkeys(fmt.columns))
        plist = "[" + ", ".join(_q(json_path(p)) for p in paths) + "]"
        v = f"v{i}"

        def has(raw: str) -> str:
            idx = [paths.index(p) + 1 for p in fmt.sources_of(raw)]
            return "(" + " OR ".join(f"coalesce({v}[{k}], '') <> ''" for k in idx) + ")" if idx else "false"

        targets = " OR ".join(has(t) for t in TARGET_FIELDS)
        hit = f"{v} IS NOT NULL AND {has(fmt.timestamp.fields[0])} AND {has('status')} AND ({targets})"
        if fmt.detect:
            hit += f" AND regexp_matches(line, {_q(fmt.detect)})"
        inner = f"CASE WHEN starts_with(line, '{{') THEN try(json_extract_string(line, {plist})) END AS {v}"
        return inner, hit, " + ".join(f"({has(r)})::INT" for r in fmt.fields)
    pattern = fmt.detect or (fmt.regex if fmt.kind == "regex" else None)
    hit = f"regexp_matches(line, {_q(pattern)})" if pattern else "false"
    return "", hit, str(len(fmt.fields))


def detect_format(lines: Sequence[str], formats: Mapping[str, LogFormat]) -> tuple[LogFormat, str]:
    """Pick the format most of the first lines match; returns it and a one-line reason.

    Ties go to the format that resolves more fields, then to the higher `priority`. CSV and W3C
    formats are recognised by their header or directive lines, which identify the whole object.
    """
    scores = score_formats(lines, formats)
    sample = _sample(lines)
    if not scores or scores[0][0] == 0:
        raise ConfigError(
            f"cannot detect the format: none of the known formats {sorted({f.id for f in formats.values()})} "
            f"matches the first {len(sample)} non-blank line(s); set `format:` on the source or add a "
            "format definition to the config's `formats:`"
        )
    hits, nfields, _, fid = scores[0]
    why = f"{hits} of the first {len(sample)} non-blank lines match {fid!r} ({nfields:.0f} fields)"
    runner = next((s for s in scores[1:] if s[0]), None)
    if runner:
        why += f"; next best {runner[3]!r} ({runner[0]} lines, {runner[1]:.0f} fields)"
    return next(f for f in formats.values() if f.id == fid), why


def _sample(lines: Sequence[str]) -> list[str]:
    return [ln.rstrip("\r") for ln in lines if ln.strip()][:SAMPLE_LINES]


def score_formats(lines: Sequence[str], formats: Mapping[str, LogFormat]) -> list[tuple[int, float, int, str]]:
    """[(lines matched, fields resolved per matched line, priority, id)], best first."""
    sample = _sample(lines)
    if not sample:
        raise ConfigError("cannot detect the format: the object has no non-blank line")
    unique = list({f.id: f for f in formats.values()}.values())
    parts = [_score_sql(fmt, i) for i, fmt in enumerate(unique)]  # one scan for every format
    inner = ", ".join(["line", *(p[0] for p in parts if p[0])])
    outer = ", ".join(f"count(*) FILTER (WHERE {hit}), avg({n}) FILTER (WHERE {hit})" for _, hit, n in parts)
    con = duck_connection()
    con.register("s", pa.table({"line": strings(sample)}))
    try:
        row = con.sql(f"SELECT {outer} FROM (SELECT {inner} FROM s)").fetchall()[0]
    finally:
        con.unregister("s")
    scores = []
    for i, fmt in enumerate(unique):
        hits, nfields = int(row[2 * i] or 0), float(row[2 * i + 1] or 0)
        if fmt.kind in ("csv", "w3c") and hits:  # a header line identifies the whole object
            hits = len(sample)
        scores.append((hits, nfields, fmt.priority, fmt.id))
    scores.sort(key=lambda s: (s[0], s[1], s[2]), reverse=True)
    return scores
