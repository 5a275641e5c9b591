"""DuckDB over the staging store: the data team's way in, and the HTML report's only source.

`connect(store)` opens an in-memory DuckDB with one view or table per thing the pipeline keeps,
so people and the report ask the same questions of the same definitions. Parquet is read in place
(views, nothing copied); the small JSON records (manifests, ledger, runs, quality results) are
loaded into tables when the connection opens, and a date range keeps that cheap on a store with
years of history. A remote store's Parquet for the dates is copied to a local folder first (one
concurrent transfer through the store's fsspec filesystem): DuckDB's httpfs extension is not bundled
and cannot be installed offline, and its fsspec bridge reads file by file.

Columns that later releases add to staged events (`verification`, `resource_type`, ...) are read
with `union_by_name`: older files show them as NULL, so one query works over every file.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, date, datetime
from typing import Any

import duckdb
import orjson
import pyarrow as pa

from agent_traffic import layout
from agent_traffic.delivery.ledger import as_utc
from agent_traffic.ingest.storage import Store
from agent_traffic.schema import EVENT_SCHEMA, QUARANTINE_SCHEMA

#: Event columns that newer pipelines write; NULL in files staged before them.
OPTIONAL_EVENT_FIELDS: list[pa.Field] = [
    pa.field("verification", pa.string()),  # verified | spoofed | unverifiable
    pa.field("resource_type", pa.string()),  # html | document | image | other
    pa.field("referred_by", pa.string()),  # provider of the AI assistant that referred a visit
    pa.field("cloudflare_category", pa.string()),  # AI Crawler | AI Search | AI Assistant
]

#: What each name holds: printed by `agent-traffic query` and kept in step with docs/data.md.
TABLES: dict[str, str] = {
    "events": "every staged event (one row per request): schema columns + date (UTC day of ts)",
    "quarantine": "lines that did not parse, rows that failed a row-level expectation: reason, raw, date",
    "manifests": "one row per staged object version: format, status, lines read/parsed/quarantined",
    "deliveries": "the delivery ledger: events per destination, site, date, object and outcome "
                  "(delivered | failed | pending | too_old | not_selected | not_eligible, with the reason)",
    "dead_letters": "failed chunks: the vendor's status and answer, attempts",
    "runs": f"one row per run summary ({layout.run_key('<run_id>')})",
    "quality": "data-quality verdict per date and site: pass | warn | fail, with the messages",
    "quality_findings": "one row per expectation checked by a run: suite, success, severity, rows",
}


def connect(
    store: Store,
    first: date | str | None = None,
    last: date | str | None = None,
    *,
    tables: Iterable[str] = TABLES,
    workdir: str | None = None,
) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with the staging views; only the dates first..last when given.

    Parquet of a remote store is first copied to `workdir` (default: a temporary folder removed
    with the connection) in one concurrent transfer: DuckDB's fsspec bridge makes several
    sequential requests per file, which is ~20x slower than one bulk get (60 files: 18 s vs 0.8 s).
    """
    days = _days(first, last)
    con = duckdb.connect()
    local_root = store.root
    if not store.is_local and {"events", "quarantine"} & set(tables):
        if workdir is None:
            workdir = tempfile.mkdtemp(prefix="agent-traffic-query-")
            weakref.finalize(con, shutil.rmtree, workdir, True)
        local_root = workdir
    builders = {
        "events": lambda: _parquet_view(con, store, local_root, "events", _event_schema(), days),
        "quarantine": lambda: _parquet_view(con, store, local_root, "quarantine", QUARANTINE_SCHEMA, days),
        "manifests": lambda: _load(con, "manifests", manifest_rows(store, days), MANIFEST_SCHEMA, ("stats",)),
        "deliveries": lambda: _load_ledger(con, store, days),
        "dead_letters": lambda: None,  # loaded with deliveries: one pass over the ledger
        "runs": lambda: _load(con, "runs", run_rows(store, days), RUN_SCHEMA, ("summary",)),
        "quality": lambda: _load_quality(con, store, days),
        "quality_findings": lambda: None,  # loaded with quality
    }
    wanted = list(tables)
    unknown = sorted(set(wanted) - set(builders))
    if unknown:
        raise ValueError(f"unknown table(s) {unknown}; there are {sorted(builders)}")
    if "dead_letters" in wanted and "deliveries" not in wanted:
        wanted.append("deliveries")
    if "quality_findings" in wanted and "quality" not in wanted:
        wanted.append("quality")
    for name in wanted:
        builders[name]()
    return con


