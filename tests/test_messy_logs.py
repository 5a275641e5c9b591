"""Messy and hostile logs, through the real pipeline (runner -> DuckDB -> Parquet -> GX -> local
receiver): they never stop delivery, crash a run, or send an event twice."""

from __future__ import annotations

import gzip
from collections import Counter
from datetime import date
from pathlib import Path

import pytest
import yaml

from agent_traffic.config import load_config
from agent_traffic.errors import ConfigError
from agent_traffic.run.runner import run
from agent_traffic.run.runtime import Runtime
from agent_traffic.secrets import env_resolver

DAY = date(2026, 11, 21)
SITE_ID = "01JDEM0SANDB0X0000000000AA"
AI_UA = "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; ClaudeBot/1.0; +claudebot@anthropic.com)"
HUMAN_UA = "Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0"


def combined(i: int, *, ua: str = AI_UA, method: str = "GET", when: str | None = None, tag: str = "s") -> str:
    """One combined line whose path carries `seq=<tag>-<i>`, so each delivered event is told apart."""
    t = when or f"21/Nov/2026:{i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d} +0000"
    return f'203.0.113.{i % 250 + 1} - - [{t}] "{method} /p?seq={tag}-{i} HTTP/1.1" 200 512 "-" "{ua}"'


def put(root: Path, name: str, lines: list[str], *, compress: bool = True) -> Path:
    folder = root / f"{DAY:%Y/%m/%d}"
    folder.mkdir(parents=True, exist_ok=True)
    data = ("\n".join(lines) + "\n").encode()
    p = folder / name
    p.write_bytes(gzip.compress(data) if compress else data)
    return p


def config(tmp_path: Path, sandbox, sources: list[dict], *, sites: list[dict] | None = None) -> Path:
    sites = sites or [{"name": "example.com", "destinations": [{
        "name": "scrunch-example", "vendor": "scrunch", "site_id": SITE_ID, "base_url": sandbox.url,
        "secret": {"env": "SCRUNCH_API_KEY_EXAMPLE"}}]}]
    cfg = {"version": 1, "staging": str(tmp_path / "staging"), "sources": sources, "sites": sites,
           "delivery": {"max_attempts": 3, "backoff_base_s": 0.01, "backoff_cap_s": 0.05,
                        "retry_after_cap_s": 0.1, "timeout_s": 5}}
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return p


def run_day(cfg: Path, api_key: str, run_id: str, **kw) -> dict:
    rt = Runtime.load(str(cfg), run_id)
    return run(rt, DAY, DAY, resolver=env_resolver({"SCRUNCH_API_KEY_EXAMPLE": api_key}),
               progress=lambda _m: None, **kw)


def seqs(sandbox) -> Counter[str]:
    """seq tag -> times the receiver accepted that event."""
    return Counter(e["url"].rsplit("seq=", 1)[1] for e in sandbox.accepted("scrunch", SITE_ID))


# ---------------------------------------------------------------------------------------------
# other hosts


def test_a_vhost_log_with_a_third_of_its_lines_on_an_unlisted_host_delivers_every_listed_ai_event(
        tmp_path: Path, sandbox, api_key: str) -> None:
    lines, want = [], set()
    for i in range(150):
        host = "other.example.net" if i % 3 == 2 else "example.com"
        ua = AI_UA if i % 2 == 0 else HUMAN_UA
        if host == "example.com" and ua == AI_UA:
            want.add(f"s-{i}")
        lines.append(f"{host}:443 " + combined(i, ua=ua))
    put(tmp_path / "logs", "vhost.log.gz", lines)
    cfg = config(tmp_path, sandbox, [{"name": "vhosts", "url": str(tmp_path / "logs") + "/{date:%Y/%m/%d}/",
                                      "format": "auto"}])
    s = run_day(cfg, api_key, "r1")
    assert s["ok"], s["problems"]
    assert s["lines"]["quarantined"] == 0 and s["lines"]["skipped"] == {"other host": 50}
    got = seqs(sandbox)
    assert set(got) == want and max(got.values()) == 1
    assert s["destinations"][0]["delivered"] == len(want) and s["destinations"][0]["held"] == 0
    assert any("other.example.net (50)" in n and "skipped as 'other host'" in n for n in s["notes"])


