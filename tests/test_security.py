"""Hostile log content and careless config (issue 19), one defect at a time: keys in every
encoding, credentials in URLs, values from the environment in config errors, terminal escapes,
site names, glob characters in staging, http(s) sources, invalid hosts, the sandbox's control
routes, the compose file's published ports, and GX's data docs."""

from __future__ import annotations

import gzip
import json
import threading
from datetime import UTC, date, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
import requests
import urllib3
import yaml

from agent_traffic.config import DeliveryPolicy, load_config, parse_config
from agent_traffic.delivery.retry import send
from agent_traffic.errors import ConfigError
from agent_traffic.secrets import Secret
from tests.conftest import REPO
from tests.leaks import echoes, entity_payload, key_leaks, new_key, payload

DAY = date(2026, 11, 21)


def _answering(body: bytes, status: int = 400) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (stdlib naming)
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_a_vendor_answer_loses_the_key_in_every_encoding_before_it_is_cut() -> None:
    key = new_key()
    Secret(key)  # resolved keys are registered for scrubbing as they are made
    body = ("x" * 1995 + key + " " + " ".join(echoes(key))).encode()  # the raw key straddles the 2,000 cut
    server = _answering(body)
    try:
        r = send(urllib3.PoolManager(), f"http://127.0.0.1:{server.server_port}/x", b"{}", {},
                 DeliveryPolicy(max_attempts=1, timeout_s=5), frozenset({200}))
    finally:
        server.shutdown()
        server.server_close()
    assert r.status == 400 and r.body.startswith("x" * 1995)
    assert key_leaks(r.body, key) == []
    for form in echoes(key):  # and each encoding alone, as the whole answer
        assert key_leaks(__import__("agent_traffic.redact", fromlist=["scrub"]).scrub(f"err: {form}."), key) == []


def _write(tmp_path: Path, cfg: dict) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return p


def _cfg(tmp_path: Path, **over) -> dict:
    cfg = {"staging": str(tmp_path / "st"),
           "sources": [{"name": "web", "url": str(tmp_path) + "/logs/{date:%Y/%m/%d}/*.gz", "site": "example.com"}],
           "sites": [{"name": "example.com", "destinations": [
               {"name": "ka", "vendor": "knownagents", "secret": {"env": "KA_KEY"}}]}]}
    cfg.update(over)
    return cfg


def test_a_config_error_never_quotes_a_value_from_the_environment(tmp_path: Path, monkeypatch) -> None:
    key = new_key()
    monkeypatch.setenv("KA_KEY", key)
    cfg = _cfg(tmp_path)
    cfg["sites"][0]["destinations"][0]["secret"] = "${KA_KEY}"  # the key where a mapping belongs
    cfg["sites"][0]["destinations"][0]["site_id"] = "${KA_KEY}"
    with pytest.raises(ConfigError) as exc:
        load_config(_write(tmp_path, cfg))
    assert "secret" in str(exc.value) and key_leaks(str(exc.value), key) == []


def test_a_config_error_shows_a_url_without_its_credentials(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, sources=[{"name": "web", "url": "s3://AKIAEXAMPLE:s3cr3t-pass-word@logs/no-date/",
                                   "site": "example.com"}])
    with pytest.raises(ConfigError) as exc:
        load_config(_write(tmp_path, cfg))
    assert "{date" in str(exc.value) and "s3cr3t" not in str(exc.value) and "s3://logs/no-date/" in str(exc.value)


def test_http_sources_are_refused_at_load_with_what_to_do(tmp_path: Path) -> None:
    for url in ("http://logs.example.com/{date:%Y-%m-%d}/", "https://u:p@logs.example.com/{date:%Y}/a.gz"):
        with pytest.raises(ConfigError, match="http\\(s\\) sources are not supported.*Copy the logs") as exc:
            load_config(_write(tmp_path, _cfg(tmp_path, sources=[{"name": "web", "url": url, "site": "example.com"}])))
        assert ":p@" not in str(exc.value)