def _days(first: date | str | None, last: date | str | None) -> list[str] | None:
    if first is None:
        return None
    from agent_traffic.run.steps import days_between

    a = first if isinstance(first, date) else date.fromisoformat(first)
    b = a if last is None else last if isinstance(last, date) else date.fromisoformat(last)
    return [d.isoformat() for d in days_between(a, b)]


def _lit(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _ident(s: str) -> str:
    return '"' + s.replace('"', '""') + '"'


# ---------------------------------------------------------------------------------------------
# Parquet views: events, quarantine


def _event_schema() -> pa.Schema:
    names = set(EVENT_SCHEMA.names)
    return pa.schema(list(EVENT_SCHEMA) + [f for f in OPTIONAL_EVENT_FIELDS if f.name not in names])


def _parquet_keys(store: Store, name: str, days: list[str] | None) -> list[str]:
    """Keys of the Parquet files of a dataset (events or quarantine), for the days when given."""
    if days is None:
        return [k for k in store.list(layout.dataset_prefix(name)) if k.endswith(".parquet")]
    n = len(store.root) + 1
    return sorted(p[n:] for d in days for p in store.fs.glob(store.path(layout.parquet_glob(name, d))))


def _parquet_view(con: duckdb.DuckDBPyConnection, store: Store, local_root: str, name: str,
                  schema: pa.Schema, days: list[str] | None) -> None:
    """A view over the dataset's Parquet with every schema column (NULL where a file lacks one)."""
    keys = _parquet_keys(store, name, days)
    if keys and not store.is_local:
        store.fs.get([store.path(k) for k in keys], [os.path.join(local_root, k) for k in keys])
    empty = pa.schema(list(schema) + [pa.field("date", pa.date32())]).empty_table()
    if not keys:
        con.register(f"_{name}_empty", empty)
        con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM _{name}_empty")
        return
    dated = sorted({d for k in keys if (d := layout.day_of(k))})
    patterns = [f"{local_root}/{layout.parquet_glob(name, d)}" for d in ([None] if days is None else dated)]
    src = (f"read_parquet([{', '.join(_lit(p) for p in patterns)}], hive_partitioning = true, "
           "union_by_name = true, hive_types = {'date': DATE}, hive_types_autocast = false)")
    present = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {src}").fetchall()]
    types = dict(zip(empty.column_names, con.from_arrow(empty).types, strict=True))
    cols = [
        _ident(f.name) if f.name in present else f"CAST(NULL AS {types[f.name]}) AS {_ident(f.name)}"
        for f in schema
    ]
    cols += [_ident(c) for c in present if c not in schema.names and c != "date"]  # newer columns
    con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT {', '.join(cols)}, date FROM {src}")


# ---------------------------------------------------------------------------------------------
# JSON records loaded as tables


def _load(con: duckdb.DuckDBPyConnection, name: str, rows: list[dict[str, Any]], schema: pa.Schema,
          json_cols: Sequence[str] = ()) -> None:
    table = pa.Table.from_pylist(rows, schema=schema)
    con.register(f"_{name}_rows", table)
    replace = ", ".join(f"CAST({c} AS JSON) AS {c}" for c in json_cols)
    select = f"SELECT * REPLACE ({replace})" if replace else "SELECT *"
    con.execute(f"CREATE OR REPLACE TABLE {name} AS {select} FROM _{name}_rows")
    con.unregister(f"_{name}_rows")


def _keys_by_day(store: Store, prefix: Callable[[str | None], str], days: list[str] | None) -> list[str]:
    """Keys of a date-partitioned tree (`prefix(day)` from layout), for the days when given."""
    if days is None:
        return store.list(prefix(None))
    return [k for d in days for k in store.list(prefix(d))]


def _json(obj: Any) -> str:
    return orjson.dumps(obj, default=str).decode()


MANIFEST_SCHEMA = pa.schema([
    ("date", pa.date32()), ("object_id", pa.string()), ("url", pa.string()), ("source", pa.string()),
    ("size", pa.int64()), ("etag", pa.string()), ("status", pa.string()), ("reason", pa.string()),
    ("format", pa.string()), ("compression", pa.string()), ("lines_read", pa.int64()),
    ("parsed", pa.int64()), ("quarantined", pa.int64()), ("skipped", pa.int64()),
    ("invalid_utf8", pa.int64()), ("events_staged", pa.int64()),
    ("recorded_at", pa.timestamp("us", tz="UTC")), ("stats", pa.string()),
])


def manifest_rows(store: Store, days: list[str] | None) -> list[dict[str, Any]]:
    rows = []
    for key in _keys_by_day(store, layout.manifests_prefix, days):
        if not key.endswith(".json"):
            continue
        m = store.get_json(key)
        s = m.get("stats") or {}
        files = m.get("files") or {}
        rows.append({
            "date": date.fromisoformat(m.get("date") or layout.day_of(key)),
            "object_id": m.get("object_id"), "url": m.get("url"), "source": m.get("source"),
            "size": m.get("size"), "etag": m.get("etag"), "status": m.get("status"),
            "reason": m.get("reason"), "format": m.get("format"), "compression": m.get("compression"),
            "lines_read": s.get("lines_read"), "parsed": s.get("parsed"),
            "quarantined": s.get("quarantined"), "skipped": sum((s.get("skipped") or {}).values()),
            "invalid_utf8": s.get("invalid_utf8"),
            "events_staged": sum(n for k, n in files.items() if layout.is_event_key(k)),
            "recorded_at": as_utc(m.get("recorded_at")), "stats": _json(s),
        })
    return rows


RUN_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("first_date", pa.date32()), ("last_date", pa.date32()),
    ("dry_run", pa.bool_()), ("ok", pa.bool_()), ("objects_seen", pa.int64()),
    ("objects_processed", pa.int64()), ("objects_failed", pa.int64()), ("lines_read", pa.int64()),
    ("parsed", pa.int64()), ("quarantined", pa.int64()), ("delivered_this_run", pa.int64()),
    ("problems", pa.list_(pa.string())), ("written_at", pa.timestamp("us", tz="UTC")),
    ("summary", pa.string()),
])


