"""A whole pipeline day over hostile input (issue 19): a log with a script payload in every text
field (user agent, path, query, referer, host, method) and a vendor whose error answers echo the
key in every encoding. The command line runs the day (a dry run to a base_url with credentials,
then a real run), prints the summary and writes the report; the nightly DAG's report and GX data
docs are served by the Airflow plugin. Then every file under staging, every output and every
served page is searched: no unescaped payload in any page, no key in any encoding anywhere, no
address outside loopback loaded, and headless Chromium (Debian's `chromium`) opens the pages, as
files and as the plugin serves them, headers included: no payload runs, no request leaves.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from http.server import BaseHTTPRequestHandler, HTTPServer, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, urljoin, urlsplit

import duckdb
import pytest
import yaml

from tests.conftest import REPO
from tests.leaks import echoes, entity_payload, key_leaks, new_key, payload

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.airflow, pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (scripts/ensure-chromium.sh installs it)")]

DAY = date(2026, 11, 21)
FIELDS = ("ua", "path", "query", "referer", "host", "method")
#: The markup of the payloads as it would appear unescaped in a page
RAW_MARKUP = ("<script>document", "<img src=x onerror", "<svg onload", "<a href=\"javascript:", "<img src=x ONERROR",
              "<IMG SRC=X ONERROR")
#: An attribute or CSS reference that would load something from another host
OUTSIDE_LOAD = re.compile(r"""(?:\b(?:src|href|action|srcset|poster|data)\s*=\s*["']?\s*|url\(\s*["']?\s*|@import\s+["'])"""
                          r"""(?:[a-z][a-z0-9+.-]*:)?//(?!127\.0\.0\.1[:/])""", re.I)


class _EchoingVendor(BaseHTTPRequestHandler):
    """A vendor whose 400 answers quote the key it was sent in every encoding, the first one
    straddling the 2,000-character cut of kept answers."""

    def do_POST(self) -> None:  # noqa: N802 (stdlib naming)
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        key = self.headers.get("X-Api-Key", "")
        head = json.dumps({"echo": echoes(key), "you_sent": dict(self.headers)})[:-1] + ', "error": "'
        body = (head + "x" * (1992 - len(head)) + key + '"}').encode()  # the key starts 8 characters before the cut
        self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


def _log_lines() -> list[str]:
    """nginx JSON lines of GPTBot fetches with a payload in each text field; one line with a
    payload host (quarantined) and one with a payload method (failed by GX's row suite)."""
    ua = "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2; +https://openai.com/gptbot)"
    lines = []
    for i in range(300):
        lines.append({"time_iso8601": f"2026-11-21T12:{i // 60:02d}:{i % 60:02d}+00:00", "remote_addr": "10.0.0.7",
                      "request_method": "GET", "request_uri": f"/docs/{i}/{payload('path')}?q={payload('query')}",
                      "status": "200", "body_bytes_sent": "10", "http_referer": payload("referer"),
                      "http_user_agent": f"{ua} {payload('ua')}", "host": "www.example.com"})
    lines.append({**lines[0], "host": "example.com" + payload("host"), "time_iso8601": "2026-11-21T13:00:00+00:00"})
    lines.append({**lines[0], "request_method": entity_payload("method"), "time_iso8601": "2026-11-21T13:00:01+00:00"})
    return [json.dumps(x) for x in lines]


def _config(tmp_path: Path, name: str, base_url: str) -> Path:
    cfg = {
        "staging": str(tmp_path / "staging"),
        "sources": [{"name": "web", "url": str(tmp_path / "logs") + "/{date:%Y/%m/%d}/*.gz", "format": "nginx_json"}],
        "sites": [{"name": "example.com", "hostnames": ["example.com", "*.example.com"], "destinations": [
            {"name": "scrunch-example", "vendor": "scrunch", "site_id": "01JDEM0SANDB0X0000000000AA",
             "base_url": base_url, "secret": {"env": "SCRUNCH_API_KEY_EXAMPLE"}}]}],
        "delivery": {"max_attempts": 1, "timeout_s": 5},
    }
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@dataclass
class Day:
    root: Path
    key: str
    config: Path
    outputs: dict[str, str] = field(default_factory=dict)  # name -> text printed or written
    pages: dict[str, tuple[int, dict[str, str], bytes]] = field(default_factory=dict)  # served: status, headers, body