def test_other_hosts_may_be_quarantined_or_staged_under_a_named_site(tmp_path: Path, sandbox, api_key: str) -> None:
    lines = [f"{'example.com' if i % 2 else 'shop.example.net'} " + combined(i) for i in range(20)]
    put(tmp_path / "logs", "vhost.log.gz", lines)
    src = {"name": "vhosts", "url": str(tmp_path / "logs") + "/{date:%Y/%m/%d}/", "format": "vhost_combined"}
    cfg = config(tmp_path, sandbox, [{**src, "other_hosts": {"site": "example.com"}}])
    s = run_day(cfg, api_key, "r1")
    assert s["ok"] and s["lines"]["parsed"] == 20 and s["lines"]["skipped"] == {}
    assert len(seqs(sandbox)) == 20
    cfg = config(tmp_path, sandbox, [{**src, "other_hosts": "quarantine"}])
    s = run_day(cfg, api_key, "r2", reprocess=True)
    assert s["lines"]["quarantine_reasons"] == {"host matches no configured site": 10}


def test_other_hosts_names_a_configured_site(tmp_path: Path, sandbox) -> None:
    cfg = config(tmp_path, sandbox, [{"name": "v", "url": str(tmp_path) + "/{date:%Y}/", "other_hosts": {"site": "exmple.com"}}])
    with pytest.raises(ConfigError, match=r"other_hosts.site: 'exmple.com' is not one of the sites.*did you mean"):
        load_config(cfg)
    cfg = config(tmp_path, sandbox, [{"name": "v", "url": str(tmp_path) + "/{date:%Y}/", "other_hosts": "drop"}])
    with pytest.raises(ConfigError, match="other_hosts"):
        load_config(cfg)


# ---------------------------------------------------------------------------------------------
# bad rows never hold good rows


def test_two_odd_methods_in_102_lines_deliver_all_100_ai_events(tmp_path: Path, sandbox, api_key: str) -> None:
    lines = [combined(i) for i in range(100)] + [combined(100, method="FOO"), combined(101, method="M-SEARCH")]
    put(tmp_path / "logs", "access.log.gz", lines)
    cfg = config(tmp_path, sandbox, [{"name": "web", "url": str(tmp_path / "logs") + "/{date:%Y/%m/%d}/",
                                      "format": "combined", "site": "example.com"}])
    s = run_day(cfg, api_key, "r1")
    assert s["ok"], s["problems"]
    got = seqs(sandbox)
    assert {f"s-{i}" for i in range(100)} <= set(got) and max(got.values()) == 1
    assert s["destinations"][0]["held"] == 0 and s["holds"] == {}
    # valid RFC 9110 tokens, unusual: delivered too, and counted as a warning
    assert {"s-100", "s-101"} <= set(got)
    assert any("be_in_set(method) failed on 2 of 102" in n for n in s["notes"])


def test_a_source_whose_lines_mostly_do_not_match_holds_only_its_own_objects(
        tmp_path: Path, sandbox, api_key: str) -> None:
    put(tmp_path / "good", "access.log.gz", [combined(i, tag="g") for i in range(50)])
    bad = [combined(i, tag="b") for i in range(10)] + [f"garbage line {i} that no format reads" for i in range(40)]
    put(tmp_path / "bad", "access.log.gz", bad)
    cfg = config(tmp_path, sandbox, [
        {"name": "good", "url": str(tmp_path / "good") + "/{date:%Y/%m/%d}/", "format": "combined", "site": "example.com"},
        {"name": "bad", "url": str(tmp_path / "bad") + "/{date:%Y/%m/%d}/", "format": "combined", "site": "example.com"},
    ])
    s = run_day(cfg, api_key, "r1")
    assert set(seqs(sandbox)) == {f"g-{i}" for i in range(50)}  # the other source, same site and day
    assert list(s["holds"][str(DAY)]) == ["bad"]
    d = s["destinations"][0]
    assert d["delivered"] == 50 and d["held"] == 10 and d["balanced"]
    line = next(p for p in s["problems"] if p.startswith(f"source bad {DAY}: 1 object(s) held"))
    assert "quarantine_ratio" in line and f"agent-traffic release --config {cfg} --source bad --date {DAY}" in line
    # the user looked, and releases the hold with the command the summary gave
    from agent_traffic.cli import main

    assert main(["release", "--config", str(cfg), "--source", "bad", "--date", str(DAY)]) == 0
    s2 = run_day(cfg, api_key, "r2")
    assert s2["ok"], s2["problems"]
    got = seqs(sandbox)
    assert set(got) == {f"g-{i}" for i in range(50)} | {f"b-{i}" for i in range(10)} and max(got.values()) == 1
    s3 = run_day(cfg, api_key, "r3", reprocess=True)  # validated again: a released object stays released
    assert s3["ok"] and s3["holds"] == {} and max(seqs(sandbox).values()) == 1


