"""Formats end to end with the command-line runner and the local receiver: lookback for late
objects, multi-host CDN logs with a per-source report, and objects of an unknown or wrong format."""

from __future__ import annotations

import gzip
from collections import Counter
from datetime import date, timedelta
from pathlib import Path

import duckdb
import pytest
import yaml

from agent_traffic.config import load_config
from agent_traffic.devtools.samples import combined_lines, gzip_log
from agent_traffic.errors import ConfigError
from agent_traffic.run.runner import run
from agent_traffic.run.runtime import Runtime
from agent_traffic.secrets import env_resolver
from tests.data.formats import samples

DAY = date(2026, 11, 21)
SITE_ID = "01JDEM0SANDB0X0000000000AA"


def config(tmp_path: Path, sandbox, sources: list[dict], **extra) -> Path:
    dest = {"name": "scrunch-example", "vendor": "scrunch", "site_id": SITE_ID, "base_url": sandbox.url,
            "secret": {"env": "SCRUNCH_API_KEY_EXAMPLE"}, "select": "all", "max_batch_events": 200}
    cfg = {
        "version": 1,
        "staging": str(tmp_path / "staging"),
        "sources": sources,
        "sites": [{"name": "example.com", "hostnames": ["example.com", "www.example.com", "*.example.com"],
                   "destinations": [dest]},
                  {"name": "blog.example.org"}],
        "delivery": {"max_attempts": 3, "backoff_base_s": 0.01, "backoff_cap_s": 0.05, "timeout_s": 5},
        **extra,
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def run_day(cfg: Path, api_key: str, day: date, run_id: str) -> dict:
    rt = Runtime.load(str(cfg), run_id)
    return run(rt, day, day, resolver=env_resolver({"SCRUNCH_API_KEY_EXAMPLE": api_key}), progress=lambda _m: None)


def put(root: Path, day: date, name: str, data: bytes) -> None:
    folder = root / f"{day:%Y/%m/%d}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)


def staged(tmp_path: Path, where: str = "") -> list[tuple]:
    return duckdb.sql(f"SELECT url, source_object FROM read_parquet('{tmp_path}/staging/events/**/*.parquet') {where}").fetchall()


def test_late_objects_are_staged_under_their_date_and_delivered_once(tmp_path: Path, sandbox, api_key: str) -> None:
    logs = tmp_path / "logs"
    before = DAY - timedelta(days=1)
    put(logs, before, "a.log.gz", gzip_log(list(combined_lines(before, 300, tag="a"))))
    cfg = config(tmp_path, sandbox, [{"name": "web", "url": str(logs) + "/{date:%Y/%m/%d}/", "format": "combined",
                                      "site": "example.com", "lookback_days": 1}])
    first = run_day(cfg, api_key, before, "r1")
    assert first["ok"], first["problems"]
    # a file for the day before arrives late, after that day's run; the next day has its own
    put(logs, before, "b-late.log.gz", gzip_log(list(combined_lines(before, 200, tag="b", seed=1))))
    put(logs, DAY, "c.log.gz", gzip_log(list(combined_lines(DAY, 250, tag="c"))))
    second = run_day(cfg, api_key, DAY, "r2")
    assert second["ok"], second["problems"]
    assert second["lookback_dates"] == [before.isoformat()] and second["objects"]["late"] == 1
    assert second["objects"]["processed"] == 2 and second["objects"]["unchanged_skipped"] == 1
    manifests = sorted(p.relative_to(tmp_path / "staging" / "_manifests").parts[0]
                       for p in (tmp_path / "staging" / "_manifests").rglob("*.json"))
    assert manifests == [f"date={before}"] * 2 + [f"date={DAY}"]  # the late file lives under its own date
    # every staged event was delivered exactly once, the late file's included
    rows = staged(tmp_path)
    sent = Counter(e["url"] for e in sandbox.accepted("scrunch", SITE_ID))
    assert len(rows) == first["lines"]["parsed"] + second["lines"]["parsed"] == 300 + 200 + 250
    assert sorted(sent) == sorted(u for u, _ in rows) and max(sent.values()) == 1
    assert any("b-late" in src for _, src in rows)
    # re-running either day, or the next, finds nothing new and sends nothing again
    for day, rid in ((DAY, "r3"), (DAY + timedelta(days=1), "r4"), (before, "r5")):
        again = run_day(cfg, api_key, day, rid)
        assert again["ok"] and again["objects"]["processed"] == 0
    assert len(sandbox.accepted("scrunch", SITE_ID)) == sum(sent.values())


def test_without_lookback_a_late_object_waits_for_its_own_date(tmp_path: Path, sandbox, api_key: str) -> None:
    logs = tmp_path / "logs"
    before = DAY - timedelta(days=1)
    cfg = config(tmp_path, sandbox, [{"name": "web", "url": str(logs) + "/{date:%Y/%m/%d}/", "format": "combined",
                                      "site": "example.com", "lookback_days": 0}])
    put(logs, before, "late.log.gz", gzip_log(list(combined_lines(before, 50, tag="l"))))
    s = run_day(cfg, api_key, DAY, "r1")
    assert s["objects"]["seen"] == 0 and s["lookback_dates"] == []
    s = run_day(cfg, api_key, before, "r2")
    assert s["objects"]["processed"] == 1 and s["ok"]


def test_cdn_logs_for_many_sites_with_a_per_source_report(tmp_path: Path, sandbox, api_key: str) -> None:
    logs = tmp_path / "cdn"
    web = tmp_path / "web"
    reqs = samples.requests(600, seed=11, unknown_every=25)
    data, expected = samples.render("cloudfront", reqs)
    put(logs, DAY, "E2EXAMPLE.2026-11-21-10.abcd1234.gz", gzip.compress(data[: len(data) // 2]) +
        gzip.compress(data[len(data) // 2 :]))  # CloudFront objects are gzip; this one has two members
    put(logs, DAY, "garbage.gz", gzip.compress(b"<html><body>502 Bad Gateway</body></html>\n" * 20))
    fastly_names = {"time": "ts", "client_ip": "cip", "host": "hst", "target": "uri", "method": "verb",
                    "status": "code", "user_agent": "ua", "referer": "ref", "bytes": "size",
                    "content_type": "ctype", "duration": "elapsed_us"}
    fastly = "\n".join(t for t, _ in samples.fastly_json(samples.requests(80, seed=4), fastly_names)) + "\n"
    put(tmp_path / "fastly", DAY, "fastly.log", fastly.encode())
    put(web, DAY, "access.log.gz", gzip_log(list(combined_lines(DAY, 100, tag="w"))))
    put(web, DAY, "oops.log.gz", gzip.compress(data))  # CloudFront lines in the nginx folder
    cfg = config(tmp_path, sandbox, [
        {"name": "cdn", "url": str(logs) + "/{date:%Y/%m/%d}/", "format": "auto", "other_hosts": "quarantine"},
        {"name": "fastly", "url": str(tmp_path / "fastly") + "/{date:%Y/%m/%d}/", "format": "fastly_json",
         "columns": {v: k for k, v in fastly_names.items()}},
        {"name": "web", "url": str(web) + "/{date:%Y/%m/%d}/", "format": "nginx_combined", "site": "example.com"},
    ])
    s = run_day(cfg, api_key, DAY, "r1")
    assert not s["ok"] and s["objects"]["staged"] == 3
    cdn, web_src, fastly_src = s["sources"]["cdn"], s["sources"]["web"], s["sources"]["fastly"]
    unknown = sum(1 for e in expected if isinstance(e, dict) and e["host"] == samples.UNKNOWN_HOST)
    assert cdn["formats"] == {"cloudfront": 1} and cdn["lines"]["balanced"]
    assert cdn["lines"] == {"read": len(expected), "parsed": 600 - unknown, "quarantined": unknown,
                            "skipped": {"header": 2}, "balanced": True}
    assert cdn["unknown_hosts"] == {samples.UNKNOWN_HOST: unknown}
    assert [f["url"].rsplit("/", 1)[1] for f in cdn["failed"]] == ["garbage.gz"]
    assert "cannot detect the format" in cdn["failed"][0]["reason"]
    assert "none of the first" in web_src["failed"][0]["reason"] and "'cloudfront'" in web_src["failed"][0]["reason"]
    assert fastly_src["lines"]["parsed"] == 80 and fastly_src["failed"] == []
    assert any(samples.UNKNOWN_HOST in n for n in s["notes"])
    # each request went to its site: the blog's events are staged under their own site
    by_site = dict(duckdb.sql(f"SELECT site, count(*) FROM read_parquet('{tmp_path}/staging/events/**/*.parquet', "
                              "hive_partitioning=true) GROUP BY site").fetchall())
    blog = sum(1 for r in reqs if r.host == "blog.example.org")
    assert by_site["blog.example.org"] == blog + sum(1 for r in samples.requests(80, seed=4) if r.host == "blog.example.org")
    recs = [yaml.safe_load(p.read_text()) for p in (tmp_path / "staging" / "_manifests").rglob("*.json")]
    chosen = {r["url"].rsplit("/", 1)[1]: (r["format"], r["format_reason"]) for r in recs}
    assert chosen["E2EXAMPLE.2026-11-21-10.abcd1234.gz"][0] == "cloudfront"
    assert "of the first" in chosen["E2EXAMPLE.2026-11-21-10.abcd1234.gz"][1]


def test_a_user_format_in_the_config_is_used_by_a_source(tmp_path: Path, sandbox, api_key: str) -> None:
    logs = tmp_path / "logs"
    lines = [f'{i}|2026-11-21T10:00:{i:02d}Z|GET|/p/{i}|200|GPTBot/1.2|www.example.com' for i in range(20)]
    put(logs, DAY, "app.log", ("\n".join(lines) + "\n").encode())
    pipe = {"id": "pipes", "kind": "regex",
            "regex": r"^\d+\|(?P<time>[^|]+)\|(?P<method>[A-Z]+)\|(?P<target>[^|]+)\|(?P<status>\d+)\|(?P<user_agent>[^|]*)\|(?P<host>[^|]+)$",
            "detect": r"^\d+\|\d{4}-"}
    cfg = config(tmp_path, sandbox, [{"name": "app", "url": str(logs) + "/{date:%Y/%m/%d}/"}], formats=[pipe])
    s = run_day(cfg, api_key, DAY, "r1")
    assert s["ok"], s["problems"]
    assert s["sources"]["app"]["formats"] == {"pipes": 1} and s["lines"]["parsed"] == 20


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sources": [{"name": "w", "url": "/l/{date:%Y}/", "format": "nginx-combined"}]},
         "sources[0].format: 'nginx-combined' is not a known format"),
        ({"sources": [{"name": "w", "url": "/l/{date:%Y}/", "columns": {"ts": "time"}}]},
         "sources[0].columns: set `format:`"),
        ({"sources": [{"name": "w", "url": "/l/{date:%Y}/", "format": "fastly_json", "columns": {"ts": "tiem"}}]},
         "sources[0].columns: format 'fastly_json': unknown raw field name(s) ['tiem']"),
        ({"sources": [{"name": "w", "url": "/l/{date:%Y}/", "lookback_days": 90}]}, "sources[0].lookback_days"),
        ({"formats": [{"id": "mine", "kind": "regex", "regex": "(?P<code>\\d+)"}]}, "formats[0]: format 'mine'"),
    ],
)
def test_format_settings_are_checked_when_the_config_loads(tmp_path: Path, change: dict, message: str) -> None:
    cfg = {"version": 1, "staging": str(tmp_path), "sites": [{"name": "example.com"}],
           "sources": [{"name": "w", "url": "/l/{date:%Y}/"}], **change}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert message in str(exc.value)