@pytest.mark.parametrize("name", ["../../../../X", "a/b", "x" * 300, "a b.com", "exa..mple.com", "-a.com",
                                  "a\nb.com", ("l" * 64) + ".com", "site=x"])
def test_site_names_must_be_hostnames(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match=r"sites\[0\].name: must be the site's hostname"):
        parse_config(_cfg(tmp_path, sites=[{"name": name}]) | {"sources": [
            {"name": "web", "url": str(tmp_path) + "/{date:%Y}/", "site": name}]}, base_dir=tmp_path)


def test_ordinary_site_names_still_load(tmp_path: Path) -> None:
    names = ["example.com", "blog.example.org", "localhost", "xn--bcher-kva.example", "a-b_c.example.com."]
    cfg = parse_config(_cfg(tmp_path, sites=[{"name": n} for n in names]), base_dir=tmp_path)
    assert [s.name for s in cfg.sites] == names


def test_a_staging_path_with_glob_characters_is_refused(tmp_path: Path) -> None:
    for staging in ("st[1]", "st*", "st{a,b}", "s3://bucket/run?"):
        with pytest.raises(ConfigError, match="glob characters.*choose a folder name without them"):
            parse_config(_cfg(tmp_path, staging=staging), base_dir=tmp_path)


def test_control_characters_from_the_logs_are_escaped_when_printed(tmp_path: Path, capsys) -> None:
    from agent_traffic.run.runner import Progress
    from agent_traffic.run.summary import build_summary, render

    host = "\x1b]0;owned\x07\x1b[2J\rexample.net\u202e"
    cfg = parse_config(_cfg(tmp_path), base_dir=tmp_path)
    obj = {"object_id": "o", "url": "file:///l.gz", "source": "web", "date": str(DAY), "status": "staged",
           "stats": {"lines_read": 1, "quarantined": 1, "quarantine_reasons": {"host matches no configured site": 1},
                     "unknown_hosts": {host: 1}}}
    text = render(build_summary(run_id="r", cfg=cfg, days=[str(DAY)], discovery={}, objects=[obj], deliveries=[],
                                ledger=[], dry_run=False))
    Progress()(f"parse {host}")
    printed = text + capsys.readouterr().err
    assert "example.net" in text and "\\x1b]0;owned\\x07" in text
    assert not any(c in printed for c in "\x1b\x07\r\u202e")


def test_hosts_that_are_not_hostnames_are_quarantined_with_the_reason(tmp_path: Path) -> None:
    from agent_traffic.run.runtime import Runtime
    from agent_traffic.run.steps import discover_objects, process_object

    hosts = {"bad-slash": "a/b.example.com", "nul": "ex\x00ample.com", "newline": "www.example.com\nX-Injected: 1",
             "long": "a" * 5000, "markup": "example.com<img src=x>", "ok": "www.example.com",
             "ok-port": "Example.COM:8443"}
    lines = [json.dumps({"time_iso8601": "2026-11-21T12:00:00+00:00", "remote_addr": "10.0.0.1",
                         "request": "GET /p HTTP/1.1", "status": "200", "http_user_agent": "GPTBot/1.0",
                         "host": h, "request_id": tag}) for tag, h in hosts.items()]
    folder = tmp_path / "logs" / f"{DAY:%Y/%m/%d}"
    folder.mkdir(parents=True)
    (folder / "a.log.gz").write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    cfg = _cfg(tmp_path, sources=[{"name": "web", "url": str(tmp_path / "logs") + "/{date:%Y/%m/%d}/*.gz",
                                   "format": "nginx_json"}])
    cfg["sites"][0]["hostnames"] = ["example.com", "*.example.com"]
    rt = Runtime.load(str(_write(tmp_path, cfg)), "r1")
    (ref,) = discover_objects(rt, [DAY]).objects
    res = process_object(rt, ref)
    assert res.status == "staged" and res.stats["parsed"] == 2, res.stats
    assert res.stats["quarantine_reasons"] == {"host is not a valid hostname": 5}
    staged = [h for (h,) in duckdb.sql(f"SELECT host FROM read_parquet('{tmp_path}/st/events/**/*.parquet')").fetchall()]
    assert sorted(staged) == ["example.com", "www.example.com"]