# ---------------------------------------------------------------------------------------------
# no object can end a run


def test_out_of_range_timestamps_are_quarantined_with_their_reason(tmp_path: Path, sandbox, api_key: str) -> None:
    import json

    times = ["2026-11-21T10:00:00Z", "10000-01-01T00:00:00Z", "infinity", "-infinity", "0044-03-15 BC",
             "1066-10-14T09:00:00Z", "2026-11-21T11:00:00Z"]
    lines = [json.dumps({"time_iso8601": t, "remote_addr": "192.0.2.1", "request": f"GET /p?seq=s-{i} HTTP/1.1",
                         "status": 200, "body_bytes_sent": 5, "http_user_agent": AI_UA})
             for i, t in enumerate(times)]
    put(tmp_path / "json", "a.log", lines, compress=False)
    put(tmp_path / "clf", "a.log.gz", [combined(0, tag="c"), combined(1, tag="c", when="21/Nov/10000:10:00:00 +0000")])
    cfg = config(tmp_path, sandbox, [
        {"name": "j", "url": str(tmp_path / "json") + "/{date:%Y/%m/%d}/", "format": "nginx_json", "site": "example.com"},
        {"name": "c", "url": str(tmp_path / "clf") + "/{date:%Y/%m/%d}/", "format": "combined", "site": "example.com"},
    ])
    s = run_day(cfg, api_key, "r1")
    assert s["objects"]["staged"] == 2 and s["objects"]["failed"] == []
    reasons = s["lines"]["quarantine_reasons"]
    assert reasons["timestamp out of range (before 1900 or after 2199)"] >= 3  # year 10000, infinity, 1066
    assert sum(reasons.values()) == 6 and s["lines"]["parsed"] == 3 and s["lines"]["balanced"]


