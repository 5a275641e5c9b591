"""Refreshing the operators' range files for real: a loopback HTTP server, a real store, the DAG."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from agent_traffic.annotate.catalog import load_catalog
from agent_traffic.annotate.ranges import load_snapshots, refresh, snapshot_key
from agent_traffic.annotate.verify import SPOOFED, VERIFIED, Verifier
from agent_traffic.errors import ConfigError
from agent_traffic.ingest.storage import Store
from tests.conftest import REPO

GPTBOT_V2 = {"creationTime": "2026-11-20T11:00:00.000000",
             "prefixes": [{"ipv4Prefix": "192.0.2.0/25"}, {"ipv6Prefix": "2001:db8:1::/48"}]}


class RangeServer:
    """Serves {path: (status, body)} on 127.0.0.1; counts requests per path."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, bytes]] = {}
        self.hits: dict[str, int] = {}
        routes, hits = self.routes, self.hits

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                hits[self.path] = hits.get(self.path, 0) + 1
                if self.path.startswith("/moved/"):
                    self.send_response(301)
                    self.send_header("Location", "/" + self.path.removeprefix("/moved/"))
                    self.end_headers()
                    return
                status, body = routes.get(self.path, (404, b"not found"))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    def serve(self, path: str, doc: dict | bytes, status: int = 200) -> str:
        self.routes[path] = (status, doc if isinstance(doc, bytes) else json.dumps(doc).encode())
        return self.url + path


@pytest.fixture
def server() -> Iterator[RangeServer]:
    srv = RangeServer()
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