def test_the_sandbox_control_routes_need_its_key(sandbox, api_key: str) -> None:
    base = f"{sandbox.url}/_sandbox"
    assert requests.get(f"{base}/health", timeout=5).status_code == 200  # a probe needs no key
    for method, path in (("GET", "stats"), ("GET", "accepted"), ("POST", "faults")):
        for headers in ({}, {"Authorization": "Bearer wrong-key"}, {"X-Api-Key": ""}):
            r = requests.request(method, f"{base}/{path}", json={"script": ["500"]}, headers=headers, timeout=5)
            assert r.status_code == 401, (method, path, headers)
    assert sandbox.fault_state()["pending"] == []
    ok = requests.get(f"{base}/stats", headers={"Authorization": f"Bearer {api_key}"}, timeout=5)
    assert ok.status_code == 200 and requests.get(f"{base}/stats", headers={"X-Api-Key": api_key},
                                                  timeout=5).status_code == 200


def test_the_compose_file_publishes_ports_on_this_host_only() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    published = {name: s.get("ports", []) for name, s in compose["services"].items() if s.get("ports")}
    assert {"minio", "airflow-apiserver"} <= set(published)
    for name, ports in published.items():
        for p in ports:
            host = str(p).rsplit(":", 2)[0]
            assert host.endswith(":-127.0.0.1}") or host == "127.0.0.1", (name, p)
    assert "sandbox" not in published  # reachable inside the compose network only
    assert "docs/security.md" in (REPO / "README.md").read_text()


def test_gx_data_docs_carry_no_log_value_no_script_and_no_outside_address(tmp_path: Path) -> None:
    from agent_traffic.ingest.storage import Store
    from agent_traffic.staging.validate import Validator, build_docs

    cfg = parse_config(_cfg(tmp_path), base_dir=tmp_path)
    v = Validator(cfg)
    noon = datetime(2026, 11, 21, 12, tzinfo=UTC)
    evil = {f: payload(f) for f in ("path", "ua", "url", "site")}
    table = pa.table({
        "event_id": ["a", "b", "c"], "ts": pa.array([noon] * 3, pa.timestamp("us", "UTC")),
        "site": [evil["site"], "example.com", "example.com"], "method": [entity_payload("method"), "GET", "GET"],
        "path": [evil["path"], "/", "/"], "status": pa.array([200, 200, 200], pa.int32()),
        "url": [evil["url"]] * 3, "user_agent": [evil["ua"]] * 3, "_key": ["k"] * 3})
    failing = {col for _t, col, _s, bad in v.check_rows(str(DAY), table) if bad}
    assert {"method", "path", "site"} <= failing  # GX saw the values
    store = Store(str(tmp_path / "st"))
    build_docs(v, store, str(DAY))
    pages = store.list(f"_quality/date={DAY}/docs/")
    assert any("/validations/" in k for k in pages) and f"_quality/date={DAY}/docs/index.html" in pages
    for k in pages:
        text = store.get_bytes(k).decode()
        assert "pwned" not in text.lower() and "<script" not in text.lower(), k
        assert "//" not in text.replace("://", "").replace("\\/\\/", "") or "http" not in text, k
        assert "http://" not in text and "https://" not in text, k


def test_scrubbing_stays_linear_on_long_base64_looking_runs() -> None:
    """A base64-looking run (`x` repeated) costs scrubbing linear CPU time, not quadratic.

    Measured as a ratio of process CPU times (best of three), which a loaded machine barely moves:
    eight times the input costs about eight times the CPU; a quadratic scan would cost 64 times.
    """
    import time

    from agent_traffic.redact import scrub

    keys = [new_key() for _ in range(5)]
    for k in keys:
        Secret(k)

    def cpu(n: int) -> float:
        best = float("inf")
        for _ in range(3):
            t = time.process_time()
            assert scrub("x" * n + keys[0]) == "x" * n + "***"
            best = min(best, time.process_time() - t)
        return best

    small, large = cpu(32_768), cpu(262_144)
    assert large < 24 * max(small, 1e-3), (small, large)
