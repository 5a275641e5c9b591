"""The command-line pipeline end to end: local folder -> DuckDB -> Parquet -> local receiver."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from collections import Counter
from datetime import date
from pathlib import Path

import duckdb
import pytest

from agent_traffic.devtools.samples import combined_lines, gzip_log, write_day
from agent_traffic.ingest.storage import Store
from agent_traffic.run.runner import run
from agent_traffic.run.runtime import Runtime
from agent_traffic.secrets import env_resolver
from tests.conftest import write_config

DAY = date(2026, 11, 21)
SITE_ID = "01JDEM0SANDB0X0000000000AA"


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    root = tmp_path / "logs"
    write_day(root, DAY, lines=3000, files=3, tag="d1")
    return root


@pytest.fixture
def config(tmp_path: Path, logs: Path, sandbox) -> Path:
    return write_config(tmp_path / "cfg.yaml", staging=str(tmp_path / "staging"),
                        source_url=str(logs) + "/{date:%Y/%m/%d}/*.log.gz", base_url=sandbox.url,
                        delivery={"concurrency": 3}, extra_dest={"max_batch_events": 50})


def _run(config: Path, api_key: str, **kw):
    rt = Runtime.load(str(config), kw.pop("run_id", "test-run"))
    return run(rt, DAY, DAY, resolver=env_resolver({"SCRUNCH_API_KEY_EXAMPLE": api_key}),
               progress=lambda _m: None, **kw), rt


def expected_ai_seqs(n: int = 3000) -> set[str]:
    """The seq tags of the AI-agent lines in the fixture, from the generator itself."""
    from agent_traffic.annotate.catalog import load_catalog
    from agent_traffic.annotate.classify import Classifier

    clf = Classifier(load_catalog())
    out = set()
    for i, line in enumerate(combined_lines(DAY, n, tag="d1")):
        ua = line.rsplit('"', 2)[-2] if line.endswith('"') else ""
        if "seq=" in line and clf.classify(ua).is_ai:
            out.add(f"d1-{i}")
    return out


def seqs(events: list[dict]) -> Counter[str]:
    return Counter(e["url"].rsplit("seq=", 1)[1] for e in events)


def test_run_stages_and_delivers_every_ai_event_once(config: Path, sandbox, api_key: str, tmp_path: Path) -> None:
    summary, rt = _run(config, api_key)
    assert summary["ok"], summary["problems"]
    lines = summary["lines"]
    assert lines["read"] == 3000 and lines["balanced"]
    assert lines["quarantined"] == 3  # the generator's malformed lines, each with its reason
    assert lines["read"] == lines["parsed"] + lines["quarantined"] + sum(lines["skipped"].values())
    got = seqs(sandbox.accepted("scrunch", SITE_ID))
    want = expected_ai_seqs()
    assert set(got) == want and max(got.values()) == 1
    assert sum(summary["ai_events_by_provider"].values()) == len(want)
    assert {"openai", "anthropic", "perplexity"} <= set(summary["ai_events_by_provider"])
    dest = summary["destinations"][0]
    assert dest["delivered"] == len(want) and dest["failed"] == dest["pending"] == 0
    assert dest["events_staged"] == lines["parsed"]
    assert dest["not_selected"] == {"not an AI agent": lines["parsed"] - len(want)}
    # Every request honoured the vendor's contract: NDJSON batches under the limits.
    for ev in sandbox.accepted("scrunch", SITE_ID):
        assert isinstance(ev["timestamp"], int) and isinstance(ev["status_code"], int)
        assert ev["domain"] == "example.com" and ev["path"].startswith("/")

    # Staging: Hive partitions site/provider/date, one file per object version and partition.
    files = Store(rt.cfg.staging).list("events/")
    assert files and all(f.startswith("events/site=example.com/provider=") for f in files)
    assert all(f"/date={DAY}/part-" in f for f in files)
    n = duckdb.sql(
        f"SELECT count(*), count(DISTINCT event_id) FROM read_parquet('{tmp_path}/staging/events/**/*.parquet',"
        " hive_partitioning=true)").fetchall()[0]
    assert n == (lines["parsed"], lines["parsed"])
    # Readers see the contract's plain types (the stage writes classifier columns as dictionaries)
    import pyarrow.parquet as pq

    from agent_traffic.schema import EVENT_SCHEMA
    for f in files:
        staged = pq.read_table(f"{tmp_path}/staging/{f}")
        assert staged.schema.equals(EVENT_SCHEMA), f
        assert staged.num_rows and staged["agent"].null_count == 0
    q = duckdb.sql(f"SELECT reason, raw FROM read_parquet('{tmp_path}/staging/quarantine/**/*.parquet')").fetchall()
    assert len(q) == 3 and all(r[0] and r[1] for r in q)


def test_second_run_parses_nothing_and_sends_nothing(config: Path, sandbox, api_key: str, tmp_path: Path) -> None:
    first, _ = _run(config, api_key)
    before = len(sandbox.accepted())
    files = sorted(p.stat().st_mtime_ns for p in (tmp_path / "staging" / "events").rglob("*.parquet"))
    second, _ = _run(config, api_key, run_id="second")
    assert second["ok"]
    assert second["objects"]["processed"] == 0 and second["objects"]["unchanged_skipped"] == 3
    assert second["this_run"].get("chunks_sent", 0) == 0
    assert len(sandbox.accepted()) == before
    assert files == sorted(p.stat().st_mtime_ns for p in (tmp_path / "staging" / "events").rglob("*.parquet"))
    assert second["destinations"] == first["destinations"]


def test_reprocess_replaces_files_and_never_duplicates(config: Path, sandbox, api_key: str, tmp_path: Path) -> None:
    _run(config, api_key)
    before = len(sandbox.accepted())
    again, _ = _run(config, api_key, run_id="again", reprocess=True)
    assert again["objects"]["processed"] == 3 and again["ok"]
    count = duckdb.sql(f"SELECT count(*) FROM read_parquet('{tmp_path}/staging/events/**/*.parquet')").fetchall()[0][0]
    assert count == again["lines"]["parsed"]
    assert len(sandbox.accepted()) == before  # identical chunks: acknowledged ids, nothing resent


def test_changed_object_replaces_its_old_version(config: Path, logs: Path, sandbox, api_key: str, tmp_path: Path) -> None:
    _run(config, api_key)
    target = logs / f"{DAY:%Y/%m/%d}" / "access-0.log.gz"
    target.write_bytes(gzip_log(list(combined_lines(DAY, 200, tag="v2"))))
    s, _ = _run(config, api_key, run_id="changed")
    assert s["objects"]["processed"] == 1
    rows = duckdb.sql(
        f"SELECT count(*) FROM read_parquet('{tmp_path}/staging/events/**/*.parquet') WHERE source_object LIKE '%access-0%'"
    ).fetchall()[0][0]
    assert rows == s["lines"]["parsed"]  # only the new version's events remain staged


def test_dry_run_writes_exact_bodies_and_sends_nothing(config: Path, sandbox, api_key: str, tmp_path: Path) -> None:
    outbox = Store(str(tmp_path / "outbox"))
    s, rt = _run(config, api_key, dry_run=True, outbox=outbox)
    assert s["ok"] and sandbox.accepted() == []
    bodies = [p for p in (tmp_path / "outbox").rglob("*.ndjson")]
    assert bodies
    events = [json.loads(line) for p in bodies for line in p.read_bytes().splitlines()]
    assert all(len(p.read_bytes()) < 1_000_000 for p in bodies)
    assert len(events) + sum(1 for _ in (tmp_path / "outbox").rglob("*[0-9a-f].json")) == len(expected_ai_seqs())
    assert api_key not in "".join(p.read_text() for p in (tmp_path / "outbox").rglob("*.json"))
    # ... and a real run afterwards sends exactly those chunks
    real, _ = _run(config, api_key, run_id="real")
    assert real["ok"] and set(seqs(sandbox.accepted())) == expected_ai_seqs()


def test_transient_faults_are_retried_and_nothing_is_lost(tmp_path: Path, logs: Path, sandbox, api_key: str) -> None:
    cfg = write_config(tmp_path / "c.yaml", staging=str(tmp_path / "st"),
                       source_url=str(logs) + "/{date:%Y/%m/%d}/*.log.gz", base_url=sandbox.url,
                       delivery={"max_attempts": 15, "concurrency": 3}, extra_dest={"max_batch_events": 50})
    sandbox.set_fault_rates({"429": 0.15, "500": 0.1, "reset": 0.05})
    s, _ = _run(cfg, api_key)
    assert s["ok"], s["problems"]
    got = seqs(sandbox.accepted())
    assert set(got) == expected_ai_seqs() and max(got.values()) == 1
    assert s["this_run"]["requests"] > s["this_run"]["chunks_sent"]


def test_rejected_key_fails_with_the_vendors_answer_and_never_leaks(config: Path, sandbox, api_key: str, tmp_path: Path) -> None:
    wrong = "wrong-key-" + "z" * 20
    env = {"SCRUNCH_API_KEY_EXAMPLE": wrong, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "agent_traffic", "run", "--config", str(config), "--date", str(DAY),
         "--json", str(tmp_path / "s.json")],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1
    assert "HTTP 401" in proc.stdout and "FAILED" in proc.stdout
    summary = json.loads((tmp_path / "s.json").read_text())
    d = summary["destinations"][0]
    assert d["delivered"] == 0 and d["failed"] + d["pending"] == len(expected_ai_seqs())
    everything = proc.stdout + proc.stderr + "".join(
        p.read_text(errors="replace") for p in (tmp_path / "staging").rglob("*.json"))
    assert wrong not in everything
    # The user fixes the key; the next run sends what was failed or pending, once.
    s, _ = _run(config, api_key, run_id="fixed")
    assert s["ok"] and set(seqs(sandbox.accepted())) == expected_ai_seqs()


def test_validation_error_dead_letters_then_resends_after_fix(config: Path, sandbox, api_key: str, tmp_path: Path) -> None:
    sandbox.inject("422")
    s, _ = _run(config, api_key)
    assert not s["ok"]
    dead = list((tmp_path / "staging" / "_delivery").rglob("dead/*.json"))
    assert len(dead) == 1
    rec = json.loads(dead[0].read_text())
    assert rec["status"] == 422 and rec["vendor_answer"] and rec["attempts"] == 1
    s2, _ = _run(config, api_key, run_id="resend")
    assert s2["ok"] and not list((tmp_path / "staging" / "_delivery").rglob("dead/*.json"))
    got = seqs(sandbox.accepted())
    assert set(got) == expected_ai_seqs() and max(got.values()) == 1


def test_truncated_object_commits_nothing_and_is_retried(config: Path, logs: Path, sandbox, api_key: str, tmp_path: Path) -> None:
    target = logs / f"{DAY:%Y/%m/%d}" / "access-1.log.gz"
    good = target.read_bytes()
    target.write_bytes(good[: len(good) // 2])
    s, _ = _run(config, api_key)
    assert not s["ok"] and s["objects"]["staged"] == 2
    assert "truncated gzip" in s["objects"]["failed"][0]["reason"]
    assert not list((tmp_path / "staging").rglob("*access-1*"))
    staged = duckdb.sql(f"SELECT DISTINCT source_object FROM read_parquet('{tmp_path}/staging/events/**/*.parquet')").fetchall()
    assert all("access-1" not in r[0] for r in staged)
    target.write_bytes(good)  # the complete object arrives; the next run retries and stages it
    s2, _ = _run(config, api_key, run_id="retry")
    assert s2["ok"] and s2["objects"]["processed"] == 1
    assert set(seqs(sandbox.accepted())) == expected_ai_seqs()


def test_select_all_sends_every_event(tmp_path: Path, logs: Path, sandbox, api_key: str) -> None:
    cfg = write_config(tmp_path / "all.yaml", staging=str(tmp_path / "st"),
                       source_url=str(logs) + "/{date:%Y/%m/%d}/*.log.gz", base_url=sandbox.url, select="all")
    s, _ = _run(cfg, api_key)
    assert s["ok"] and len(sandbox.accepted()) == s["lines"]["parsed"]


def test_gzip_detected_by_content_not_name(tmp_path: Path, sandbox, api_key: str) -> None:
    root = tmp_path / "odd"
    folder = root / f"{DAY:%Y/%m/%d}"
    folder.mkdir(parents=True)
    (folder / "access.log").write_bytes(gzip.compress(b"\n".join(
        line.encode() for line in combined_lines(DAY, 300, tag="d1"))))
    cfg = write_config(tmp_path / "c.yaml", staging=str(tmp_path / "st"),
                       source_url=str(root) + "/{date:%Y/%m/%d}/", base_url=sandbox.url)
    s, _ = _run(cfg, api_key)
    assert s["ok"] and s["lines"]["read"] == 300


def test_empty_and_blank_objects_are_staged_with_nothing_to_parse(
    config: Path, logs: Path, sandbox, api_key: str, tmp_path: Path
) -> None:
    """A quiet hour's log is empty (a 0-byte file, an empty gzip) or holds only blank lines: with
    `format: auto` there is nothing to detect, and that is not a failure to retry every night."""
    folder = logs / f"{DAY:%Y/%m/%d}"
    (folder / "quiet-1.log.gz").write_bytes(b"")
    (folder / "quiet-2.log.gz").write_bytes(gzip.compress(b""))
    (folder / "quiet-3.log.gz").write_bytes(gzip.compress(b"\n \r\n\t\n  "))
    s, _ = _run(config, api_key)
    assert s["ok"], s["problems"]
    assert s["objects"]["staged"] == 6 and s["objects"]["failed"] == []
    assert s["lines"]["read"] == 3000 + 4 and s["lines"]["skipped"] == {"blank": 4} and s["lines"]["balanced"]
    manifests = {m["url"].rsplit("/", 1)[1]: m for m in
                 (json.loads(p.read_text()) for p in (tmp_path / "staging" / "_manifests").rglob("*.json"))}
    quiet = {k: m for k, m in manifests.items() if k.startswith("quiet")}
    assert {m["status"] for m in quiet.values()} == {"staged"} and all(m["files"] == {} for m in quiet.values())
    assert all(m["format"] is None and "nothing to parse" in m["format_reason"] for m in quiet.values())
    assert [quiet[f"quiet-{i}.log.gz"]["stats"]["lines_read"] for i in (1, 2, 3)] == [0, 0, 4]
    assert set(seqs(sandbox.accepted())) == expected_ai_seqs()
    again, _ = _run(config, api_key, run_id="again")  # recorded as staged: never parsed again
    assert again["ok"] and again["objects"]["processed"] == 0 and again["objects"]["unchanged_skipped"] == 6


def test_an_object_that_starts_with_more_blank_lines_than_detection_reads_still_fails(
    config: Path, logs: Path, sandbox, api_key: str
) -> None:
    """Only an object read to its end counts as empty: one whose first 256 KiB are blank lines
    may hold anything after them, so it is a clear failure, never staged as empty."""
    from agent_traffic.ingest.decompress import SNIFF_BYTES

    line = next(iter(combined_lines(DAY, 1, tag="late"))).encode()
    (logs / f"{DAY:%Y/%m/%d}" / "odd.log.gz").write_bytes(gzip.compress(b"\n" * SNIFF_BYTES + line + b"\n"))
    s, _ = _run(config, api_key)
    assert not s["ok"] and [f["url"].rsplit("/", 1)[1] for f in s["objects"]["failed"]] == ["odd.log.gz"]
    assert "no non-blank line" in s["objects"]["failed"][0]["reason"]


def test_a_source_that_finds_no_object_is_noted_not_failed(tmp_path: Path, logs: Path, sandbox, api_key: str) -> None:
    """Logs that stop arriving where the url says (a moved bucket, a renamed folder) look like a
    quiet day: the summary says which source found nothing, and the run still succeeds."""
    from agent_traffic.run.summary import render

    (tmp_path / "moved").mkdir()
    cfg = write_config(tmp_path / "c.yaml", staging=str(tmp_path / "st"),
                       source_url=str(logs) + "/{date:%Y/%m/%d}/*.log.gz", base_url=sandbox.url,
                       sources=[{"name": "old-path", "url": str(tmp_path / "moved") + "/{date:%Y/%m/%d}/",
                                 "site": "example.com"}])
    s, _ = _run(cfg, api_key)
    assert s["ok"], s["problems"]
    silent = [n for n in s["notes"] if "no object found" in n]
    assert len(silent) == 1 and silent[0].startswith(f"source old-path: no object found for {DAY}")
    assert "NOTE" in render(s) and "source old-path" in render(s)
    rt = Runtime.load(str(cfg), "backfill")  # over two days the web source found objects: no note for it
    two = run(rt, DAY, date(2026, 11, 22), resolver=env_resolver({"SCRUNCH_API_KEY_EXAMPLE": api_key}),
              progress=lambda _m: None)
    assert [n.split(":")[0] for n in two["notes"] if "no object found" in n] == ["source old-path"]


def test_a_silent_source_is_named_without_credentials_its_url_may_carry(tmp_path: Path) -> None:
    from agent_traffic.config import load_config
    from agent_traffic.run.summary import build_summary

    cfg = write_config(tmp_path / "c.yaml", staging=str(tmp_path / "st"), base_url="http://127.0.0.1:9",
                       source_url="s3://AKIAEXAMPLE:s3cr3t-value@logs-bucket/web/{date:%Y/%m/%d}/a??.log.gz")
    s = build_summary(run_id="r", cfg=load_config(cfg), days=[str(DAY)], discovery={"objects": []}, objects=[],
                      deliveries=[], ledger=[], dry_run=False)
    assert s["notes"] == [f"source web: no object found for {DAY} at s3://logs-bucket/web/{{date:%Y/%m/%d}}/a??.log.gz; "
                          "if logs were expected, check the url and that they were delivered there"]



def test_behind_a_load_balancer_the_client_is_the_address_it_forwarded(tmp_path: Path, sandbox, api_key: str) -> None:
    """nginx `main` behind your load balancer (10.0.0.0/8): events carry the address it appended to
    X-Forwarded-For, not its own, and not what a client wrote in the header itself."""
    import yaml

    folder = tmp_path / "lb" / f"{DAY:%Y/%m/%d}"
    folder.mkdir(parents=True)
    lines = [f'10.0.0.{i % 3 + 1} - - [{DAY:%d/%b/%Y}:10:00:{i:02d} +0000] "GET /p{i} HTTP/1.1" 200 5 "-" '
             f'"Mozilla/5.0 (compatible; GPTBot/1.2)" "20.15.240.64, 198.51.100.{i}"' for i in range(40)]
    (folder / "access.log.gz").write_bytes(gzip_log(lines))
    cfg = write_config(tmp_path / "c.yaml", staging=str(tmp_path / "st"), base_url=sandbox.url, select="all",
                       source_url=str(tmp_path / "lb") + "/{date:%Y/%m/%d}/")
    data = yaml.safe_load(cfg.read_text())
    data["sources"][0]["trusted_proxies"] = ["10.0.0.0/8"]
    cfg.write_text(yaml.safe_dump(data))
    s, _ = _run(cfg, api_key)
    assert s["ok"], s["problems"]
    got = duckdb.sql(f"SELECT client_ip FROM read_parquet('{tmp_path}/st/events/**/*.parquet') ORDER BY line_number")
    assert [r[0] for r in got.fetchall()] == [f"198.51.100.{i}" for i in range(40)]
    assert {e["ip"] for e in sandbox.accepted()} == {f"198.51.100.{i}" for i in range(40)}
    # combined lines (no X-Forwarded-For) under the same source: that object fails, and says why
    (folder / "old.log.gz").write_bytes(gzip_log([ln.rsplit(' "', 1)[0] for ln in lines]))
    s, _ = _run(cfg, api_key, run_id="combined")
    assert [f["url"].rsplit("/", 1)[1] for f in s["objects"]["failed"]] == ["old.log.gz"]
    assert "format 'combined' has no X-Forwarded-For field" in s["objects"]["failed"][0]["reason"]