def _dead_url() -> str:
    """A loopback port nobody listens on: connection refused, at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/gone.json"


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


def _only(catalog, **urls: str | None) -> dict[str, str | None]:
    """Fetch only the given lists (the rest: null = not fetched), so tests never leave loopback."""
    return {lid: urls.get(lid.replace("-", "_")) for lid in catalog.ip_ranges}


def test_refresh_stores_the_exact_bytes_as_todays_snapshot(server: RangeServer, catalog, tmp_path: Path) -> None:
    body = json.dumps(GPTBOT_V2, indent=1).encode()
    url = server.serve("/gptbot.json", body)
    store = Store(str(tmp_path / "ranges"))
    report = refresh(catalog, store, urls=_only(catalog, openai_gptbot=url), today=date(2026, 11, 21))
    by_id = {r.list_id: r for r in report.results}
    assert by_id["openai-gptbot"].status == "updated" and by_id["openai-gptbot"].networks == 2
    assert by_id["openai-searchbot"].status == "skipped"
    assert report.updated == 1 and report.failed == 0
    assert store.get_bytes(snapshot_key("openai-gptbot", date(2026, 11, 21))) == body
    assert "store:openai-gptbot/2026-11-21.json" in by_id["openai-gptbot"].in_use
    assert "shipped:" in by_id["openai-searchbot"].in_use  # untouched lists keep the shipped copy

    # The newest stored snapshot replaces the shipped copy for verification.
    snaps = load_snapshots(catalog, store)
    assert snaps["openai-gptbot"].day == date(2026, 11, 21) and snaps["openai-gptbot"].complete
    v = Verifier(catalog, snaps)
    assert v.verify("GPTBot", "192.0.2.9", date(2026, 11, 21)) == VERIFIED
    assert v.verify("GPTBot", "2001:db8:1::7", date(2026, 11, 21)) == VERIFIED
    assert v.verify("GPTBot", "74.7.227.5", date(2026, 11, 21)) == SPOOFED  # only in the older list


@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        (500, b"oops", "HTTP 500"),
        (200, b"<html>maintenance</html>", "not JSON"),
        (200, b'{"creationTime": "x"}', 'no "prefixes"'),
        (200, b'{"prefixes": []}', "empty"),
        (200, b'{"prefixes": [{"ipv4Prefix": "not-a-cidr"}]}', "is not a CIDR"),
        (200, b'{"prefixes": [{"ipv4Prefix": "0.0.0.0/0"}]}', "implausibly broad"),
        (200, b'{"prefixes": ["192.0.2.0/24"]}', "ipv4Prefix or ipv6Prefix"),
    ],
)
def test_a_bad_fetch_keeps_the_last_good_snapshot(
    server: RangeServer, catalog, tmp_path: Path, status: int, body: bytes, reason: str
) -> None:
    store = Store(str(tmp_path / "ranges"))
    good = server.serve("/gptbot.json", GPTBOT_V2)
    assert refresh(catalog, store, urls=_only(catalog, openai_gptbot=good), today=date(2026, 11, 20)).updated == 1
    bad = server.serve("/broken.json", body, status)
    report = refresh(catalog, store, urls=_only(catalog, openai_gptbot=bad), today=date(2026, 11, 21))
    res = next(r for r in report.results if r.list_id == "openai-gptbot")
    assert res.status == "failed" and reason in (res.error or ""), res.error
    assert res.in_use and "2026-11-20" in res.in_use
    assert store.list("openai-gptbot/") == ["openai-gptbot/2026-11-20.json"]  # nothing bad was written
    assert load_snapshots(catalog, store)["openai-gptbot"].day == date(2026, 11, 20)


def test_unreachable_host_and_redirects(server: RangeServer, catalog, tmp_path: Path) -> None:
    store = Store(str(tmp_path / "ranges"))
    server.serve("/searchbot.json", GPTBOT_V2)
    report = refresh(catalog, store, today=date(2026, 11, 21), timeout_s=5, urls=_only(
        catalog, openai_gptbot=_dead_url(), openai_searchbot=f"{server.url}/moved/searchbot.json"))
    by_id = {r.list_id: r for r in report.results}
    assert by_id["openai-gptbot"].status == "failed" and "ConnectionError" in (by_id["openai-gptbot"].error or "")
    assert by_id["openai-gptbot"].in_use.startswith("shipped:")  # no snapshot yet: the shipped copy
    assert by_id["openai-searchbot"].status == "updated"  # Google-style moves (301) are followed
    assert server.hits == {"/moved/searchbot.json": 1, "/searchbot.json": 1}
    text = report.render()
    assert "openai-gptbot" in text and "failed" in text and "1 updated, 1 failed" in text


def test_snapshots_are_pruned_to_keep(server: RangeServer, catalog, tmp_path: Path) -> None:
    store = Store(str(tmp_path / "ranges"))
    url = server.serve("/gptbot.json", GPTBOT_V2)
    for day in range(1, 6):
        refresh(catalog, store, urls=_only(catalog, openai_gptbot=url), today=date(2026, 11, day), keep=3)
    assert store.list("openai-gptbot/") == [f"openai-gptbot/2026-11-0{d}.json" for d in (3, 4, 5)]


def test_unknown_list_ids_in_the_config_are_errors(catalog, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not range lists in the catalog.*openai-gptbot"):
        refresh(catalog, Store(str(tmp_path)), urls={"openai-gtpbot": "http://127.0.0.1:9/x.json"})


def test_config_section_validates_and_resolves_the_store(tmp_path: Path) -> None:
    from agent_traffic.config import parse_config

    base = {"version": 1, "staging": "staging", "sources": [{"name": "w", "url": "logs/{date:%Y}/*.gz",
                                                             "site": "example.com"}],
            "sites": [{"name": "example.com"}]}
    cfg = parse_config({**base, "ip_ranges": {"store": "ranges", "urls": {"openai-gptbot": None}}}, base_dir=tmp_path)
    assert cfg.ip_ranges.store == f"file://{tmp_path / 'ranges'}"
    assert cfg.ip_ranges.max_age_days == 30
    with pytest.raises(ConfigError, match=r"ip_ranges.urls.*not an http\(s\) URL"):
        parse_config({**base, "ip_ranges": {"urls": {"openai-gptbot": "ftp://x"}}}, base_dir=tmp_path)
    with pytest.raises(ConfigError, match="ip_ranges.max_age_days"):
        parse_config({**base, "ip_ranges": {"max_age_days": 0}}, base_dir=tmp_path)


# -- the DAG ----------------------------------------------------------------------------------


@pytest.mark.airflow
def test_refresh_dag_imports_and_runs_against_loopback(
    airflow_home: Path, server: RangeServer, catalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils.state import DagRunState

    dagbag = DagBag(dag_folder=str(REPO / "dags" / "agent_traffic_refresh_ranges.py"))
    assert dagbag.import_errors == {}
    dag = dagbag.get_dag("agent_traffic_refresh_ranges")
    assert dag.catchup is False and dag.max_active_runs == 1 and dag.doc_md
    assert [t.task_id for t in dag.tasks] == ["refresh"]

    urls = _only(catalog, openai_gptbot=server.serve("/gptbot.json", GPTBOT_V2), anthropic_bots=_dead_url())
    cfg = {"version": 1, "staging": str(tmp_path / "staging"),
           "sources": [{"name": "w", "url": str(tmp_path / "logs/{date:%Y}/*.gz"), "site": "example.com"}],
           "sites": [{"name": "example.com"}], "ip_ranges": {"urls": urls, "timeout_s": 5}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.setenv("AGENT_TRAFFIC_CONFIG", str(tmp_path / "cfg.yaml"))

    run = dag.test(logical_date=datetime(2026, 11, 21, 23, tzinfo=UTC))
    assert run.state == DagRunState.SUCCESS
    today = datetime.now(UTC).date()
    store = Store(str(tmp_path / "staging" / "_ranges"))
    assert store.list("openai-gptbot/") == [f"openai-gptbot/{today}.json"]
    assert store.list("anthropic-bots/") == []  # failed: the shipped copy stays in use

    # Every fetch failing (no network) fails the task, so someone looks (no retry waits here).
    dag.get_task("refresh").retries = 0
    cfg["ip_ranges"]["urls"] = _only(catalog, openai_gptbot=_dead_url())
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    again = dag.test(logical_date=datetime(2026, 11, 22, 23, tzinfo=UTC))
    assert again.state == DagRunState.FAILED


def test_the_pipeline_verifies_with_the_newest_stored_snapshot(tmp_path: Path) -> None:
    from agent_traffic.config import parse_config
    from agent_traffic.ingest.storage import StoreOptions
    from agent_traffic.run.runtime import Runtime
    from agent_traffic.run.steps import classify_table
    from tests.test_enrich import events_table
    from tests.test_verify import GPTBOT_UA

    cfg = parse_config({"version": 1, "staging": "staging",
                        "sources": [{"name": "w", "url": "logs/{date:%Y}/*.gz", "site": "example.com"}],
                        "sites": [{"name": "example.com"}]}, base_dir=tmp_path)
    ranges = Store(str(tmp_path / "staging" / "_ranges"))
    ranges.put_bytes(snapshot_key("openai-gptbot", date(2026, 11, 1)), b'{"prefixes": [{"ipv4Prefix": "198.51.100.0/24"}]}')
    ranges.put_bytes(snapshot_key("openai-gptbot", date(2026, 11, 20)), json.dumps(GPTBOT_V2).encode())
    rt = Runtime(cfg, StoreOptions(), "run-1")
    assert rt.annotator.verifier.snapshots["openai-gptbot"].origin == "store:openai-gptbot/2026-11-20.json"
    out = classify_table(rt.annotator, events_table([
        {"user_agent": GPTBOT_UA, "client_ip": "192.0.2.1"},      # in the newest snapshot
        {"user_agent": GPTBOT_UA, "client_ip": "198.51.100.1"},   # only in the older one
    ]))
    assert out["verification"].to_pylist() == ["verified", "spoofed"]