def _cli(day: Day, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SCRUNCH_API_KEY_EXAMPLE": day.key,
           "PYTHONPATH": os.pathsep.join([str(REPO / "include"), str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "agent_traffic", *args], env=env, capture_output=True, text=True,
                          timeout=300)


def _served_pages(client, start: list[str]) -> dict[str, tuple[int, dict[str, str], bytes]]:
    """Every page the plugin serves from `start`, following same-app links (quality files, docs)."""
    seen: dict[str, tuple[int, dict[str, str], bytes]] = {}
    todo = list(start)
    while todo and len(seen) < 60:
        url = todo.pop(0)
        if url in seen:
            continue
        r = client.get(url)
        seen[url] = (r.status_code, dict(r.headers), r.content)
        if "html" in r.headers.get("content-type", ""):
            for href in re.findall(r"""href=['"]([^'"#]+)['"]""", r.text):
                nxt = urljoin(url, href.replace("&amp;", "&"))
                if nxt.startswith("/agent-traffic/") and nxt not in seen:
                    todo.append(nxt)
    return seen


@pytest.fixture(scope="module")
def day(tmp_path_factory: pytest.TempPathFactory, airflow_home: Path) -> Iterator[Day]:
    root = tmp_path_factory.mktemp("hostile")
    folder = root / "logs" / f"{DAY:%Y/%m/%d}"
    folder.mkdir(parents=True)
    (folder / "access.log.gz").write_bytes(gzip.compress(("\n".join(_log_lines()) + "\n").encode()))
    vendor = ThreadingHTTPServer(("127.0.0.1", 0), _EchoingVendor)
    threading.Thread(target=vendor.serve_forever, daemon=True).start()
    d = Day(root, new_key(), _config(root, "c.yaml", f"http://127.0.0.1:{vendor.server_port}"))
    try:
        dry_cfg = _config(root, "dry.yaml",  # credentials in the URL, percent-encoded as URLs require
                          f"http://ingest-user:pw-{quote(d.key, safe='')}@127.0.0.1:{vendor.server_port}")
        runs = {"dry run": _cli(d, "run", "--config", str(dry_cfg), "--date", str(DAY), "--dry-run",
                                "--outbox", str(root / "outbox")),
                "run": _cli(d, "run", "--config", str(d.config), "--date", str(DAY), "--json", str(root / "run.json")),
                "summary": _cli(d, "summary", "--config", str(d.config)),
                "report": _cli(d, "report", "--config", str(d.config), "--from", str(DAY),
                               "--out", str(root / "report.html"))}
    finally:
        vendor.shutdown()
        vendor.server_close()
    for name, p in runs.items():
        d.outputs[f"{name} stdout"], d.outputs[f"{name} stderr"] = p.stdout, p.stderr
    assert runs["run"].returncode == 1 and "HTTP 400" in runs["run"].stdout, runs["run"].stdout + runs["run"].stderr
    assert runs["report"].returncode == 0, runs["report"].stderr

    from airflow import plugins_manager, settings
    from airflow.api_fastapi.app import create_app, purge_cached_app
    from fastapi.testclient import TestClient

    from agent_traffic.ingest.storage import Store
    from agent_traffic.team.report import write_daily_report

    write_daily_report(Store(str(root / "staging")), DAY)  # the nightly DAG's write_report
    mp = pytest.MonkeyPatch()
    caches = [plugins_manager._get_plugins, plugins_manager.get_fastapi_plugins, plugins_manager._get_ui_plugins]
    mp.setattr(settings, "PLUGINS_FOLDER", str(REPO / "plugins"))
    mp.setenv("AGENT_TRAFFIC_CONFIG", str(d.config))
    mp.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "True")
    for c in caches:
        c.cache_clear()
    purge_cached_app()
    d.client = TestClient(create_app("core"))  # type: ignore[attr-defined]
    d.pages = _served_pages(d.client, ["/agent-traffic/", "/agent-traffic/report/latest",
                                       f"/agent-traffic/quality?day={DAY}"])
    yield d
    for c in caches:
        c.cache_clear()
    purge_cached_app()
    mp.undo()


def _files(root: Path) -> dict[str, str]:
    """Every file the day left (staging, outbox, report, --json), as text: Parquet read back."""
    out = {}
    for p in sorted(root.rglob("*")):
        if not p.is_file() or p.suffix in (".gz", ".yaml") or "logs" in p.relative_to(root).parts:  # our input
            continue
        if p.suffix == ".parquet":
            rows = duckdb.sql(f"SELECT * FROM read_parquet('{p}')").fetchall()
            out[str(p)] = json.dumps(rows, default=str)
        else:
            out[str(p)] = p.read_bytes().decode("utf-8", "replace")
    return out


def test_the_day_ran_over_every_field_and_kept_the_vendors_answers(day: Day) -> None:
    files = _files(day.root)
    assert any("/dead/" in f for f in files) and any("/_runs/" in f for f in files)
    assert any("docs/validations/" in f for f in files) and any(f.endswith(".request.json") for f in files)
    staged = duckdb.sql(f"SELECT user_agent, path, query, referer FROM read_parquet('{day.root}/staging/events/**/*.parquet')")
    ua, path, query, referer = staged.limit(1).fetchall()[0]
    assert payload("ua") in ua and payload("path") in path and payload("query") in query and payload("referer") == referer
    reasons = duckdb.sql(f"SELECT reason FROM read_parquet('{day.root}/staging/quarantine/**/*.parquet')").fetchall()
    assert ("host is not a valid hostname",) in reasons and any("method" in r for (r,) in reasons)
    run = json.loads((day.root / "run.json").read_text())
    assert any("HTTP 400" in p for p in run["problems"])
    assert {"/agent-traffic/", "/agent-traffic/report/latest", f"/agent-traffic/quality?day={DAY}"} <= set(day.pages)
    assert sum("/docs/validations/" in u for u in day.pages) >= 1