def run_rows(store: Store, days: list[str] | None) -> list[dict[str, Any]]:
    """Run summaries; with days, the runs whose dates overlap them."""
    try:
        entries = store.fs.ls(store.path(layout.RUNS), detail=True)
    except FileNotFoundError:
        return []
    rows = []
    for e in entries:
        name = e["name"].rsplit("/", 1)[-1]
        if e.get("type") != "file" or not name.endswith(".json") or ".tmp-" in name:
            continue
        s = store.get_json(layout.run_key(name.removesuffix(".json")))
        dates = sorted(s.get("dates") or [])
        if days is not None and not set(dates) & set(days):
            continue
        o, ln = s.get("objects") or {}, s.get("lines") or {}
        rows.append({
            "run_id": s.get("run_id") or name[:-5],
            "first_date": date.fromisoformat(dates[0]) if dates else None,
            "last_date": date.fromisoformat(dates[-1]) if dates else None,
            "dry_run": s.get("dry_run"), "ok": s.get("ok"), "objects_seen": o.get("seen"),
            "objects_processed": o.get("processed"), "objects_failed": len(o.get("failed") or []),
            "lines_read": ln.get("read"), "parsed": ln.get("parsed"), "quarantined": ln.get("quarantined"),
            "delivered_this_run": (s.get("this_run") or {}).get("delivered_events", 0),
            "problems": list(s.get("problems") or []),
            "written_at": as_utc(e.get("mtime") or e.get("LastModified") or e.get("created")),
            "summary": _json(s),
        })
    return sorted(rows, key=lambda r: (r["written_at"] or datetime.min.replace(tzinfo=UTC), r["run_id"]))


