"""Great Expectations suites on real staged data: pass, quarantine failing rows, hold a partition."""

from __future__ import annotations

import shutil
from datetime import date, timedelta
from pathlib import Path

import duckdb
import pytest

from agent_traffic.devtools.samples import combined_lines, gzip_log
from agent_traffic.run.runtime import Runtime
from agent_traffic.run.steps import discover_objects, process_object
from agent_traffic.staging.holds import held_partitions, source_holds
from agent_traffic.staging.validate import (
    FAIL,
    PASS,
    WARN,
    Validator,
    build_docs,
    validate_date,
)
from tests.conftest import write_config

DAY = date(2026, 11, 21)


@pytest.fixture(scope="module")
def validator_cache() -> dict:
    return {}


def stage(tmp_path: Path, files: dict[str, list[str]], cache: dict):
    folder = tmp_path / "logs" / f"{DAY:%Y/%m/%d}"
    folder.mkdir(parents=True, exist_ok=True)
    for name, lines in files.items():
        (folder / name).write_bytes(gzip_log(lines))
    cfg = write_config(tmp_path / "c.yaml", staging=str(tmp_path / "staging"),
                       source_url=str(tmp_path / "logs") + "/{date:%Y/%m/%d}/*.gz", base_url="http://127.0.0.1:9")
    rt = Runtime.load(str(cfg), "run-1")
    objects = [process_object(rt, ref).as_dict() for ref in discover_objects(rt, [DAY]).objects]
    if "v" not in cache:  # GX takes seconds to import and set up: share one validator
        cache["v"] = Validator(rt.cfg)
    cache["v"].cfg = rt.cfg
    return rt, objects, cache["v"]


def test_clean_day_passes(tmp_path: Path, validator_cache: dict) -> None:
    rt, objects, v = stage(tmp_path, {"a.gz": list(combined_lines(DAY, 2000, malformed_every=0))}, validator_cache)
    res = validate_date(rt.cfg, rt.store, str(DAY), objects, run_id="run-1", validator=v)
    assert res.statuses == {"example.com": PASS}
    assert not [f for f in res.findings if not f.success]
    assert held_partitions(rt.store, str(DAY), ["example.com"]) == {}
    rec = rt.store.get_json(f"_quality/date={DAY}/run-1.json")
    assert rec["statuses"] == {"example.com": PASS} and rec["expectations_checked"] > 10
    docs = build_docs(v, rt.store, str(DAY))
    assert docs.endswith("index.html") and rt.store.exists(f"_quality/date={DAY}/docs/index.html")


def test_rows_outside_the_date_are_quarantined_with_the_expectation(tmp_path: Path, validator_cache: dict) -> None:
    lines = list(combined_lines(DAY, 2000, malformed_every=0))
    stray = list(combined_lines(DAY - timedelta(days=30), 10, malformed_every=0, tag="stray"))
    rt, objects, v = stage(tmp_path, {"a.gz": lines + stray}, validator_cache)
    res = validate_date(rt.cfg, rt.store, str(DAY), objects, run_id="run-1", validator=v)
    # 10 of 2,010 rows fail: under the 1% ratio, so quarantined with a warning, not held
    assert res.statuses == {"example.com": WARN}
    assert sum(res.rows_quarantined.values()) == 10
    reasons = duckdb.sql(
        f"SELECT reason, count(*) FROM read_parquet('{tmp_path}/staging/quarantine/**/*quality.parquet') GROUP BY 1"
    ).fetchall()
    assert reasons == [("failed expectation expect_column_values_to_be_between(ts_naive)", 10)]
    left = duckdb.sql(f"SELECT count(*) FROM read_parquet('{tmp_path}/staging/events/**/*.parquet') "
                      "WHERE url LIKE '%seq=stray%'").fetchall()[0][0]
    assert left == 0  # moved to quarantine, not dropped and not left in staging
    # the verdicts are an enum, stored as the plain words
    raw = (tmp_path / "staging" / f"_quality/date={DAY}/run-1.json").read_text()
    assert '"example.com": "warn"' in raw and '"severity": "fail"' in raw
    status = (tmp_path / "staging" / f"_quality/date={DAY}/site=example.com/status.json").read_text()
    assert '"status": "warn"' in status