def test_an_object_that_raises_inside_parsing_fails_alone_is_retried_then_poisoned(
        tmp_path: Path, sandbox, api_key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from agent_traffic.ingest import parse

    real = parse.BlockParser.parse

    def parse_or_raise(self, block):
        if self.ctx.source_object.endswith("poison.log.gz"):
            raise RuntimeError("a parser bug this object finds")
        return real(self, block)

    monkeypatch.setattr(parse.BlockParser, "parse", parse_or_raise)
    put(tmp_path / "logs", "good.log.gz", [combined(i, tag="g") for i in range(20)])
    put(tmp_path / "logs", "poison.log.gz", [combined(i, tag="p") for i in range(20)])
    cfg = config(tmp_path, sandbox, [{"name": "web", "url": str(tmp_path / "logs") + "/{date:%Y/%m/%d}/",
                                      "format": "combined", "site": "example.com"}])
    for n in (1, 2):
        s = run_day(cfg, api_key, f"r{n}")
        assert s["objects"]["processed"] == (2 if n == 1 else 1)  # the failed one is retried
        assert [f["url"].rsplit("/", 1)[1] for f in s["objects"]["failed"]] == ["poison.log.gz"]
        assert any(f"failed ({n} run(s) in a row): RuntimeError: a parser bug" in p for p in s["problems"])
        assert set(seqs(sandbox)) == {f"g-{i}" for i in range(20)}  # the good object, delivered once
    s = run_day(cfg, api_key, "r3")
    said = next(p for p in s["problems"] if "is poisoned" in p)
    assert "failed 3 runs in a row" in said and f"--date {DAY} --retry-poisoned" in said
    s = run_day(cfg, api_key, "r4")  # skipped now, and still said
    assert s["objects"]["processed"] == 0 and any("is poisoned" in p for p in s["problems"])
    monkeypatch.setattr(parse.BlockParser, "parse", real)  # the bug is fixed; the user retries it
    s = run_day(cfg, api_key, "r5", retry_poisoned=True)
    assert s["ok"], s["problems"]
    got = seqs(sandbox)
    assert set(got) == {f"{t}-{i}" for t in "gp" for i in range(20)} and max(got.values()) == 1


# ---------------------------------------------------------------------------------------------
# identity survives a new object version


def test_a_growing_local_file_delivers_only_its_new_lines(tmp_path: Path, sandbox, api_key: str) -> None:
    lines = [combined(i) for i in range(100)] + [combined(100, ua=HUMAN_UA)]
    log = put(tmp_path / "logs", "access.log", lines, compress=False)
    cfg = config(tmp_path, sandbox, [{"name": "web", "url": str(tmp_path / "logs") + "/{date:%Y/%m/%d}/access.log",
                                      "format": "combined", "site": "example.com"}])
    s = run_day(cfg, api_key, "r1")
    assert s["ok"] and len(seqs(sandbox)) == 100
    with log.open("a") as f:  # the server logs one more request
        f.write(combined(101) + "\n")
    s = run_day(cfg, api_key, "r2")
    assert s["ok"], s["problems"]
    got = seqs(sandbox)
    assert len(sandbox.accepted("scrunch", SITE_ID)) == 101 and got["s-101"] == 1 and max(got.values()) == 1
    assert s["this_run"]["delivered_events"] == 1 and s["this_run"]["possible_duplicates"] == 0
    d = s["destinations"][0]
    assert d["delivered"] == 101 and d["events_staged"] == 102 and d["balanced"]
    assert any("101 of its 102 event(s) are unchanged" in n and "1 new or changed" in n for n in s["notes"])
    s = run_day(cfg, api_key, "r3")  # nothing new: nothing sent
    assert s["ok"] and len(sandbox.accepted("scrunch", SITE_ID)) == 101


def test_an_object_rewritten_with_one_line_changed_delivers_that_one_event(
        tmp_path: Path, sandbox, api_key: str) -> None:
    lines = [combined(i) for i in range(60)]
    put(tmp_path / "logs", "a.log.gz", lines)
    cfg = config(tmp_path, sandbox, [{"name": "web", "url": str(tmp_path / "logs") + "/{date:%Y/%m/%d}/",
                                      "format": "combined", "site": "example.com"}])
    assert run_day(cfg, api_key, "r1")["ok"]
    lines[30] = combined(30, tag="changed")
    put(tmp_path / "logs", "a.log.gz", lines)  # same key, new bytes: a new object version
    s = run_day(cfg, api_key, "r2")
    assert s["ok"], s["problems"]
    got = seqs(sandbox)
    assert len(sandbox.accepted("scrunch", SITE_ID)) == 61 and got["changed-30"] == 1
    assert s["this_run"]["delivered_events"] == 1
    assert any("59 of its 60 event(s) are unchanged" in n for n in s["notes"])
    d = s["destinations"][0]
    assert d["delivered"] == 60 and d["events_staged"] == 60 and d["balanced"]  # the old line 30 is replaced


# ---------------------------------------------------------------------------------------------
# memory bounded by lines as well as bytes


def test_blank_and_short_line_floods_parse_in_blocks_of_bounded_lines() -> None:
    from agent_traffic.formats import load_formats
    from agent_traffic.ingest.parse import ParseContext, by_lines, parse_blocks

    data = (combined(0) + "\n").encode() + b"\n" * 1_500_000 + b"a\n" * 500_000 + (combined(1) + "\n").encode()
    assert [len(b) for b in by_lines(b"x\n" * 10 + b"y", 4)] == [8, 8, 5]  # 4, 4 and 3 lines
    ctx = ParseContext("o" * 16, "file:///bomb.log", load_formats()["combined"], "example.com", "example.com",
                       "https", {}, 65536)
    pieces = [data[i : i + (1 << 20)] for i in range(0, len(data), 1 << 20)]
    blocks = list(parse_blocks(iter(pieces), ctx, 32 << 20, 65536))
    assert max(b.stats.lines_read for b in blocks) <= 65536 and len(blocks) >= 2_000_002 // 65536
    events = sum(b.stats.parsed for b in blocks)
    blank = sum(b.stats.skipped.get("blank", 0) for b in blocks)
    bad = sum(b.stats.quarantined for b in blocks)
    assert (events, blank, bad) == (2, 1_500_000, 500_000)
    assert sum(b.quarantine.num_rows for b in blocks) == 500_000
    assert {r.as_py() for b in blocks for r in b.quarantine["raw"].unique()} == {b"a"}
    assert [n for b in blocks for n in b.events["line_number"].to_pylist()] == [1, 2_000_002]


# ---------------------------------------------------------------------------------------------
# config sanity


def test_a_billion_laughs_config_is_a_clear_error(tmp_path: Path) -> None:
    laughs = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i, name in enumerate("bcdefghi"):
        prev = "abcdefghi"[i]
        laughs.append(f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]")
    p = tmp_path / "laughs.yaml"
    p.write_text("\n".join(laughs) + "\nversion: 1\nstaging: /tmp/x\n")
    with pytest.raises(ConfigError, match=r"expands to more than 1,000,000 values.*billion laughs"):
        load_config(p)


@pytest.mark.parametrize(("section", "key", "value", "said"), [
    ("delivery", "timeout_s", float("inf"), "finite number"),
    ("delivery", "backoff_cap_s", float("nan"), "finite number"),
    ("parse", "max_line_bytes", 2**62, "less than or equal to 67108864"),
    ("parse", "block_bytes", 2**40, "less than or equal to"),
])
def test_numbers_are_finite_and_within_sane_bounds(tmp_path: Path, sandbox, section: str, key: str, value: float,
                                                    said: str) -> None:
    p = config(tmp_path, sandbox, [{"name": "v", "url": str(tmp_path) + "/{date:%Y}/", "site": "example.com"}])
    data = yaml.safe_load(p.read_text())
    data.setdefault(section, {})[key] = value
    p.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=rf"{section}\.{key}: .*{said}"):
        load_config(p)


