"""Data quality with Great Expectations (GX Core 1.x, called directly; not the Airflow provider).

Three suites, each run where its data is small:
- `events_rows`: row-level expectations on each newly staged file, read in bounded record batches
  (memory does not grow with the object). Rows that fail move to quarantine with the expectation
  as their reason; they are never dropped in silence.
- `partition`: per (date, site), on aggregates computed by DuckDB over every staged file of the
  partition: event ids unique.
- `run_counts`: per source, on this run's parse counts: quarantine ratio under the thresholds, and
  rows staged for a source that had objects.

A partition whose suites fail is held: the planner sends nothing for it and the summary says which
expectation failed on how many rows. Warnings are recorded and do not hold delivery. Results go to
`_quality/date=<D>/<run_id>.json`, the partition's verdict to `_quality/date=<D>/site=<S>/status.json`,
and GX's data docs to `_quality/date=<D>/docs/`.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import os
import sys
import tempfile
import threading
import types
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from agent_traffic import layout
from agent_traffic.config import Config, QualityPolicy
from agent_traffic.ingest.parse import METHOD_TOKEN as PARSE_METHOD
from agent_traffic.ingest.storage import Store
from agent_traffic.pages import offline_html
from agent_traffic.schema import EVENT_SCHEMA, QUARANTINE_SCHEMA
from agent_traffic.staging.holds import Quality

PASS, WARN, FAIL = Quality.PASS, Quality.WARN, Quality.FAIL
#: What the row suite reads: the columns its expectations check (event_id also names a failing row)
ROW_COLUMNS = ["event_id", "ts", "site", "method", "path", "status", "url", "user_agent"]
#: Rows per GX run: the stage's peak memory follows it (a 2M-row day, the next batch read ahead: +314 MB
#: over the interpreter at 200k, GX import included; +348 MB at 250k), and each run costs ~0.08 s of
#: GX's own CPU, and a page in the data docs
BATCH_ROWS = 200_000
#: Text columns checked only for null or set membership: read as Arrow dictionaries, they reach GX as
#: pandas categoricals, and GX's copy of the frame per expectation copies their codes, not strings
#: (not path or method: GX's regex check turns a categorical into Python strings first)
DICT_COLUMNS = ["site", "url", "user_agent"]
#: RFC 9110 section 9.1: a method is any token; one outside `quality.methods` is unusual, not invalid
METHOD_TOKEN = f"^{PARSE_METHOD}$"


#: Clients of clouds and databases GX imports when they are installed (Airflow's providers install
#: them) for stores and data sources these pandas suites never use, and SQLAlchemy for its SQL data
#: sources: a third of GX's import memory and time. They look absent while GX imports (and only
#: to that thread); Airflow has imported SQLAlchemy already, so there GX sees it.
GX_UNUSED_CLIENTS = frozenset({"azure", "google", "boto3", "botocore", "psycopg2", "pyathena", "snowflake",
                               "trino", "pyspark", "databricks", "pyodbc", "py4j", "grpc", "msal", "sqlalchemy"})


class _Absent(importlib.abc.MetaPathFinder):
    """Import finder that reports `names` (top-level packages) missing to the thread that made it."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names, self.thread = frozenset(names), threading.get_ident()

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name.partition(".")[0] in self.names and threading.get_ident() == self.thread:
            raise ModuleNotFoundError(f"{name} hidden while Great Expectations imports", name=name)
        return None


@contextmanager
def _absent(names: Iterable[str]) -> Iterator[None]:
    """Packages not imported yet look absent inside the block; those already imported stay usable."""
    finder = _Absent(n for n in names if n not in sys.modules)
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)


#: Packages GX imports at import time only for expectations these suites never run (scipy for the
#: KL-divergence and KS tests, altair for their charts): a third of its import CPU. While GX imports
#: they are stand-ins that import the real package on first use (`_Deferred`).
GX_DEFERRED = frozenset({"scipy", "altair"})