def test_many_failing_rows_hold_their_source_not_the_partition(tmp_path: Path, validator_cache: dict) -> None:
    lines = list(combined_lines(DAY, 500, malformed_every=0))
    stray = list(combined_lines(DAY + timedelta(days=400), 100, malformed_every=0))
    rt, objects, v = stage(tmp_path, {"a.gz": lines + stray}, validator_cache)
    res = validate_date(rt.cfg, rt.store, str(DAY), objects, run_id="run-1", validator=v)
    # bad rows never hold good rows: the partition passes with a warning; a systemic share of
    # failing rows holds that source's objects of the day, and only those
    assert res.statuses == {"example.com": WARN}
    assert held_partitions(rt.store, str(DAY), ["example.com"]) == {}
    held = source_holds(rt.store, str(DAY))["web"]
    assert list(held["held"]) == [objects[0]["object_id"]]
    said = next(m for m in held["failures"] if "(ts_naive)" in m)  # what the user reads
    assert "outside 2026-11-19 12:00 .. 2026-11-23 12:00 UTC" in said and "are these logs from another day" in said


def test_high_quarantine_ratio_fails_the_run_suite(tmp_path: Path, validator_cache: dict) -> None:
    lines = list(combined_lines(DAY, 300, malformed_every=0)) + ["garbage"] * 30
    rt, objects, v = stage(tmp_path, {"a.gz": lines}, validator_cache)
    res = validate_date(rt.cfg, rt.store, str(DAY), objects, run_id="run-1", validator=v)
    assert res.statuses == {"example.com": WARN} and list(res.holds) == ["web"]
    status = source_holds(rt.store, str(DAY))["web"]
    assert any("run_counts: expect_column_values_to_be_between(quarantine_ratio) failed" in m
               and "more than 5% of the source's lines were quarantined (`quality.quarantine_ratio_fail`)" in m
               for m in status["failures"]), status


def test_duplicate_event_ids_in_a_partition_fail(tmp_path: Path, validator_cache: dict) -> None:
    rt, objects, v = stage(tmp_path, {"a.gz": list(combined_lines(DAY, 400, malformed_every=0))}, validator_cache)
    key = next(k for k in objects[0]["files"] if k.startswith("events/"))
    src = Path(rt.store.path(key))
    shutil.copy(src, src.with_name("part-stale-copy.parquet"))  # a stale file left by hand
    res = validate_date(rt.cfg, rt.store, str(DAY), objects, run_id="run-1", validator=v)
    assert res.statuses == {"example.com": FAIL}
    assert any(f.suite == "partition" and not f.success for f in res.findings)
    assert any("--reprocess" in f.message() for f in res.findings if f.suite == "partition" and not f.success)


def test_every_expectation_of_the_suites_is_explained_in_plain_words(tmp_path: Path, validator_cache: dict) -> None:
    """A failure names what it means and what to look at: an expectation added to a suite without
    words for it fails here."""
    from agent_traffic.staging.validate import Finding, explain

    rt, _, v = stage(tmp_path, {"a.gz": list(combined_lines(DAY, 10, malformed_every=0))}, validator_cache)
    suites = [v.row_definition(str(DAY)), v.partition_definition(), v.run_definition()]
    for e in (e for d in suites for e in d.suite.expectations):
        col = getattr(e, "column", None) or getattr(e, "column_A", None)
        for severity in (FAIL, WARN):
            f = Finding("suite", e.expectation_type, col, False, severity, 1, 2, "site=example.com")
            assert explain(f, str(DAY), rt.cfg.quality), (e.expectation_type, col)


def test_failed_suite_holds_delivery_until_the_input_is_fixed(tmp_path: Path, sandbox, api_key: str) -> None:
    from agent_traffic.run.runner import run
    from agent_traffic.secrets import env_resolver

    folder = tmp_path / "logs" / f"{DAY:%Y/%m/%d}"
    folder.mkdir(parents=True)
    good = list(combined_lines(DAY, 600, malformed_every=0, tag="g"))
    stray = list(combined_lines(DAY + timedelta(days=400), 60, malformed_every=0, tag="s"))
    (folder / "a.gz").write_bytes(gzip_log(good + stray))
    cfg = write_config(tmp_path / "c.yaml", staging=str(tmp_path / "staging"),
                       source_url=str(tmp_path / "logs") + "/{date:%Y/%m/%d}/*.gz", base_url=sandbox.url)
    resolver = env_resolver({"SCRUNCH_API_KEY_EXAMPLE": api_key})
    s = run(Runtime.load(str(cfg), "r1"), DAY, DAY, resolver=resolver, progress=lambda _m: None)
    assert not s["ok"] and s["quality"][str(DAY)]["statuses"] == {"example.com": WARN}
    assert list(s["holds"][str(DAY)]) == ["web"]  # the source's object, held
    d = s["destinations"][0]
    assert d["held"] == d["events_staged"] > 0 and d["delivered"] == 0 and d["balanced"]
    assert any("held, not sent, because the data-quality suites failed" in p for p in s["problems"])
    assert sandbox.accepted() == []
    (folder / "a.gz").write_bytes(gzip_log(good))  # the user fixes the input
    s2 = run(Runtime.load(str(cfg), "r2"), DAY, DAY, resolver=resolver, progress=lambda _m: None)
    assert s2["ok"] and s2["quality"][str(DAY)]["statuses"] == {"example.com": PASS}
    d2 = s2["destinations"][0]
    assert d2["held"] == 0 and d2["delivered"] > 0 and len(sandbox.accepted()) == d2["delivered"]