@pytest.mark.parametrize("where", ["parse", "classify", "stage"])
def test_a_failure_in_any_thread_of_an_object_fails_it_and_stops_its_threads(
        tmp_path: Path, sandbox, where: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Parsing, classifying and writing run in threads of their own: whichever raises, the object
    fails with that reason, nothing of it is committed, and every thread it started has stopped."""
    import threading

    from agent_traffic.devtools.samples import write_day
    from agent_traffic.ingest import parse
    from agent_traffic.run.steps import discover_objects, process_object
    from agent_traffic.staging import stage
    from tests.conftest import write_config

    logs = tmp_path / "logs"
    write_day(logs, DAY, lines=20_000, files=1, tag="t")
    cfg = write_config(tmp_path / "cfg.yaml", staging=str(tmp_path / "staging"),
                       source_url=str(logs) + "/{date:%Y/%m/%d}/*.log.gz", base_url=sandbox.url)
    rt = Runtime.load(str(cfg), "threads")
    rt.annotator  # noqa: B018 - built before counting threads
    calls = {"n": 0}

    def broken(real):
        def call(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 2:  # the second block: the first is under way in the next thread
                raise RuntimeError(f"a bug in {where}")
            return real(*args, **kwargs)
        return call

    target = {"parse": (parse.BlockParser, "parse"), "classify": (rt.annotator, "annotate"),
              "stage": (stage.ObjectStager, "add")}[where]
    monkeypatch.setattr(*target, broken(getattr(*target)))
    monkeypatch.setattr(rt, "cfg", rt.cfg.model_copy(update={"parse": rt.cfg.parse.model_copy(
        update={"block_bytes": 1 << 16})}))  # several blocks
    before = threading.active_count()
    (ref,) = discover_objects(rt, [DAY]).objects
    res = process_object(rt, ref)
    assert res.status == "failed" and res.reason == f"RuntimeError: a bug in {where}"
    assert threading.active_count() == before
    assert not list((tmp_path / "staging").rglob("*.parquet"))
