"""The staging views (`agent_traffic.team.query`) and `agent-traffic query`, over a store staged by the
real pipeline: two days of logs, one of them with a Scrunch CSV that records response times, a
vendor that rejects one chunk (a dead letter), a dry-run day (pending), quality results, and files
from before and after the newer columns (verification, referred_by) existed."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import random
import secrets
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from agent_traffic.cli import main
from agent_traffic.devtools import samples
from agent_traffic.devtools.sandbox import Sandbox
from agent_traffic.ingest.storage import Store, StoreOptions
from agent_traffic.run.runner import run
from agent_traffic.run.runtime import Runtime
from agent_traffic.run.summary import ledger_status
from agent_traffic.secrets import env_resolver
from agent_traffic.team.query import OPTIONAL_EVENT_FIELDS, TABLES, connect
from tests.conftest import REPO, make_bucket, write_config

DAY1, DAY2 = date(2026, 11, 20), date(2026, 11, 21)
HOSTILE_PATH = "/</script><em>bold</em>&amp;"
GX_SUITE_RESULT = {  # the shape of GX 1.24's ExpectationSuiteValidationResult.to_json_dict()
    "success": False, "suite_name": "events_rows", "id": None, "suite_parameters": {}, "meta": {},
    "statistics": {"evaluated_expectations": 2, "successful_expectations": 1, "unsuccessful_expectations": 1,
                   "success_percent": 50.0},
    "results": [
        {"success": False, "meta": {}, "exception_info": {"raised_exception": False},
         "expectation_config": {"type": "expect_column_values_to_be_between", "severity": "critical", "meta": {},
                                "kwargs": {"column": "status", "min_value": 100, "max_value": 599}},
         "result": {"element_count": 1998, "unexpected_count": 2, "unexpected_percent": 0.1}},
        {"success": True, "meta": {}, "exception_info": {"raised_exception": False},
         "expectation_config": {"type": "expect_column_values_to_match_regex", "severity": "critical", "meta": {},
                                "kwargs": {"column": "path", "regex": "^/"}},
         "result": {"element_count": 1998, "unexpected_count": 0, "unexpected_percent": 0.0}},
    ],
}


@dataclass
class Staged:
    root: Path
    store: Store
    config: Path
    summaries: dict[str, dict]

    @property
    def staging(self) -> Path:
        return self.root / "staging"

    def raw_events(self) -> str:
        """The staged events read straight from Parquet, without agent_traffic.team.query."""
        return (f"read_parquet('{self.staging}/events/**/*.parquet', hive_partitioning = true, "
                "union_by_name = true)")


def scrunch_csv(day: date, n: int, seed: int) -> bytes:
    """A Scrunch backfill CSV: the format that records response times."""
    rng = random.Random(seed)
    uas, weights = zip(*samples.USER_AGENTS, strict=True)
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    rows = ["timestamp,domain,user_agent,url,path,method,status_code,response_time_ms,ip_address"]
    for i in range(n):
        ts = start + timedelta(seconds=30 + i * 80000 // n)
        path = rng.choice([p for p in samples.PATHS if "?" not in p])
        ua = rng.choices(uas, weights)[0].replace('"', "")
        status = rng.choice([200, 200, 200, 404, 500])
        rows.append(f'{int(ts.timestamp())},example.com,"{ua}",https://example.com{path},{path},GET,{status},'
                    f"{rng.uniform(5, 900):.1f},10.1.{i % 250}.{1 + i % 200}")
    return gzip.compress(("\n".join(rows) + "\n").encode(), mtime=0)


def _rewrite_versions(staging: Path) -> None:
    """Make staging hold files of two pipeline versions, as after an upgrade.

    OpenAI's files get the newer columns (a verification verdict per row, and a column no
    release knows yet); human files get `referred_by`; every other file loses the newer columns,
    like a file staged before they existed.
    """
    optional = [f.name for f in OPTIONAL_EVENT_FIELDS]
    for path in sorted((staging / "events").rglob("*.parquet")):
        t = pq.read_table(path)
        t = t.drop_columns([c for c in optional + ["future_col"] if c in t.column_names])
        provider = path.parent.parent.name.removeprefix("provider=")
        if provider == "openai":
            verdicts = ["verified", "spoofed", "unverifiable"]
            t = t.append_column("verification", pa.array(
                [verdicts[n % 3] for n in t["line_number"].to_pylist()], pa.string()))
            t = t.append_column("future_col", pa.array([1] * t.num_rows, pa.int64()))
        elif provider == "none":
            referer = pc.fill_null(t["referer"], "")
            t = t.append_column("referred_by", pc.if_else(
                pc.match_substring(referer, "chatgpt.com"), "openai",
                pc.if_else(pc.match_substring(referer, "perplexity.ai"), "perplexity", pa.scalar(None, pa.string()))))
        pq.write_table(t, path)


def build_staging(root: Path) -> Staged:
    """Run the pipeline for two days against the local receiver; returns the staged store."""
    logs = root / "logs"
    samples.write_day(logs, DAY1, lines=2000, files=2, seed=1)
    samples.write_day(logs, DAY2, lines=2000, files=2, seed=2)
    (logs / f"{DAY2:%Y/%m/%d}" / "scrunch-0.csv.gz").write_bytes(scrunch_csv(DAY2, 400, seed=3))
    gptbot = next(ua for ua, _ in samples.USER_AGENTS if "GPTBot" in ua)
    (logs / f"{DAY1:%Y/%m/%d}" / "hostile.log.gz").write_bytes(samples.gzip_log(  # markup in a path
        f'10.9.9.{i} - - [20/Nov/2026:12:{i:02d}:00 +0000] "GET {HOSTILE_PATH} HTTP/1.1" 404 0 "-" "{gptbot}"'
        for i in range(1, 60)))
    key = "test-" + secrets.token_hex(16)
    summaries = {}
    with Sandbox(data_dir=root / "sandbox", api_keys=[key], seed=7) as sb:
        sb.retry_after = 0
        cfg = write_config(root / "cfg.yaml", staging=str(root / "staging"),
                           source_url=str(logs) + "/{date:%Y/%m/%d}/*.gz", base_url=sb.url,
                           delivery={"concurrency": 1, "max_attempts": 2}, extra_dest={"max_batch_events": 50})
        resolver = env_resolver({"SCRUNCH_API_KEY_EXAMPLE": key})
        sb.inject("422")  # the first chunk is rejected: a dead letter with the vendor's answer
        rt = Runtime.load(str(cfg), "run-day1")
        summaries["day1"] = run(rt, DAY1, DAY1, resolver=resolver, progress=lambda _m: None)
        rt = Runtime.load(str(cfg), "run-day2")
        summaries["day2"] = run(rt, DAY2, DAY2, dry_run=True, outbox=Store(str(root / "outbox")),
                                resolver=resolver, progress=lambda _m: None)
    store = Store(str(root / "staging"))
    _rewrite_versions(root / "staging")
    store.put_json(f"_quality/date={DAY2}/site=example.com/status.json", {
        "status": "fail", "run_id": "run-day2", "warnings": [],
        "failures": ["partition: expect_column_values_to_be_unique(event_id) failed on 3 of 2,400 row(s) "
                     "[site=example.com]"]})
    store.put_json(f"_quality/date={DAY2}/run-day2.json", {
        "date": str(DAY2), "run_id": "run-day2", "statuses": {"example.com": "fail"}, "rows_quarantined": {},
        "expectations_checked": 2, "findings": [
            {"suite": "partition", "expectation": "expect_column_values_to_be_unique", "column": "event_id",
             "success": False, "severity": "fail", "unexpected": 3, "checked": 2400, "scope": "site=example.com",
             "message": "partition: expect_column_values_to_be_unique(event_id) failed on 3 of 2,400 row(s)"}]})
    store.put_json(f"_quality/date={DAY1}/gx-run-day1.json", GX_SUITE_RESULT)
    store.put_bytes(f"_quality/date={DAY1}/docs/index.html", b"<html><body>GX data docs</body></html>")
    return Staged(root, store, cfg, summaries)


_SHARED: dict[Path, Staged] = {}


def shared_staging(tmp_path_factory: pytest.TempPathFactory) -> Staged:
    """One staged store per test session for the modules that only read it (and add reports)."""
    base = tmp_path_factory.getbasetemp()
    if base not in _SHARED:
        _SHARED[base] = build_staging(tmp_path_factory.mktemp("staged"))
    return _SHARED[base]


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Staged:
    return shared_staging(tmp_path_factory)


def _q(con: duckdb.DuckDBPyConnection, sql: str) -> list[tuple]:
    return con.sql(sql).fetchall()


def test_every_view_exists_and_events_match_the_parquet(staged: Staged) -> None:
    con = connect(staged.store)
    assert {r[0] for r in _q(con, "SHOW TABLES")} == set(TABLES)
    raw = duckdb.sql(f"SELECT count(*), count(DISTINCT event_id) FROM {staged.raw_events()}").fetchall()[0]
    parsed = sum(s["lines"]["parsed"] for s in staged.summaries.values())
    assert raw == (parsed, parsed)
    assert _q(con, "SELECT count(*), count(DISTINCT event_id) FROM events") == [raw]
    # every schema column, in the contract's order, then the newer ones and the date partition
    cols = [r[0] for r in _q(con, "DESCRIBE events")]
    assert cols[:3] == ["event_id", "ts", "site"] and cols[-1] == "date"
    assert {"verification", "resource_type", "referred_by", "cloudflare_category", "future_col"} <= set(cols)
    per_day = dict(_q(con, "SELECT date, count(*) FROM events GROUP BY date"))
    want = dict(duckdb.sql(f"SELECT date, count(*) FROM {staged.raw_events()} GROUP BY date").fetchall())
    assert per_day == want and set(per_day) == {DAY1, DAY2}


def test_a_date_range_limits_every_view(staged: Staged) -> None:
    con = connect(staged.store, DAY2, DAY2)
    assert {d for (d,) in _q(con, "SELECT DISTINCT date FROM events")} == {DAY2}
    assert {d for (d,) in _q(con, "SELECT DISTINCT date FROM quarantine")} == {DAY2}
    assert {d for (d,) in _q(con, "SELECT DISTINCT date FROM manifests")} == {DAY2}
    assert {d for (d,) in _q(con, "SELECT DISTINCT date FROM deliveries")} == {DAY2}
    assert [r[0] for r in _q(con, "SELECT run_id FROM runs")] == ["run-day2"]
    assert _q(con, "SELECT count(*) FROM events")[0][0] == staged.summaries["day2"]["lines"]["parsed"]


def test_newer_columns_are_null_in_older_files_and_used_when_present(staged: Staged) -> None:
    con = connect(staged.store)
    got = dict(_q(con, """SELECT provider || ':' || COALESCE(verification, 'absent'), count(*)
                          FROM events WHERE provider IN ('openai', 'anthropic') GROUP BY ALL"""))
    want = dict(duckdb.sql(f"""
        SELECT provider || ':' || (CASE line_number % 3 WHEN 0 THEN 'verified' WHEN 1 THEN 'spoofed'
                                   ELSE 'unverifiable' END), count(*)
        FROM {staged.raw_events()} WHERE provider = 'openai' GROUP BY ALL
        UNION ALL SELECT 'anthropic:absent', count(*) FROM {staged.raw_events()} WHERE provider = 'anthropic'
        """).fetchall())
    assert got == want and len(got) == 4
    assert _q(con, "SELECT count(*) FROM events WHERE future_col = 1") == _q(
        con, "SELECT count(*) FROM events WHERE provider = 'openai'")
    referred = dict(_q(con, "SELECT referred_by, count(*) FROM events WHERE referred_by IS NOT NULL GROUP BY ALL"))
    assert set(referred) == {"openai", "perplexity"}
    assert _q(con, "SELECT count(*) FROM events WHERE resource_type IS NOT NULL AND provider = 'anthropic'") == [(0,)]


def test_deliveries_agree_with_the_run_summary_ledger(staged: Staged) -> None:
    from agent_traffic.config import load_config

    cfg = load_config(staged.config)
    con = connect(staged.store)
    for day in (DAY1, DAY2):
        (st,) = ledger_status(cfg, staged.store, [str(day)])
        got = dict(_q(con, f"""SELECT outcome, CAST(sum(events) AS BIGINT) FROM deliveries
                               WHERE date = DATE '{day}' GROUP BY outcome"""))
        assert got.get("delivered", 0) == st.delivered
        assert got.get("failed", 0) == st.failed
        assert got.get("pending", 0) == st.pending
        assert got.get("held", 0) == st.held
        assert got.get("not_selected", 0) == sum(st.not_selected.values())
        assert got.get("not_eligible", 0) == sum((getattr(st, "not_eligible", None) or {}).values())
        assert got.get("too_old", 0) == getattr(st, "too_old", 0)
        assert sum(got.values()) == st.events_staged
    day1 = dict(_q(con, f"SELECT outcome, sum(events) FROM deliveries WHERE date = DATE '{DAY1}' GROUP BY ALL"))
    assert day1["delivered"] > 0 and day1["failed"] > 0 and "pending" not in day1
    # the dry-run day's chunks were never sent, and its partition failed its quality checks: held
    assert _q(con, f"SELECT DISTINCT outcome FROM deliveries WHERE date = DATE '{DAY2}' ORDER BY 1") == [
        ("held",), ("not_selected",)]
    # the dead letter keeps the vendor's status and answer
    (dl,) = _q(con, "SELECT http_status, events, vendor_answer, reason FROM dead_letters JOIN "
                    "(SELECT DISTINCT reason, destination FROM deliveries WHERE outcome = 'failed') USING (destination)")
    assert dl[0] == 422 and dl[1] == day1["failed"] and dl[2] and dl[3] == "HTTP 422"


def test_quarantine_manifests_and_runs(staged: Staged) -> None:
    con = connect(staged.store)
    reasons: dict[str, int] = {}
    for s in staged.summaries.values():
        for reason, n in s["lines"]["quarantine_reasons"].items():
            reasons[reason] = reasons.get(reason, 0) + n
    assert dict(_q(con, "SELECT reason, count(*) FROM quarantine GROUP BY reason")) == reasons
    assert _q(con, "SELECT count(*) FROM quarantine WHERE raw IS NULL OR line_number < 1") == [(0,)]
    m = _q(con, """SELECT count(*), sum(lines_read), sum(parsed), sum(quarantined), sum(events_staged),
                          count(*) FILTER (format = 'scrunch_csv') FROM manifests""")[0]
    read = sum(s["lines"]["read"] for s in staged.summaries.values())
    parsed = sum(s["lines"]["parsed"] for s in staged.summaries.values())
    assert m == (6, read, parsed, sum(reasons.values()), parsed, 1)
    assert _q(con, "SELECT stats->>'lines_read' IS NOT NULL FROM manifests LIMIT 1") == [(True,)]
    runs = _q(con, "SELECT run_id, first_date, ok, dry_run, lines_read FROM runs ORDER BY run_id")
    d1, d2 = staged.summaries["day1"], staged.summaries["day2"]
    assert runs == [("run-day1", DAY1, d1["ok"], False, d1["lines"]["read"]),
                    ("run-day2", DAY2, d2["ok"], True, d2["lines"]["read"])]
    assert d1["ok"] is False  # the dead letter


def test_quality_verdicts_and_findings(staged: Staged) -> None:
    con = connect(staged.store)
    assert _q(con, "SELECT date, site, status, len(failures) FROM quality ORDER BY date") == [
        (DAY1, "example.com", "pass", 0),  # written by the pipeline's own suites
        (DAY2, "example.com", "fail", 1),  # written by this fixture
    ]
    findings = _q(con, """SELECT date, suite, expectation, "column", success, unexpected, checked
                          FROM quality_findings ORDER BY date, expectation""")
    assert findings == [
        (DAY1, "events_rows", "expect_column_values_to_be_between", "status", False, 2, 1998),
        (DAY1, "events_rows", "expect_column_values_to_match_regex", "path", True, 0, 1998),
        (DAY2, "partition", "expect_column_values_to_be_unique", "event_id", False, 3, 2400),
    ]


def test_an_empty_store_has_every_view_and_no_rows(tmp_path: Path) -> None:
    con = connect(Store(str(tmp_path / "nothing-yet")))
    for name in TABLES:
        assert _q(con, f"SELECT count(*) FROM {name}") == [(0,)], name
    assert "verification" in [r[0] for r in _q(con, "DESCRIBE events")]


def test_views_over_an_s3_staging_store(staged: Staged, s3_env: str) -> None:
    """The same views over S3 (moto's server), read through the store's fsspec filesystem."""
    make_bucket(s3_env, "analytics")
    s3 = Store("s3://analytics/agent-traffic", StoreOptions(endpoint_url=s3_env, key="testing", secret="testing"))
    for p in sorted(staged.staging.rglob("*")):
        if p.is_file():
            s3.put_file(str(p.relative_to(staged.staging)), str(p))
    local, remote = connect(staged.store, DAY1, DAY2), connect(s3, DAY1, DAY2)
    for sql in ("SELECT date, provider, count(*) FROM events GROUP BY ALL ORDER BY ALL",
                "SELECT reason, count(*) FROM quarantine GROUP BY ALL ORDER BY ALL",
                "SELECT destination, outcome, sum(events) FROM deliveries GROUP BY ALL ORDER BY ALL",
                "SELECT count(*) FROM manifests", "SELECT site, status FROM quality"):
        assert _q(remote, sql) == _q(local, sql), sql
    assert _q(remote, "SELECT count(*) FROM events")[0][0] > 0


# ---------------------------------------------------------------------------------------------
# the command


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_query_command_prints_a_result_as_table_csv_and_json(staged: Staged, capsys) -> None:
    sql = "SELECT provider, count(*) AS n FROM events WHERE is_ai GROUP BY ALL ORDER BY n DESC, provider"
    want = duckdb.sql(f"SELECT provider, count(*) AS n FROM {staged.raw_events()} WHERE is_ai "
                      "GROUP BY ALL ORDER BY n DESC, provider").fetchall()
    code, out, _ = _cli(["query", "--config", str(staged.config), "--sql", sql, "--format", "csv"], capsys)
    assert code == 0
    assert out.splitlines() == ["provider,n", *(f"{p},{n}" for p, n in want)]
    code, out, _ = _cli(["query", "--config", str(staged.config), "--from", str(DAY1), "--format", "json",
                         "--sql", "SELECT date, count(*) AS n FROM events GROUP BY ALL"], capsys)
    assert [json.loads(line) for line in out.splitlines()] == [
        {"date": str(DAY1), "n": duckdb.sql(f"SELECT count(*) FROM {staged.raw_events()} "
                                            f"WHERE date = DATE '{DAY1}'").fetchall()[0][0]}]
    code, out, _ = _cli(["query", "--config", str(staged.config), "--sql", sql], capsys)
    assert code == 0 and "provider" in out and want[0][0] in out and str(want[0][1]) in out


def test_query_command_explains_a_bad_query(staged: Staged, capsys) -> None:
    code, _, err = _cli(["query", "--config", str(staged.config), "--sql", "SELECT * FROM evnts"], capsys)
    assert code == 2 and "evnts" in err and "the views are: events, quarantine" in err
    code, _, err = _cli(["query", "--config", str(staged.config), "--to", str(DAY1), "--sql", "SELECT 1"], capsys)
    assert code == 2 and "--to needs --from" in err


def test_query_command_reads_sql_from_stdin(staged: Staged) -> None:
    """A script on stdin (not a terminal): every statement runs, the last one prints."""
    p = subprocess.run(
        [sys.executable, "-m", "agent_traffic", "query", "--config", str(staged.config), "--format", "csv"],
        input="CREATE TEMP TABLE q AS SELECT reason FROM quarantine;\nSELECT count(*) AS n FROM q;\n",
        capture_output=True, text=True, timeout=60, cwd=REPO)
    assert p.returncode == 0, p.stderr
    n = duckdb.sql(f"SELECT count(*) FROM read_parquet('{staged.staging}/quarantine/**/*.parquet')").fetchall()[0][0]
    assert p.stdout.splitlines() == ["n", str(n)]


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_query_command_opens_an_interactive_shell_on_a_terminal(staged: Staged) -> None:
    """On a real (pseudo-)terminal the command is an SQL prompt over the views."""
    import pty
    import select

    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent_traffic", "query", "--config", str(staged.config)],
        stdin=follower, stdout=follower, stderr=follower, cwd=REPO, close_fds=True,
        env={**os.environ, "TERM": "dumb"})
    os.close(follower)
    out = io.BytesIO()

    def read_until(marker: bytes, timeout: float = 30) -> None:
        deadline = datetime.now() + timedelta(seconds=timeout)
        while marker not in out.getvalue() and datetime.now() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.2)
            if ready:
                with contextlib.suppress(OSError):
                    out.write(os.read(leader, 65536))
        assert marker in out.getvalue(), out.getvalue().decode(errors="replace")[-2000:]

    try:
        read_until(b"D ")
        os.write(leader, b"SELECT count(*) AS n_quarantined\n  FROM quarantine;\n")
        read_until("└".encode())  # the bottom edge of the result table
        os.write(leader, b".quit\n")
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(leader)
    text = out.getvalue().decode(errors="replace")
    assert "quality_findings" in text  # the banner lists the views
    n = duckdb.sql(f"SELECT count(*) FROM read_parquet('{staged.staging}/quarantine/**/*.parquet')").fetchall()[0][0]
    assert f"│ {n} " in text or f"{n} │" in text

