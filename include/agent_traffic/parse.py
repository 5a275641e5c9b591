"""Parse one source object into canonical events and quarantine rows, in DuckDB.

Bytes are framed into lines in bounded blocks (memory does not grow with the object), and each
block is parsed by one DuckDB query over an Arrow table. Every line read ends in exactly one
outcome: an event, a quarantine row with its reason, or a counted skip (blank line, CSV header).
Invalid UTF-8 is repaired (U+FFFD) and the line is still parsed, and counted.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from agent_traffic.formats import TIME_UNITS, LogFormat
from agent_traffic.schema import QUARANTINE_SCHEMA

BLANK = "blank"
HEADER = "header"


@dataclass
class ParseStats:
    lines_read: int = 0
    parsed: int = 0
    quarantined: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    invalid_utf8: int = 0

    def add(self, other: ParseStats) -> None:
        self.lines_read += other.lines_read
        self.parsed += other.parsed
        self.quarantined += other.quarantined
        self.skipped.update(other.skipped)
        self.reasons.update(other.reasons)
        self.invalid_utf8 += other.invalid_utf8

    def as_dict(self) -> dict:
        return {
            "lines_read": self.lines_read,
            "parsed": self.parsed,
            "quarantined": self.quarantined,
            "skipped": dict(self.skipped),
            "quarantine_reasons": dict(self.reasons),
            "invalid_utf8": self.invalid_utf8,
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


@dataclass
class ParsedBlock:
    events: pa.Table
    quarantine: pa.Table
    stats: ParseStats


# ---------------------------------------------------------------------------------------------
# Line framing


@dataclass
class _Lines:
    first_line: int
    lines: pa.LargeStringArray
    raw_overrides: dict[int, bytes]  # line number -> exact bytes, for lines repaired or cut


def frame_lines(blocks: Iterator[bytes], block_bytes: int, max_line_bytes: int) -> Iterator[_Lines]:
    """Split decompressed bytes into numbered lines, in blocks of about `block_bytes`."""
    pending: list[bytes] = []
    size = 0
    next_line = 1
    carry = b""
    for chunk in blocks:
        pending.append(chunk)
        size += len(chunk)
        if size < block_bytes:
            continue
        buf = carry + b"".join(pending)
        pending, size = [], 0
        cut = buf.rfind(b"\n")
        if cut < 0:
            carry = buf
            if len(carry) > max_line_bytes * 4:  # a line with no end in sight: frame it now
                block = _frame(carry, next_line, max_line_bytes)
                next_line += len(block.lines)
                carry = b""
                yield block
            continue
        carry = buf[cut + 1 :]
        block = _frame(buf[:cut], next_line, max_line_bytes)
        next_line += len(block.lines)
        yield block
    buf = carry + b"".join(pending)
    if buf:
        if buf.endswith(b"\n"):
            buf = buf[:-1]
        yield _frame(buf, next_line, max_line_bytes)


def _frame(buf: bytes, first_line: int, max_line_bytes: int) -> _Lines:
    overrides: dict[int, bytes] = {}
    try:
        text = buf.decode("utf-8")
    except UnicodeDecodeError:
        parts = buf.split(b"\n")
        fixed = []
        for i, p in enumerate(parts):
            try:
                fixed.append(p.decode("utf-8"))
            except UnicodeDecodeError:
                overrides[first_line + i] = p[:-1] if p.endswith(b"\r") else p
                fixed.append(p.decode("utf-8", errors="replace"))
        text = "\n".join(fixed)
    arr = pc.list_flatten(pc.split_pattern(pa.array([text], pa.large_string()), "\n"))
    return _Lines(first_line, arr, overrides)


# ---------------------------------------------------------------------------------------------
# SQL


def _q(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _raw_select(fmt: LogFormat) -> str:
    """SELECT producing line_number, line, matched and one VARCHAR column per raw field."""
    if fmt.kind == "regex":
        names = fmt.fields
        name_list = "[" + ", ".join(_q(n) for n in names) + "]"
        first = names[0]
        cols = ", ".join(f"NULLIF(m.{n}, '') AS {n}" for n in names)
        return (
            f"SELECT line_number, line, m.{first} <> '' AS matched, {cols} FROM ("
            f"SELECT line_number, line, regexp_extract(line, {_q(fmt.regex or '')}, {name_list}) AS m "
            f"FROM lines_in)"
        )
    names = tuple(fmt.columns.values())
    cols = ", ".join(f"NULLIF({n}, '') AS {n}" for n in names)
    return f"SELECT line_number, line, matched, {cols} FROM lines_in"


def _ts_expr(fmt: LogFormat) -> str:
    ts = fmt.timestamp
    if ts.unit:
        per_s = TIME_UNITS[ts.unit]
        return f"to_timestamp(TRY_CAST({ts.field} AS DOUBLE) / {per_s})"
    if ts.format and "%z" in ts.format:
        return f"try_strptime({ts.field}, {_q(ts.format)})"
    if ts.format:
        return f"CAST(try_strptime({ts.field}, {_q(ts.format)}) AS TIMESTAMPTZ)"
    return f"TRY_CAST({ts.field} AS TIMESTAMPTZ)"


def build_sql(ctx: ParseContext) -> str:
    fmt = ctx.fmt
    have = set(fmt.fields)

    def col(name: str) -> str:
        return name if name in have else "NULL::VARCHAR"

    req = col("request")
    method = f"COALESCE({col('method')}, NULLIF(regexp_extract({req}, '^([A-Za-z]+) ', 1), ''))"
    target = (
        f"COALESCE({col('target')}, NULLIF(regexp_extract({req}, '^[A-Za-z]+ (\\S+)', 1), ''),"
        f" NULLIF(regexp_replace({col('url')}, '^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*', ''), ''))"
    )
    # absolute-form targets (proxies, ALB) keep only path and query
    target_path = (
        "CASE WHEN regexp_matches(target, '^[A-Za-z][A-Za-z0-9+.-]*://') THEN "
        "COALESCE(NULLIF(regexp_replace(target, '^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*', ''), ''), '/') "
        "ELSE target END"
    )
    dur = "NULL::DOUBLE"
    if "duration" in have and fmt.duration_unit:
        dur = f"TRY_CAST(duration AS DOUBLE) * {1000.0 / TIME_UNITS[fmt.duration_unit]}"
    host_raw = col("host")
    if ctx.default_host:
        host_raw = f"COALESCE({host_raw}, {_q(ctx.default_host)})"
    unesc = "regexp_replace(replace(user_agent, '\\x22', '\"'), '\\\\([\"\\\\])', '\\1', 'g')"
    site = _q(ctx.default_site) if ctx.default_site else "hs.site"
    site_join = (
        ""
        if ctx.default_site
        else "LEFT JOIN host_sites hs ON c.host = hs.host OR (hs.host LIKE '*.%' "
        "AND c.host LIKE '%' || substr(hs.host, 2))"
    )
    max_b = int(ctx.max_line_bytes)
    return f"""
    WITH r AS ({_raw_select(fmt)}),
    c AS (
      SELECT line_number, line, matched,
        {_ts_expr(fmt)} AS ts,
        upper({method}) AS method,
        {target} AS target,
        TRY_CAST({col('status')} AS INTEGER) AS status,
        COALESCE(TRY_CAST({col('bytes')} AS BIGINT), CASE WHEN {col('bytes')} = '-' THEN 0 END) AS bytes,
        {dur} AS duration_ms,
        NULLIF({col('client_ip')}, '-') AS client_ip,
        {unesc if 'user_agent' in have else "''"} AS user_agent,
        NULLIF({col('referer')}, '-') AS referer,
        NULLIF({col('content_type')}, '-') AS content_type,
        lower(regexp_replace({host_raw}, ':[0-9]+$', '')) AS host
      FROM r
    ),
    p AS (
      SELECT c.*, {site} AS site,
        {target_path} AS t2
      FROM c {site_join}
    ),
    q AS (
      SELECT *,
        CASE WHEN strpos(t2, '?') > 0 THEN substr(t2, 1, strpos(t2, '?') - 1) ELSE t2 END AS path,
        CASE WHEN strpos(t2, '?') > 0 THEN NULLIF(substr(t2, strpos(t2, '?') + 1), '') END AS query
      FROM p
    )
    SELECT
      md5({_q(ctx.object_id)} || ':' || line_number::VARCHAR) AS event_id,
      ts, site, COALESCE(host, '') AS host, method, path, query,
      {_q(ctx.scheme)} || '://' || COALESCE(host, '') || path
        || CASE WHEN query IS NULL THEN '' ELSE '?' || query END AS url,
      status, bytes, duration_ms, client_ip, COALESCE(user_agent, '') AS user_agent, referer,
      content_type, {_q(ctx.source_object)} AS source_object, line_number,
      CASE
        WHEN strlen(line) > {max_b} THEN 'line longer than {max_b} bytes'
        WHEN NOT matched THEN 'does not match format {fmt.id}'
        WHEN ts IS NULL THEN 'unparseable timestamp'
        WHEN method IS NULL OR target IS NULL THEN 'unparseable request line'
        WHEN status IS NULL OR status NOT BETWEEN 100 AND 599 THEN 'status not in 100-599'
        WHEN NOT starts_with(path, '/') THEN 'request target is not a path'
        WHEN site IS NULL THEN 'host matches no configured site'
      END AS reason,
      line
    FROM q
    ORDER BY line_number
    """


# ---------------------------------------------------------------------------------------------
# Block parsing


def _csv_table(block: _Lines, fmt: LogFormat, ctx_skip_header: bool) -> tuple[pa.Table, int]:
    """CSV formats: split fields in Python (quoted commas), then hand DuckDB plain columns."""
    lines = block.lines.to_pylist()
    names = list(fmt.columns.values())
    header_idx = {h: i for i, h in enumerate(fmt.header)}
    cols: dict[str, list] = {n: [] for n in names}
    matched: list[bool] = []
    keep_nums: list[int] = []
    keep_lines: list[str] = []
    headers = 0
    for i, line in enumerate(lines):
        num = block.first_line + i
        if not line.strip():
            keep_nums.append(num)
            keep_lines.append(line)
            matched.append(False)
            for n in names:
                cols[n].append(None)
            continue
        row = next(csv.reader([line]))
        if ctx_skip_header and num == 1 and [c.strip() for c in row[: len(fmt.header)]] == list(fmt.header):
            headers += 1
            continue
        ok = len(row) == len(fmt.header)
        keep_nums.append(num)
        keep_lines.append(line)
        matched.append(ok)
        for col_name, raw_name in fmt.columns.items():
            j = header_idx.get(col_name)
            cols[raw_name].append(row[j] if ok and j is not None else None)
    data = {"line_number": pa.array(keep_nums, pa.int64()), "line": pa.array(keep_lines, pa.large_string())}
    data["matched"] = pa.array(matched, pa.bool_())
    for n in names:
        data[n] = pa.array(cols[n], pa.large_string())
    return pa.table(data), headers


def parse_blocks(blocks: Iterator[bytes], ctx: ParseContext, block_bytes: int) -> Iterator[ParsedBlock]:
    """Parse decompressed blocks; yields events and quarantine rows per block, in line order."""
    con = duckdb.connect(":memory:", config={"threads": 2})
    con.execute("SET TimeZone = 'UTC'")
    if ctx.host_sites:
        hs = pa.table({"host": list(ctx.host_sites), "site": list(ctx.host_sites.values())})
        con.register("host_sites", hs)
    else:
        con.register("host_sites", pa.table({"host": pa.array([], pa.string()), "site": pa.array([], pa.string())}))
    sql = build_sql(ctx)
    try:
        for block in frame_lines(blocks, block_bytes, ctx.max_line_bytes):
            yield _parse_block(con, sql, block, ctx)
    finally:
        con.close()


def _parse_block(con: duckdb.DuckDBPyConnection, sql: str, block: _Lines, ctx: ParseContext) -> ParsedBlock:
    stats = ParseStats(lines_read=len(block.lines), invalid_utf8=len(block.raw_overrides))
    lines = pc.utf8_rtrim(block.lines, characters="\r")
    nums = pa.array(range(block.first_line, block.first_line + len(lines)), pa.int64())
    if ctx.fmt.kind == "csv":
        tbl, headers = _csv_table(_Lines(block.first_line, lines, {}), ctx.fmt, True)
        stats.skipped[HEADER] += headers
    else:
        tbl = pa.table({"line_number": nums, "line": lines})
    blank_mask = pc.equal(pc.utf8_trim_whitespace(tbl["line"]), "")
    blanks = pc.sum(blank_mask).as_py() or 0
    if blanks:
        stats.skipped[BLANK] += blanks
        tbl = tbl.filter(pc.invert(blank_mask))
    con.register("lines_in", tbl)
    out = con.sql(sql).to_arrow_table()
    con.unregister("lines_in")
    bad_mask = pc.is_valid(out["reason"])
    events = out.filter(pc.invert(bad_mask)).drop_columns(["reason", "line"])
    bad = out.filter(bad_mask)
    stats.parsed = events.num_rows
    stats.quarantined = bad.num_rows
    for r, n in Counter(bad["reason"].to_pylist()).items():
        stats.reasons[r] += n
    return ParsedBlock(events, _quarantine_rows(bad, block, ctx), stats)


def _quarantine_rows(bad: pa.Table, block: _Lines, ctx: ParseContext) -> pa.Table:
    nums = bad["line_number"].to_pylist()
    raw = [
        block.raw_overrides.get(n) or line.encode("utf-8")
        for n, line in zip(nums, bad["line"].to_pylist(), strict=True)
    ]
    return pa.table(
        {
            "object_id": pa.array([ctx.object_id] * len(nums), pa.string()),
            "source_object": pa.array([ctx.source_object] * len(nums), pa.string()),
            "line_number": pa.array(nums, pa.int64()),
            "reason": bad["reason"].cast(pa.string()),
            "raw": pa.array(raw, pa.binary()),
        },
        schema=QUARANTINE_SCHEMA,
    )