# ---------------------------------------------------------------------------------------------
# The delivery ledger


DELIVERY_SCHEMA = pa.schema([
    ("destination", pa.string()), ("site", pa.string()), ("date", pa.date32()),
    ("object_id", pa.string()), ("source_object", pa.string()), ("outcome", pa.string()),
    ("reason", pa.string()), ("events", pa.int64()), ("chunks", pa.int64()),
])
DEAD_LETTER_SCHEMA = pa.schema([
    ("destination", pa.string()), ("site", pa.string()), ("date", pa.date32()),
    ("chunk_id", pa.string()), ("object_id", pa.string()), ("events", pa.int64()),
    ("http_status", pa.int32()), ("outcome", pa.string()), ("attempts", pa.int64()),
    ("vendor_answer", pa.string()), ("failed_at", pa.timestamp("us", tz="UTC")), ("run_id", pa.string()),
])
def _load_ledger(con: duckdb.DuckDBPyConnection, store: Store, days: list[str] | None) -> None:
    from agent_traffic.delivery.ledger import ledger_rows

    deliveries, dead = ledger_rows(store, days)
    _load(con, "deliveries", deliveries, DELIVERY_SCHEMA)
    _load(con, "dead_letters", dead, DEAD_LETTER_SCHEMA)


# ---------------------------------------------------------------------------------------------
# Validation results under _quality/ (validate.py): verdicts per partition, findings per run


QUALITY_SCHEMA = pa.schema([
    ("date", pa.date32()), ("site", pa.string()), ("status", pa.string()), ("run_id", pa.string()),
    ("failures", pa.list_(pa.string())), ("warnings", pa.list_(pa.string())), ("key", pa.string()),
])
FINDING_SCHEMA = pa.schema([
    ("date", pa.date32()), ("run_id", pa.string()), ("suite", pa.string()), ("expectation", pa.string()),
    ("column", pa.string()), ("success", pa.bool_()), ("severity", pa.string()),
    ("unexpected", pa.int64()), ("checked", pa.int64()), ("scope", pa.string()), ("message", pa.string()),
    ("key", pa.string()),
])


def _int(x: Any) -> int | None:
    return int(x) if isinstance(x, int | float) and not isinstance(x, bool) else None