def test_row_suite_flags_each_bad_row_by_its_expectation(tmp_path: Path, validator_cache: dict) -> None:
    """The dtypes check_rows hands GX (float status, nanosecond times) keep every check working,
    a time beyond the nanosecond range included."""
    from datetime import UTC, datetime

    import pyarrow as pa

    rt, _objects, v = stage(tmp_path, {"a.log.gz": combined_lines(DAY, 3, seed=7)}, validator_cache)
    noon = datetime(2026, 11, 21, 12, tzinfo=UTC)
    rows = {  # event id -> (ts, status, path)
        "ok": (noon, 200, "/a"), "status": (noon, 700, "/a"), "path": (noon, 200, "a"),
        "late": (noon + timedelta(days=3), 200, "/a"), "year-2999": (datetime(2999, 1, 1, tzinfo=UTC), 200, "/a"),
        "year-1000": (datetime(1000, 1, 1, tzinfo=UTC), 200, "/a"),
    }
    site = rt.cfg.sites[0].name
    table = pa.table({
        "event_id": list(rows), "ts": pa.array([r[0] for r in rows.values()], pa.timestamp("us", "UTC")),
        "site": [site] * len(rows), "method": ["GET"] * len(rows), "path": [r[2] for r in rows.values()],
        "status": pa.array([r[1] for r in rows.values()], pa.int32()), "url": ["https://x/a"] * len(rows),
        "user_agent": ["ua"] * len(rows), "_key": ["k"] * len(rows),
    })
    failing = {(etype, col): sorted(e for e, _ in bad) for etype, col, _sev, bad in v.check_rows(DAY.isoformat(), table)
               if bad}
    assert failing == {
        ("expect_column_values_to_be_between", "status"): ["status"],
        ("expect_column_values_to_match_regex", "path"): ["path"],
        ("expect_column_values_to_be_between", "ts_naive"): ["late", "year-1000", "year-2999"],
    }


def test_gx_batches_are_not_fingerprinted(tmp_path: Path, validator_cache: dict) -> None:
    """The Validator turns off GX's per-batch md5 of every cell (half the row suite's time); the
    knob is a module constant of GX's pandas engine, so an upgrade that drops it must fail here."""
    import pandas as pd
    from great_expectations.execution_engine import pandas_execution_engine

    _rt, _objects, v = stage(tmp_path, {"a.log.gz": combined_lines(DAY, 3, seed=7)}, validator_cache)
    v._gx  # noqa: B018 - builds the GX context, which sets the knob
    assert pandas_execution_engine.HASH_THRESHOLD == 0
    engine = pandas_execution_engine.PandasExecutionEngine()
    from great_expectations.core.batch_spec import RuntimeDataBatchSpec

    _data, markers = engine.get_batch_data_and_markers(RuntimeDataBatchSpec(batch_data=pd.DataFrame({"a": [1, 2]})))
    assert "pandas_data_fingerprint" not in markers and "ge_load_time" in markers