def test_no_key_in_any_encoding_anywhere(day: Day) -> None:
    everything = {**_files(day.root), **day.outputs,
                  **{u: body.decode("utf-8", "replace") + json.dumps(h) for u, (_s, h, body) in day.pages.items()}}
    leaks = {name: how for name, text in everything.items() if (how := key_leaks(text, day.key))}
    assert leaks == {}
    assert all("ingest-user" not in t for t in everything.values())  # the base_url's user:password@ too


def test_no_page_holds_a_payload_as_markup_or_loads_from_outside(day: Day) -> None:
    published = {f: t for f, t in _files(day.root).items() if f.endswith((".html", ".css"))}
    published |= {u: body.decode("utf-8", "replace") for u, (_s, _h, body) in day.pages.items()}
    assert len(published) >= 8
    for name, text in published.items():
        assert not [m for m in RAW_MARKUP if m in text], name
        assert not OUTSIDE_LOAD.findall(text), (name, OUTSIDE_LOAD.findall(text)[:3])


def test_printed_output_carries_no_terminal_escape(day: Day) -> None:
    for name, text in day.outputs.items():
        assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", text), name


# ---------------------------------------------------------------------------------------- in Chromium


def _chromium(url: str, profile: Path) -> tuple[str, list[str]]:
    """The DOM after the page's scripts ran, and every URL Chromium tried to fetch (its net log)."""
    netlog = profile / "net.json"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--no-default-browser-check",
           "--disable-extensions", "--no-proxy-server", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
           f"--user-data-dir={profile}", f"--log-net-log={netlog}", "--virtual-time-budget=3000", "--dump-dom", url]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "<html" in p.stdout, p.stderr[-2000:]
    log = netlog.read_text(errors="replace") if netlog.exists() else ""
    fetched = set(re.findall(r'"url":"([^"]+)"', log))
    return p.stdout, sorted(fetched)


class _Replay(BaseHTTPRequestHandler):
    """Serves the plugin's answers (status, headers, body) to Chromium on loopback, one at a time."""

    client = None

    def do_GET(self) -> None:  # noqa: N802 (stdlib naming)
        r = self.client.get(self.path)
        self.send_response(r.status_code)
        for k, v in r.headers.items():
            if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(r.content)))
        self.end_headers()
        self.wfile.write(r.content)

    def log_message(self, *_args: object) -> None:
        pass


#: Chromium's own services (time, updates, accounts), which it calls whatever page it opens
CHROMIUM_SERVICES = ("google.com", "googleapis.com", "gstatic.com", "gvt1.com", "googleusercontent.com")


def _outside(urls: list[str], port: int | None = None) -> list[str]:
    """URLs off this machine that the page asked for (Chromium's own background calls aside)."""
    ok = ("file:", "data:", "about:", "chrome:", "blob:")
    return [u for u in urls if not u.startswith(ok) and not (port and u.startswith(f"http://127.0.0.1:{port}/"))
            and not (urlsplit(u).hostname or "").endswith(CHROMIUM_SERVICES)]


def test_in_chromium_no_payload_runs_and_no_request_leaves(day: Day, tmp_path: Path) -> None:
    html_pages = [u for u, (s, h, _b) in day.pages.items() if s == 200 and "html" in h.get("content-type", "")]
    docs = [u for u in html_pages if "/docs/" in u]
    assert docs and "/agent-traffic/report/latest" in html_pages
    handler = type("Replay", (_Replay,), {"client": day.client})  # type: ignore[attr-defined]
    server = HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_port
    try:
        served = [f"http://127.0.0.1:{port}{u}" for u in ["/agent-traffic/report/latest",
                                                         f"/agent-traffic/quality?day={DAY}", *docs[:3]]]
        files = [(day.root / "report.html").as_uri(),
                 *(p.as_uri() for p in sorted((day.root / "staging" / "_quality").rglob("*.html"))[:3])]
        for i, url in enumerate(served + files):
            dom, fetched = _chromium(url, tmp_path / f"profile-{i}")
            assert "<pwned-" not in dom, url
            assert _outside(fetched, port) == [], (url, _outside(fetched, port))
        dom, _ = _chromium(served[0], tmp_path / "profile-report")
        assert 'data-charts="done"' in dom  # the report's own script still runs under the policy
    finally:
        server.shutdown()
        server.server_close()