def _gx_results(obj: Any) -> Iterable[dict[str, Any]]:
    """Great Expectations suite results (`success` and a `results` list) anywhere in a document."""
    if isinstance(obj, dict):
        if isinstance(obj.get("results"), list) and "success" in obj:
            yield obj
            return
        for v in obj.values():
            yield from _gx_results(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _gx_results(v)


def quality_rows(store: Store, days: list[str] | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(verdicts, findings) from `_quality/date=<D>/`.

    A verdict is a partition's status file (`site=<S>/status.json`: pass, warn or fail, with the
    messages); a finding is one expectation's outcome from a run's results file. A plain GX suite
    result is read too (one finding per expectation), so results written by GX itself show up.
    """
    verdicts: list[dict[str, Any]] = []
    findings: list[dict[str, Any]] = []
    for key in _keys_by_day(store, layout.quality_prefix, days):
        day_text = layout.day_of(key)
        if not key.endswith(".json") or not day_text:
            continue
        try:
            doc = store.get_json(key)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(doc, dict):
            continue
        day = date.fromisoformat(day_text)
        status = layout.parse_quality_status_key(key)
        if status:
            verdicts.append({
                "date": day, "site": status[1], "status": doc.get("status"), "run_id": doc.get("run_id"),
                "failures": [str(x) for x in doc.get("failures") or []],
                "warnings": [str(x) for x in doc.get("warnings") or []], "key": key,
            })
            continue
        run_id = doc.get("run_id") or key.rsplit("/", 1)[-1].removesuffix(".json")
        for f in doc.get("findings") or []:
            if isinstance(f, dict):
                findings.append({
                    "date": day, "run_id": run_id, "suite": f.get("suite"), "expectation": f.get("expectation"),
                    "column": f.get("column"), "success": f.get("success"), "severity": f.get("severity"),
                    "unexpected": _int(f.get("unexpected")), "checked": _int(f.get("checked")),
                    "scope": f.get("scope"), "message": f.get("message"), "key": key,
                })
        for res in _gx_results(doc):
            suite = res.get("suite_name") or (res.get("meta") or {}).get("expectation_suite_name")
            for r in res["results"]:
                if not isinstance(r, dict):
                    continue
                cfg = r.get("expectation_config") or {}
                out = r.get("result") or {}
                findings.append({
                    "date": day, "run_id": run_id, "suite": suite,
                    "expectation": cfg.get("type") or cfg.get("expectation_type"),
                    "column": (cfg.get("kwargs") or {}).get("column"), "success": r.get("success"),
                    "severity": cfg.get("severity"), "unexpected": _int(out.get("unexpected_count")),
                    "checked": _int(out.get("element_count")), "scope": None, "message": None, "key": key,
                })
    return verdicts, findings


def _load_quality(con: duckdb.DuckDBPyConnection, store: Store, days: list[str] | None) -> None:
    verdicts, findings = quality_rows(store, days)
    _load(con, "quality", verdicts, QUALITY_SCHEMA)
    _load(con, "quality_findings", findings, FINDING_SCHEMA)


# ---------------------------------------------------------------------------------------------
# The `agent-traffic query` command: one statement, a script, or an interactive shell


def _plain(v: Any) -> Any:
    if isinstance(v, bytes | bytearray):
        return bytes(v).decode("utf-8", "backslashreplace")
    return v


def run_sql(con: duckdb.DuckDBPyConnection, sql: str, fmt: str = "table", out: Any = None,
            max_rows: int = 200) -> None:
    """Run SQL (one or more statements) and print the last result as a table, CSV or JSON lines."""
    import contextlib
    import csv
    import sys

    out = out or sys.stdout
    rel = con.sql(sql)
    if rel is None:  # a statement without a result (CREATE, SET, ...)
        return
    if fmt == "table":
        with contextlib.redirect_stdout(out):
            rel.show(max_rows=max_rows)
        return
    rows = rel.fetchall()
    if fmt == "csv":
        w = csv.writer(out, lineterminator="\n")
        w.writerow(rel.columns)
        w.writerows([_plain(v) for v in r] for r in rows)
        return
    for r in rows:
        obj = {c: _plain(v) for c, v in zip(rel.columns, r, strict=True)}
        out.write(orjson.dumps(obj, default=str).decode() + "\n")


SHELL_HELP = """Views over the staging store (DuckDB SQL; end a statement with ;):
{tables}
Examples:
  SELECT date, provider, count(*) FROM events WHERE is_ai GROUP BY ALL ORDER BY ALL;
  SELECT reason, count(*) FROM quarantine GROUP BY ALL;
  SELECT destination, outcome, sum(events) FROM deliveries GROUP BY ALL;
.tables lists the views again, .quit (or Ctrl-D) leaves."""


def shell(con: duckdb.DuckDBPyConnection, out: Any = None) -> None:
    """A small interactive SQL prompt on the connection (DuckDB's Python API has no REPL)."""
    import contextlib
    import sys

    out = out or sys.stdout
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401 - line editing and history for input()
    listing = "\n".join(f"  {name:<21} {what}" for name, what in TABLES.items())
    print(SHELL_HELP.format(tables=listing), file=out)
    buf: list[str] = []
    while True:
        try:
            line = input("· " if buf else "D ")
        except EOFError:
            print(file=out)
            return
        except KeyboardInterrupt:
            buf = []
            print(file=out)
            continue
        cmd = line.strip()
        if not buf and cmd in (".quit", ".exit", "\\q"):
            return
        if not buf and cmd == ".tables":
            print(listing, file=out)
            continue
        if not cmd and not buf:
            continue
        buf.append(line)
        if cmd.endswith(";"):
            sql, buf = "\n".join(buf), []
            try:
                run_sql(con, sql, "table", out)
            except duckdb.Error as exc:
                print(f"Error: {exc}", file=out)