class _Deferred(types.ModuleType):
    """Stand-in for a module GX binds at import but uses only inside expectations ours never run:
    its first attribute use imports the real module and hands over the attribute."""

    def __init__(self, name: str, finder: _Defer) -> None:
        super().__init__(name)
        self.__path__: list[str] = []  # a package: `import scipy.stats` finds its child stand-in
        self._finder = finder

    def __getattr__(self, attr: str) -> Any:  # called only for what the stand-in lacks
        name = f"{self.__name__}.{attr}"
        if self._finder.deferring(name):
            if attr.startswith("__"):  # the import system probing a module: not a use
                raise AttributeError(attr)
            return self._finder.stand_in(name)  # `from scipy import stats` while GX imports
        return getattr(self._finder.real(self.__name__), attr)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:  # `from m import f` then f() while GX imports
        return self._finder.real(self.__name__)(*args, **kwargs)


class _Defer(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Import finder giving the thread that made it a `_Deferred` for `names` (top-level packages)."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names, self.thread, self.made = set(names), threading.get_ident(), {}
        self.lock = threading.Lock()

    def deferring(self, name: str) -> bool:
        return name.partition(".")[0] in self.names and threading.get_ident() == self.thread

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        return importlib.machinery.ModuleSpec(name, self, is_package=True) if self.deferring(name) else None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> _Deferred:
        return self.stand_in(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        """Nothing runs: the stand-in imports the real module when used."""

    def stand_in(self, name: str) -> _Deferred:
        with self.lock:
            return self.made.setdefault(name, _Deferred(name, self))

    def real(self, name: str) -> Any:
        """The real module (or attribute) `name` stands for. Asked while GX still imports (a call at
        import time, or another thread's use), it stops standing in for that package first."""
        self.release(name.partition(".")[0])
        parent, _, leaf = name.rpartition(".")
        if not parent:
            return importlib.import_module(name)
        try:
            return getattr(self.real(parent), leaf)
        except AttributeError:
            return importlib.import_module(name)

    def release(self, top: str) -> None:
        """Stand in for `top` no longer: its stand-ins leave sys.modules, so imports get the real one."""
        with self.lock:
            if top not in self.names:  # released already: every use after the block comes here
                return
            self.names.discard(top)
            for name in [n for n, m in sys.modules.items() if isinstance(m, _Deferred) and m._finder is self
                         and n.partition(".")[0] == top]:
                del sys.modules[name]


@contextmanager
def _deferred(names: Iterable[str]) -> Iterator[None]:
    """Packages not imported yet are stand-ins inside the block (to its thread); afterwards every
    import gets the real package, and the stand-ins bound inside the block import it when used."""
    finder = _Defer(n for n in names if n not in sys.modules)
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
        for top in list(finder.names):
            finder.release(top)


def _import_gx() -> tuple[Any, Any]:
    """Import GX (without the clients it never uses here, and scipy and altair only when used) and
    make its ephemeral context."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    with _absent(GX_UNUSED_CLIENTS), _deferred(GX_DEFERRED):
        import great_expectations as gx
        import great_expectations.expectations  # noqa: F401 - the suites' classes, imported under the same hiding
    from great_expectations.data_context.types.base import ProgressBarsConfig
    from great_expectations.execution_engine import pandas_execution_engine

    # GX fingerprints each batch (md5 over pandas' hash of every cell) for a batch marker
    # nothing reads, as costly as the checks themselves. It skips frames larger than
    # HASH_THRESHOLD bytes, so 0 skips it always (pinned GX 1.24; test_validate checks the knob).
    pandas_execution_engine.HASH_THRESHOLD = 0

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    return gx, ctx


@dataclass
class Finding:
    """One expectation's outcome, as kept in the results and shown in messages."""

    suite: str
    expectation: str
    column: str | None
    success: bool
    severity: Quality  # FAIL or WARN when unsuccessful
    unexpected: int = 0
    checked: int = 0
    scope: str = ""  # site, source or file
    hint: str = ""  # what the failure means and what to do, in the user's words (`explain`)

    def message(self) -> str:
        what = f"{self.expectation}({self.column})" if self.column else self.expectation
        said = f"{self.suite}: {what} failed on {self.unexpected:,} of {self.checked:,} row(s) [{self.scope}]"
        return f"{said}: {self.hint}" if self.hint else said


def ts_window(day: str, lateness_hours: float) -> tuple[datetime, datetime]:
    """The UTC times (naive) a day's events may carry: the day, widened by the allowed lateness."""
    lateness = timedelta(hours=lateness_hours)
    start = datetime.fromisoformat(day).replace(tzinfo=None)
    return start - lateness, start + timedelta(days=1) + lateness


def explain(f: Finding, day: str, policy: QualityPolicy) -> str:
    """A failed expectation in plain words, with the setting or input to look at."""
    e, col = f.expectation.removeprefix("expect_column_values_to_"), f.column
    if (e, col) == ("be_between", "ts_naive"):
        start, end = ts_window(day, policy.allowed_lateness_hours)
        return (f"their time is outside {start:%Y-%m-%d %H:%M} .. {end:%Y-%m-%d %H:%M} UTC ({day} and "
                f"{policy.allowed_lateness_hours:g} h either side, `quality.allowed_lateness_hours`): are these "
                "logs from another day? The date in the source's url must be the day the requests were logged")
    if e == "not_be_null":
        return f"no {col}: the log format's field for it is empty or missing on those lines"
    if (e, col) == ("be_between", "status"):
        return "the status is not an HTTP status (100-599)"
    if (e, col) == ("match_regex", "path"):
        return "the path does not start with '/'"
    if (e, col) == ("be_in_set", "method"):
        return ("the method is valid (an RFC 9110 token) but not in `quality.methods`: counted, still delivered; "
                "add it there if your servers really serve it")
    if (e, col) == ("match_regex", "method"):
        return "the method is not an RFC 9110 token (letters, digits and !#$%&'*+.^_`|~-)"
    if (e, col) == ("be_in_set", "site"):
        return "the site is not one of the config's `sites`"
    if (e, col) == ("be_unique", "event_id"):
        return "the same event id twice: one log line was staged twice; re-run the date with --reprocess"
    if f.expectation == "expect_column_pair_values_to_be_equal":
        return "the partition holds the same event twice; re-run the date with --reprocess"
    if col == "quarantine_ratio":
        limit = policy.quarantine_ratio_fail if f.severity == FAIL else policy.quarantine_ratio_warn
        setting = "quarantine_ratio_fail" if f.severity == FAIL else "quarantine_ratio_warn"
        return (f"more than {limit:.0%} of the source's lines were quarantined (`quality.{setting}`): the "
                "summary's quarantine reasons say why; a wrong `format:` on the source is the usual cause")
    if col == "rows_if_objects":
        return "objects were staged but not one event came out of them: see the quarantine reasons"
    return ""


@dataclass
class QualityResult:
    day: str
    run_id: str
    findings: list[Finding] = field(default_factory=list)
    rows_quarantined: Counter[str] = field(default_factory=Counter)  # reason -> rows
    statuses: dict[str, Quality] = field(default_factory=dict)  # site -> verdict
    holds: dict[str, dict[str, Any]] = field(default_factory=dict)  # source -> held objects and why

    def as_dict(self) -> dict[str, Any]:
        return {
            "date": self.day,
            "run_id": self.run_id,
            "statuses": self.statuses,
            "rows_quarantined": dict(self.rows_quarantined),
            "findings": [f.__dict__ | {"message": f.message()} for f in self.findings if not f.success],
            "expectations_checked": len(self.findings),
            "holds": self.holds,
        }


class Validator:
    """Builds the GX suites once per process (importing GX takes seconds) and runs them."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.policy = cfg.quality

    @cached_property
    def _gx(self) -> tuple[Any, Any]:
        """GX and its ephemeral context."""
        return _import_gx()

    @cached_property
    def _definitions(self) -> dict[str, Any]:
        """name -> GX validation definition, made in this Validator's context."""
        return {}

    def _definition(self, name: str, expectations: Callable[[], list[Any]]) -> Any:
        """The validation definition `name`, made (and its expectations built) the first time only:
        the row suite asks for it once per batch."""
        if name in self._definitions:
            return self._definitions[name]
        gx, ctx = self._gx
        ds = ctx.data_sources.add_or_update_pandas(f"{name}_source")
        bd = ds.add_dataframe_asset(name).add_batch_definition_whole_dataframe("batch")
        suite = ctx.suites.add(gx.ExpectationSuite(name=name))
        for e in expectations():
            suite.add_expectation(e)
        made = ctx.validation_definitions.add(gx.ValidationDefinition(name=name, data=bd, suite=suite))
        return self._definitions.setdefault(name, made)

    def row_definition(self, day: str) -> Any:
        return self._definition(f"events_rows_{day}", lambda: self._row_expectations(day))

    def _row_expectations(self, day: str) -> list[Any]:
        gxe = self._gx[0].expectations

        start, end = ts_window(day, self.policy.allowed_lateness_hours)
        required = [gxe.ExpectColumnValuesToNotBeNull(column=c, meta={"severity": FAIL})
                    for c in ("event_id", "ts", "site", "method", "path", "status", "url", "user_agent")]
        return required + [
            gxe.ExpectColumnValuesToBeBetween(column="status", min_value=100, max_value=599, meta={"severity": FAIL}),
            gxe.ExpectColumnValuesToMatchRegex(column="path", regex=r"^/", meta={"severity": FAIL}),
            gxe.ExpectColumnValuesToMatchRegex(column="method", regex=METHOD_TOKEN, meta={"severity": FAIL}),
            gxe.ExpectColumnValuesToBeInSet(column="method", value_set=list(self.policy.methods),
                                            meta={"severity": WARN}),
            gxe.ExpectColumnValuesToBeInSet(column="site", value_set=[s.name for s in self.cfg.sites],
                                            meta={"severity": FAIL}),
            gxe.ExpectColumnValuesToBeBetween(column="ts_naive", min_value=start, max_value=end,
                                              meta={"severity": FAIL}),
            gxe.ExpectColumnValuesToBeUnique(column="event_id", meta={"severity": FAIL}),
        ]

    def partition_definition(self) -> Any:
        return self._definition("partition", lambda: [
            self._gx[0].expectations.ExpectColumnPairValuesToBeEqual(
                column_A="rows", column_B="distinct_event_ids", meta={"severity": FAIL}),
        ])

    def run_definition(self) -> Any:
        return self._definition("run_counts", self._run_expectations)

    def _run_expectations(self) -> list[Any]:
        gxe = self._gx[0].expectations

        p = self.policy
        return [
            gxe.ExpectColumnValuesToBeBetween(column="quarantine_ratio", max_value=p.quarantine_ratio_fail,
                                              meta={"severity": FAIL}),
            gxe.ExpectColumnValuesToBeBetween(column="quarantine_ratio", max_value=p.quarantine_ratio_warn,
                                              meta={"severity": WARN}),
            gxe.ExpectColumnValuesToBeBetween(column="rows_if_objects", min_value=1, meta={"severity": FAIL}),
        ]

    # -----------------------------------------------------------------------------------------

    def check_rows(self, day: str, table: pa.Table) -> list[tuple[str, str | None, Quality, list[tuple[str, str]]]]:
        """Row-level suite on one batch (with a `_key` column naming each row's file).

        Returns (expectation, column, severity, [(event_id, file key), ...] failing) per expectation.
        """
        import pandas as pd

        df = table.to_pandas()
        # GX checks "between" a row at a time in Python unless the column is int64/float64 or
        # datetime64[ns], which it checks vectorized: give it those dtypes. A time outside
        # the nanosecond range (years 1678-2261 kept) becomes 1678, which fails the check.
        df["status"] = df["status"].astype("float64")  # nulls stay null (NaN)
        ts = pd.to_datetime(df["ts"], utc=True).dt.tz_localize(None)
        lo, hi = pd.Timestamp("1678-01-01"), pd.Timestamp("2262-01-01")
        ts = ts.where(ts.isna() | ((ts >= lo) & (ts < hi)), lo)
        df["ts_naive"] = ts.astype("datetime64[ns]")
        definition = self.row_definition(day)
        # First only whether each expectation holds: naming the failing rows makes GX filter the
        # whole frame once per expectation, and nearly every batch passes. A batch with a failure is run again to name its rows.
        try:
            res = definition.run(batch_parameters={"dataframe": df}, result_format={"result_format": "BOOLEAN_ONLY"})
            if not res.success:
                res = definition.run(
                    batch_parameters={"dataframe": df},
                    result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ["event_id", "_key"],
                                   "return_unexpected_index_query": False},
                )
        finally:
            _forget_batch(definition)
        out = []
        for r in res.results:
            cfg = r.expectation_config
            failing = [(str(i["event_id"]), str(i["_key"])) for i in r.result.get("unexpected_index_list") or []]
            out.append((cfg.type, cfg.kwargs.get("column"), Quality(cfg.meta["severity"]), failing))
        return out

    def check_frame(self, definition: Any, rows: list[dict[str, Any]], suite: str, scope_col: str) -> list[Finding]:
        import pandas as pd

        if not rows:
            return []
        df = pd.DataFrame(rows)
        res = definition.run(batch_parameters={"dataframe": df},
                             result_format={"result_format": "COMPLETE",
                                            "unexpected_index_column_names": [scope_col],
                                            "return_unexpected_index_query": False})
        out = []
        for r in res.results:
            cfg = r.expectation_config
            failed = r.result.get("unexpected_index_list") or []
            scopes = sorted({str(i[scope_col]) for i in failed}) or [", ".join(str(x) for x in df[scope_col])]
            for scope in scopes:
                n = next((int(row.get("rows", 0)) for row in rows if str(row[scope_col]) == scope), 0)
                out.append(Finding(suite, cfg.type, cfg.kwargs.get("column") or cfg.kwargs.get("column_A"),
                                   not failed, Quality(cfg.meta["severity"]), n if failed else 0, n, scope))
        return out


def _forget_batch(definition: Any) -> None:
    """GX's engine keeps the frame it validated last until its next run: dropped now, a batch's frame
    is gone before the next batch is read (the row suite's peak holds one frame, not two)."""
    batches = definition.data.data_asset.datasource.get_execution_engine().batch_manager
    batches.batch_data_cache.clear()
    batches.reset_batch_cache()


def _rewrite_without(store: Store, key: str, bad: set[str]) -> pa.Table:
    """Drop failing rows from a staged file (rewritten whole); returns the rows removed."""
    t = pq.read_table(store.path(key), filesystem=store.fs)
    mask = pc.is_in(t["event_id"], value_set=pa.array(sorted(bad), pa.string()))
    removed = t.filter(mask)
    kept = t.filter(pc.invert(mask))
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "part.parquet"
        pq.write_table(kept.cast(EVENT_SCHEMA), p, compression="zstd")
        store.put_file(key, str(p))
    return removed


def _quarantine_rows(store: Store, day: str, object_id: str, removed: pa.Table, reasons: dict[str, str]) -> None:
    rows = removed.to_pylist()
    table = pa.table({
        "object_id": [object_id] * len(rows),
        "source_object": [r["source_object"] for r in rows],
        "line_number": [r["line_number"] for r in rows],
        "reason": [reasons[r["event_id"]] for r in rows],
        # the original line parsed, so its canonical event stands in for the raw bytes
        "raw": [orjson.dumps(r, default=str) for r in rows],
    }, schema=QUARANTINE_SCHEMA)
    key = layout.quality_quarantine_key(day, object_id)
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "q.parquet"
        if store.exists(key):
            table = pa.concat_tables([pq.read_table(store.path(key), filesystem=store.fs), table])
        pq.write_table(table, p, compression="zstd")
        store.put_file(key, str(p))


def validate_date(
    cfg: Config, store: Store, day: str, objects: Sequence[dict[str, Any]], *, run_id: str,
    validator: Validator | None = None,
) -> QualityResult:
    """Run the suites for one date after this run staged `objects` (ObjectResult dicts) there."""
    v = validator or Validator(cfg)
    result = QualityResult(day, run_id)
    staged = [o for o in objects if o["status"] == "staged" and o["date"] == day]
    owner = {k: o["object_id"] for o in staged for k in o["files"] if layout.is_event_key(k)}
    row_total: Counter[str] = Counter()
    per_site: dict[tuple[str, str, str | None], Finding] = {}
    bad: dict[str, dict[str, str]] = defaultdict(dict)  # file key -> {event_id: reason}
    sites = sorted({layout.event_site(k) for o in staged for k in o["files"]
                    if layout.is_event_key(k)} | {s for o in staged for s in _sites_of(cfg, o["source"])})
    with ThreadPoolExecutor(1) as counting:
        # DuckDB counts the partitions while GX checks rows (Python, one core): they meet only
        # when rows fail, and then the partitions are counted again once those rows are gone.
        counted = counting.submit(_partition_counts, store, day, sites)
        _check_rows(v, store, day, sorted(owner), row_total, per_site, bad)
        part_rows = counted.result()
    result.findings.extend(per_site.values())
    row_fail: dict[str, Counter[str]] = defaultdict(Counter)  # source -> reason -> rows moved to quarantine
    source_of = {o["object_id"]: o["source"] for o in staged}
    moved: dict[str, list[tuple[pa.Table, dict[str, str]]]] = defaultdict(list)  # object -> rows, reasons
    for key, reasons in bad.items():
        removed = _rewrite_without(store, key, set(reasons))
        moved[owner[key]].append((removed, reasons))
        row_fail[source_of[owner[key]]].update(reasons[e] for e in removed["event_id"].to_pylist())
        result.rows_quarantined.update(reasons.values())
    for oid, parts in moved.items():  # one write per object: an object over thousands of dates has as many files
        _quarantine_rows(store, day, oid, pa.concat_tables([t for t, _ in parts]),
                         {e: r for _, reasons in parts for e, r in reasons.items()})
    if bad:
        part_rows = _partition_counts(store, day, sites)
    result.findings += v.check_frame(v.partition_definition(), part_rows, "partition", "site")
    result.findings += v.check_frame(v.run_definition(), _source_counts(staged), "run_counts", "source")
    for f in result.findings:
        if not f.success:
            f.hint = explain(f, day, cfg.quality)
    _decide(cfg, result, sites)
    _hold_sources(cfg, store, result, staged, row_fail)
    store.put_json(layout.quality_key(day, run_id), result.as_dict())
    for site in sites:
        store.put_json(layout.quality_status_key(day, site), {
            "status": result.statuses[site], "run_id": run_id,
            "failures": [f.message() for f in result.findings if not f.success and f.severity == FAIL
                         and _concerns(cfg, f, site)],
            "warnings": [f.message() for f in result.findings if not f.success and f.severity == WARN
                         and _concerns(cfg, f, site)],
        })
    return result


def _check_rows(v: Validator, store: Store, day: str, keys: Sequence[str], row_total: Counter[str],
                per_site: dict[tuple[str, str, str | None], Finding], bad: dict[str, dict[str, str]]) -> None:
    """The row suite over the files' rows, batch by batch: findings per site and expectation into
    `per_site`, rows checked per site into `row_total`, failing rows with their reason into `bad`."""
    for batch in _read_ahead(_row_batches(store, keys)):
        sites_in: Counter[str] = Counter()  # rows per site, from rows per file (not a row at a time)
        for r in pc.value_counts(batch["_key"]).to_pylist():
            sites_in[layout.event_site(r["values"])] += r["counts"]
        row_total.update(sites_in)
        for etype, col, severity, failing in v.check_rows(day, batch):
            for site, n in sites_in.items():  # one finding per site and expectation, over batches
                agg = per_site.setdefault((site, etype, col), Finding(
                    "events_rows", etype, col, True, severity, scope=f"site={site}"))
                agg.checked += n
            for event_id, key in failing:
                agg = per_site[(layout.event_site(key), etype, col)]
                agg.success, agg.unexpected = False, agg.unexpected + 1
                if severity == FAIL:  # a warning is counted, and the row delivered
                    bad[key].setdefault(event_id, f"failed expectation {etype}({col})")
        del batch
        # the pool (mimalloc) keeps freed pages for reuse: hand them back between batches
        pa.default_memory_pool().release_unused()


def _read_ahead(batches: Iterator[pa.Table]) -> Iterator[pa.Table]:
    """The batches, each read by a thread while the one before it is checked: Arrow decodes Parquet
    without the GIL, so reading overlaps GX's Python. Two batches are in memory, never more."""
    def read() -> pa.Table | None:
        # the pool (mimalloc) keeps a heap per thread: hand back what the batches freed since the last read
        pa.default_memory_pool().release_unused()
        return next(batches, None)

    with ThreadPoolExecutor(1) as reader:
        ahead = reader.submit(read)
        while (box := [ahead.result()])[0] is not None:
            ahead = reader.submit(read)  # drops the last future, which held this batch
            yield box.pop()  # the caller's reference is the only one: its `del` frees the batch


def _row_batches(store: Store, keys: Sequence[str]) -> Iterator[pa.Table]:
    """Rows of many files in batches of about BATCH_ROWS, each row tagged with its file key."""
    buf: list[pa.Table] = []
    n = 0
    for key in keys:
        # one thread, reading as it goes: parallel column reads and a pre-buffered row group each
        # leave the allocator holding memory (a third of the stage's peak on a 2M-row day)
        pf = pq.ParquetFile(store.path(key), filesystem=store.fs, read_dictionary=DICT_COLUMNS, pre_buffer=False)
        for b in pf.iter_batches(batch_size=BATCH_ROWS, columns=ROW_COLUMNS, use_threads=False):
            tag = pa.DictionaryArray.from_arrays(pa.repeat(pa.scalar(0, pa.int32()), b.num_rows), pa.array([key]))
            buf.append(pa.Table.from_batches([b]).append_column("_key", tag))
            n += b.num_rows
            if n >= BATCH_ROWS:
                yield pa.concat_tables(buf)
                buf, n = [], 0
    if buf:
        yield pa.concat_tables(buf)


def _sites_of(cfg: Config, source: str) -> list[str]:
    src = next((s for s in cfg.sources if s.name == source), None)
    if src is None:
        return []
    return [src.site] if src.site else [s.name for s in cfg.sites]


def _concerns(cfg: Config, f: Finding, site: str) -> bool:
    if f.suite == "run_counts":
        return site in _sites_of(cfg, f.scope)
    if f.suite == "partition":
        return f.scope == site
    return f.scope == f"site={site}"


def _partition_counts(store: Store, day: str, sites: Sequence[str]) -> list[dict[str, Any]]:
    rows = []
    con = duckdb.connect(":memory:")
    if not store.is_local:
        con.register_filesystem(store.fs)
    try:
        for site in sites:
            keys = [k for k in store.list(layout.events_prefix(site)) if layout.day_of(k) == day]
            if not keys:
                continue
            urls = [store.path(k) if store.is_local else store.url(k) for k in keys]
            # distinct 64-bit hashes first: a tenth of the memory of distinct strings on a large day,
            # and exact when they are all distinct; only equal hashes need the strings compared
            n, d = con.execute("SELECT count(*), count(DISTINCT hash(event_id)) FROM read_parquet(?)",
                               [urls]).fetchone()
            if d < n:
                d = con.execute("SELECT count(DISTINCT event_id) FROM read_parquet(?)", [urls]).fetchone()[0]
            rows.append({"site": site, "rows": n, "distinct_event_ids": d})
    finally:
        con.close()
    return rows


def _source_counts(staged: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    agg: dict[str, Counter[str]] = defaultdict(Counter)
    for o in staged:
        s = o.get("stats") or {}
        a = agg[o["source"]]
        a["objects"] += 1
        a["lines"] += s.get("lines_read", 0)
        a["parsed"] += s.get("parsed", 0)
        a["quarantined"] += s.get("quarantined", 0)
    return [
        {"source": src, "rows": a["parsed"], "objects": a["objects"],
         "quarantine_ratio": a["quarantined"] / max(a["parsed"] + a["quarantined"], 1),
         "rows_if_objects": a["parsed"] if a["objects"] else 1}
        for src, a in sorted(agg.items())
    ]


def _decide(cfg: Config, result: QualityResult, sites: Sequence[str]) -> None:
    """A site's partition fails only on what concerns it whole (the same event twice); bad rows
    are quarantined, and a source's systemic failures hold that source alone (`_hold_sources`)."""
    for site in sites:
        failed = [f for f in result.findings if not f.success and _concerns(cfg, f, site)]
        hard = [f for f in failed if f.severity == FAIL and f.suite == "partition"]
        if hard:
            result.statuses[site] = FAIL
        elif failed:
            result.statuses[site] = WARN  # rows quarantined below the ratio, or a warning expectation
        else:
            result.statuses[site] = PASS


def _hold_sources(cfg: Config, store: Store, result: QualityResult, staged: Sequence[dict[str, Any]],
                  row_fail: dict[str, Counter[str]]) -> None:
    """Per source validated now: hold its objects of the day on a systemic sign (its run_counts
    suite failed, or more than `quality.max_failed_row_ratio` of its rows failed row expectations),
    else let them through. Recorded in holds.py's records, said in `result.holds`."""
    from agent_traffic.staging import holds

    for src in sorted({o["source"] for o in staged}):
        mine = [o for o in staged if o["source"] == src]
        failures = [f.message() for f in result.findings
                    if not f.success and f.severity == FAIL and f.suite == "run_counts" and f.scope == src]
        rows = sum(n for o in mine for k, n in o["files"].items() if layout.is_event_key(k))
        moved = sum(row_fail[src].values())
        limit = cfg.quality.max_failed_row_ratio
        if moved > limit * rows:
            hints = {f"failed expectation {f.expectation}({f.column})": f.hint for f in result.findings
                     if f.suite == "events_rows" and not f.success and f.hint}
            top = ", ".join(f"{r} ({n:,})" + (f": {hints[r]}" if r in hints else "")
                            for r, n in row_fail[src].most_common(3))
            failures.append(f"events_rows: {moved:,} of {rows:,} row(s) failed row expectations, more than "
                            f"`quality.max_failed_row_ratio` ({limit:.0%}): {top}")
        rec = holds.record(store, result.day, src, {o["object_id"]: o["url"] for o in mine}, failures, result.run_id)
        if rec["held"]:
            result.holds[src] = {"objects": sorted(rec["held"].values()), "failures": rec["failures"]}


#: Result fields that hold the rows' own values (log content): dropped before GX renders a page
ROW_VALUE_FIELDS = ("partial_unexpected_list", "partial_unexpected_counts", "partial_unexpected_index_list",
                    "unexpected_list", "unexpected_index_list", "unexpected_index_query", "unexpected_rows",
                    "details")


def _drop_row_values(ctx: Any) -> None:
    """GX renders failing values as raw HTML: the kept results carry counts only, never a value
    taken from a log line, so nothing a log writes becomes markup in the data docs."""
    results = ctx.validation_results_store
    for key in results.list_keys():
        res = results.get(key)
        dropped = False
        for r in res.results:
            values = [n for n in ROW_VALUE_FIELDS if n in r.result]
            if not isinstance(r.result.get("observed_value"), int | float | type(None)):
                values.append("observed_value")
            for name in values:
                del r.result[name]
            dropped = dropped or bool(values)
        if dropped:  # stored again only when changed: a day's passing row batches carry no values
            results.set(key, res)


def build_docs(validator: Validator, store: Store, day: str) -> str | None:
    """Render GX data docs for the validations run in this process, without the rows' values and
    made offline (`offline_html`); upload under _quality/."""
    gx, ctx = validator._gx
    _drop_row_values(ctx)
    with tempfile.TemporaryDirectory() as d:
        ctx.add_data_docs_site(site_name="staging", site_config={
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": d},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        })
        try:
            ctx.build_data_docs(site_names=["staging"])
        finally:
            ctx.delete_data_docs_site("staging")
        for p in Path(d).rglob("*"):
            if p.is_file() and p.suffix in (".html", ".css"):
                store.put_bytes(f"{layout.docs_prefix(day)}{p.relative_to(d)}", offline_html(p.read_bytes()))
    _docs_index(store, day)
    return store.url(layout.docs_index_key(day))


def _docs_index(store: Store, day: str) -> None:
    """Our own index of the data docs' pages: GX's builds its table with scripts, which are gone."""
    from html import escape

    from agent_traffic.pages import page

    base = layout.docs_prefix(day)
    pages = [k.removeprefix(base) for k in store.list(base) if k.endswith(".html") and k != layout.docs_index_key(day)]
    items = "".join(f"<li><a href='{escape(p, quote=True)}'>{escape(p)}</a></li>" for p in sorted(pages))
    store.put_bytes(layout.docs_index_key(day), page(f"GX data docs · {day}", (
        "<p>Great Expectations' pages for this date: each suite's expectations and each validation's "
        "results (counts only: the failing values themselves are in the quarantine, never in a page).</p>"
        f"<ul id='docs'>{items or '<li>none</li>'}</ul>")).encode())