def test_row_suite_checks_dictionary_columns_as_plain_ones(tmp_path: Path, validator_cache: dict) -> None:
    """_row_batches hands GX site, url and user_agent as dictionaries (pandas categoricals): a null
    url, an unknown site and a missing user agent are still each named by their expectation."""
    from datetime import UTC, datetime

    import pyarrow as pa

    rt, _objects, v = stage(tmp_path, {"a.log.gz": combined_lines(DAY, 3, seed=7)}, validator_cache)
    site = rt.cfg.sites[0].name
    ids = ["ok", "no-url", "other-site", "no-ua"]
    table = pa.table({
        "event_id": ids, "ts": pa.array([datetime(2026, 11, 21, 12, tzinfo=UTC)] * 4, pa.timestamp("us", "UTC")),
        "site": pa.array([site, site, "elsewhere.example", site]).dictionary_encode(),
        "method": ["GET"] * 4, "path": ["/a"] * 4, "status": pa.array([200] * 4, pa.int32()),
        "url": pa.array(["https://x/a", None, "https://x/a", "https://x/a"]).dictionary_encode(),
        "user_agent": pa.array(["ua", "ua", "ua", None]).dictionary_encode(),
        "_key": pa.array(["k"] * 4).dictionary_encode(),
    })
    failing = {(etype, col): sorted(e for e, _ in bad) for etype, col, _sev, bad in v.check_rows(DAY.isoformat(), table)
               if bad}
    assert failing == {
        ("expect_column_values_to_not_be_null", "url"): ["no-url"],
        ("expect_column_values_to_not_be_null", "user_agent"): ["no-ua"],
        ("expect_column_values_to_be_in_set", "site"): ["other-site"],
    }


def test_no_frame_outlives_its_batch(tmp_path: Path, validator_cache: dict) -> None:
    """GX's engine keeps the last frame it validated; check_rows drops it, so the row suite's memory
    holds one batch's frame at a time, not the last one and the next."""
    import gc
    from datetime import UTC, datetime

    import pandas as pd
    import pyarrow as pa

    rt, _objects, v = stage(tmp_path, {"a.log.gz": combined_lines(DAY, 3, seed=7)}, validator_cache)
    table = pa.table({
        "event_id": ["a", "b"], "ts": pa.array([datetime(2026, 11, 21, 12, tzinfo=UTC)] * 2, pa.timestamp("us", "UTC")),
        "site": [rt.cfg.sites[0].name] * 2, "method": ["GET"] * 2, "path": ["/a", "x"],
        "status": pa.array([200, 200], pa.int32()), "url": ["https://x/a"] * 2, "user_agent": ["ua"] * 2,
        "_key": ["k"] * 2,
    })
    failing = v.check_rows(DAY.isoformat(), table)  # a failure: GX runs twice
    assert [(col, bad) for _etype, col, _sev, bad in failing if bad] == [("path", [("b", "k")])]
    gc.collect()
    # type(), not isinstance(): the latter asks lazy proxies elsewhere in the process for __class__
    assert not [o for o in gc.get_objects() if type(o) is pd.DataFrame and "ts_naive" in o.columns]


def test_batches_are_read_ahead_by_another_thread_two_at_most() -> None:
    """_read_ahead reads the next batch in a thread while the caller checks one (Arrow decodes
    without the GIL), and a batch the caller is done with is freed: never more than two alive."""
    import gc
    import threading
    import time
    import weakref

    from agent_traffic.staging.validate import _read_ahead

    class Batch:
        def __init__(self, n: int) -> None:
            self.n, self.thread = n, threading.get_ident()

    alive: list[weakref.ref] = []

    def batches():
        for n in range(6):
            b = Batch(n)
            alive.append(weakref.ref(b))
            yield b

    seen = []
    for b in _read_ahead(batches()):
        deadline = time.monotonic() + 10
        while b.n < 5 and len(alive) < b.n + 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert b.n == 5 or len(alive) == b.n + 2, "the next batch is read while this one is checked"
        gc.collect()
        assert sum(r() is not None for r in alive) <= 2
        assert b.thread != threading.get_ident()
        seen.append(b.n)
        del b
    assert seen == list(range(6))


def test_row_batches_read_the_dictionary_columns_as_dictionaries(tmp_path: Path, validator_cache: dict) -> None:
    from agent_traffic.staging.validate import DICT_COLUMNS, _row_batches

    rt, objects, _v = stage(tmp_path, {"a.gz": list(combined_lines(DAY, 300, malformed_every=0))}, validator_cache)
    keys = sorted(k for o in objects for k in o["files"] if k.startswith("events/"))
    batches = list(_row_batches(rt.store, keys))
    assert sum(b.num_rows for b in batches) == sum(n for o in objects for k, n in o["files"].items()
                                                   if k.startswith("events/"))
    for b in batches:
        assert {c for c in DICT_COLUMNS if str(b.schema.field(c).type).startswith("dictionary")} == set(DICT_COLUMNS)
        assert b.schema.field("path").type == "string" and b.schema.field("event_id").type == "string"


def _prints_ok(code: str, timeout: float) -> None:
    """Run `code` in a fresh interpreter (imports are what it checks) and expect it to print ok."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    assert out.stdout.strip() == "ok", out.stderr[-2000:]


GX_USES = {
    "import": "v._gx",
    # a suite built before anything else asked for GX: its expectation classes import under the hiding too
    "suite first": "v.partition_definition()",
}


@pytest.mark.parametrize("use", GX_USES.values(), ids=GX_USES.keys())
def test_gx_imports_without_the_cloud_clients_it_does_not_use(use: str) -> None:
    """GX imports every cloud and database client that is installed; the Validator hides those not
    imported yet while GX imports (a quarter of its memory), and they import normally afterwards."""

    code = (
        "import sys\n"
        "from agent_traffic.staging.validate import GX_UNUSED_CLIENTS, Validator, _Absent\n"
        "before = {m.partition('.')[0] for m in sys.modules}\n"
        "v = Validator.__new__(Validator)\n"
        f"{use}\n"
        "leaked = sorted({m.partition('.')[0] for m in sys.modules} & GX_UNUSED_CLIENTS - before)\n"
        "assert not leaked, leaked\n"
        "assert not [f for f in sys.meta_path if isinstance(f, _Absent)]\n"
        "from great_expectations.compatibility import aws, not_imported\n"
        "try:\n"
        "    import boto3\n"
        "except ImportError:\n"
        "    pass\n"
        "else:\n"
        "    assert isinstance(aws.boto3, not_imported.NotImported)  # GX saw it absent, the user's import works\n"
        "print('ok')\n"
    )
    _prints_ok(code, timeout=120)



@pytest.mark.parametrize("use", GX_USES.values(), ids=GX_USES.keys())
def test_gx_imports_scipy_and_altair_only_when_used(use: str) -> None:
    """GX imports scipy and altair for expectations these suites never run (a third of its import
    time): they are stand-ins while GX imports, nothing else ever sees one, and GX's own use of
    them still gets the real package."""

    code = (
        "import sys\n"
        "from agent_traffic.staging.validate import GX_DEFERRED, Validator, _Defer, _Deferred\n"
        "v = Validator.__new__(Validator)\n"
        f"{use}\n"
        "assert not {m.partition('.')[0] for m in sys.modules} & GX_DEFERRED, 'imported by GX'\n"
        "assert not [n for n, m in sys.modules.items() if isinstance(m, _Deferred)], 'a stand-in left'\n"
        "assert not [f for f in sys.meta_path if isinstance(f, _Defer)]\n"
        "import great_expectations.expectations.core.expect_column_kl_divergence_to_be_less_than as kl\n"
        "import numpy as np\n"
        "assert abs(kl.stats.entropy([0.5, 0.5], [0.9, 0.1]) - 0.5108256) < 1e-6  # GX's use: the real scipy\n"
        "import scipy.stats\n"
        "assert not isinstance(scipy.stats, _Deferred) and kl.stats.entropy is scipy.stats.entropy\n"
        "import altair\n"
        "assert kl.alt.Chart is altair.Chart and not isinstance(altair, _Deferred)\n"
        "print('ok')\n"
    )
    _prints_ok(code, timeout=120)


def test_a_deferred_package_used_early_or_by_another_thread_is_the_real_one() -> None:
    """A stand-in called while its block still runs, or used by another thread, imports the real
    package then, and the block stops standing in for it."""

    code = (
        "import importlib, sys, threading\n"
        "from agent_traffic.staging.validate import _deferred, _Deferred\n"
        "assert 'colorsys' not in sys.modules and 'tomllib' not in sys.modules\n"
        "other = []\n"
        "with _deferred({'colorsys', 'tomllib'}):\n"
        "    import colorsys, tomllib\n"
        "    assert isinstance(colorsys, _Deferred) and isinstance(tomllib, _Deferred)\n"
        "    t = threading.Thread(target=lambda: other.append(importlib.import_module('tomllib').loads('a = 1')))\n"
        "    t.start(); t.join()\n"
        "    assert other == [{'a': 1}]\n"
        "    import tomllib as again\n"
        "    assert not isinstance(again, _Deferred) and tomllib.loads is again.loads\n"
        "    assert colorsys.rgb_to_hsv(1.0, 0.0, 0.0) == (0.0, 1.0, 1.0)  # called inside the block\n"
        "    import colorsys as again\n"
        "    assert not isinstance(again, _Deferred)\n"
        "assert not [n for n, m in sys.modules.items() if isinstance(m, _Deferred)]\n"
        "print('ok')\n"
    )
    _prints_ok(code, timeout=60)
