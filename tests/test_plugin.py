"""The Airflow UI plugin: Airflow's plugin manager loads `plugins/agent_traffic_plugin.py`, the API
server app mounts its pages, and they answer with the reports and quality results in staging,
to users who may read the nightly DAG's runs and to nobody else."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from agent_traffic.layout import report_key
from agent_traffic.team.report import write_daily_report
from tests.conftest import REPO, make_bucket, put_object
from tests.test_query import DAY1, DAY2, Staged, shared_staging

pytestmark = pytest.mark.airflow


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Staged:
    s = shared_staging(tmp_path_factory)
    for day in (DAY1, DAY2):
        write_daily_report(s.store, day)
    return s


@pytest.fixture
def plugins(airflow_home: Path, staged: Staged, monkeypatch: pytest.MonkeyPatch) -> Iterator:
    """Airflow's plugin manager pointed at the repository's plugins folder, caches reset."""
    from airflow import plugins_manager, settings
    from airflow.api_fastapi.app import purge_cached_app

    caches = [plugins_manager._get_plugins, plugins_manager.get_fastapi_plugins, plugins_manager._get_ui_plugins]
    monkeypatch.setattr(settings, "PLUGINS_FOLDER", str(REPO / "plugins"))
    monkeypatch.setenv("AGENT_TRAFFIC_CONFIG", str(staged.config))
    for c in caches:
        c.cache_clear()
    purge_cached_app()
    yield plugins_manager
    for c in caches:
        c.cache_clear()
    purge_cached_app()


def _client(monkeypatch: pytest.MonkeyPatch, *, all_admins: bool):
    from airflow.api_fastapi.app import create_app, purge_cached_app
    from fastapi.testclient import TestClient

    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", str(all_admins))
    purge_cached_app()
    return TestClient(create_app("core"))


def test_airflow_loads_the_plugin_and_its_views(plugins) -> None:
    loaded, errors = plugins._get_plugins()
    assert "agent_traffic" in [p.name for p in loaded]
    assert not [k for k in errors if "agent_traffic_plugin" in k], errors
    apps, _ = plugins.get_fastapi_plugins()
    assert [a["url_prefix"] for a in apps if a["name"] == "agent-traffic pages"] == ["/agent-traffic"]
    views, _ = plugins._get_ui_plugins()
    ours = {v["url_route"]: v for v in views if v["href"].startswith("/agent-traffic")}
    assert ours["agent-traffic-report"]["href"] == "/agent-traffic/report/latest"
    assert ours["agent-traffic-quality"]["href"] == "/agent-traffic/quality"
    assert all(v["destination"] == "nav" and v["category"] == "browse" for v in ours.values())


def test_the_pages_answer_with_the_reports_and_quality_results(plugins, staged: Staged, monkeypatch) -> None:
    client = _client(monkeypatch, all_admins=True)
    r = client.get("/agent-traffic/report/latest")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert r.content == staged.store.get_bytes(f"_reports/date={DAY2}/report.html")  # the newest date
    r = client.get(f"/agent-traffic/report/{DAY1}")
    assert r.status_code == 200 and f'data-first="{DAY1}"' in r.text
    assert client.get("/agent-traffic/report/2020-01-01").status_code == 404
    assert client.get("/agent-traffic/report/not-a-date").status_code == 404

    index = client.get("/agent-traffic/")
    assert index.status_code == 200
    assert f"href='report/{DAY2}'" in index.text and f"href='report/{DAY1}'" in index.text
    assert f"href='quality?day={DAY2}'" in index.text

    q = client.get("/agent-traffic/quality")  # the newest date with results
    assert q.status_code == 200 and f"Data quality · {DAY2}" in q.text
    assert "data-status='fail'" in q.text and "expect_column_values_to_be_unique" in q.text
    q1 = client.get(f"/agent-traffic/quality?day={DAY1}")
    # day 1's verdict comes from the pipeline's own suites, which passed
    assert "data-status='pass'" in q1.text and "GX data docs" in q1.text
    docs = client.get(f"/agent-traffic/files/_quality/date={DAY1}/docs/index.html")
    assert docs.status_code == 200 and "GX data docs" in docs.text

    # only reports and quality results are served: never events, the ledger or a path outside
    events_key = staged.store.list("events/")[0]
    for path in (f"/agent-traffic/files/{events_key}", "/agent-traffic/files/_runs/run-day1.json",
                 f"/agent-traffic/files/_quality/%2E%2E/{events_key}"):
        assert client.get(path).status_code == 404, path

    plugin = next(p for p in client.get("/api/v2/plugins").json()["plugins"] if p["name"] == "agent_traffic")
    assert {v["name"] for v in plugin["external_views"]} >= {"AI traffic report", "AI traffic data quality"}


def test_the_pages_read_an_s3_staging_through_the_amazon_providers_connection(
        plugins, s3_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The API server resolves the staging store's Connection as the DAGs' workers do: an `aws`
    Connection with a role and its keys in the extra (no login or password), read by the Amazon
    provider, which assumes the role (moto's STS on loopback)."""
    make_bucket(s3_server, "ui-staging")
    put_object(s3_server, "ui-staging", report_key(DAY1), b"<html>the report in S3</html>")
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    for var in ("AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE"):  # no credentials but the Connection's
        monkeypatch.setenv(var, str(tmp_path / "none"))
    monkeypatch.setenv("AIRFLOW_CONN_UI_STAGING_AWS", json.dumps({"conn_type": "aws", "extra": {
        "aws_access_key_id": "AKIDEXAMPLE", "aws_secret_access_key": "not-the-role-secret",
        "role_arn": "arn:aws:iam::123456789012:role/staging-reader", "region_name": "us-east-1",
        "endpoint_url": s3_server, "service_config": {"sts": {"endpoint_url": s3_server}}}}))
    config = tmp_path / "ui.yaml"
    config.write_text(yaml.safe_dump({
        "version": 1, "staging": "s3://ui-staging/", "object_store": {"airflow_conn_id": "ui_staging_aws"},
        "sources": [{"name": "w", "url": "s3://ui-logs/{date:%Y/%m/%d}/", "site": "example.com"}],
        "sites": [{"name": "example.com", "destinations": []}]}))
    monkeypatch.setenv("AGENT_TRAFFIC_CONFIG", str(config))
    r = _client(monkeypatch, all_admins=True).get("/agent-traffic/report/latest")
    assert r.status_code == 200 and r.content == b"<html>the report in S3</html>"


def test_the_pages_need_an_airflow_login(plugins, monkeypatch) -> None:
    client = _client(monkeypatch, all_admins=False)
    for path in ("/agent-traffic/report/latest", "/agent-traffic/quality", "/agent-traffic/"):
        assert client.get(path).status_code in (401, 403), path


def test_a_missing_config_is_a_clear_503(plugins, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AGENT_TRAFFIC_CONFIG", str(tmp_path / "nope.yaml"))
    r = _client(monkeypatch, all_admins=True).get("/agent-traffic/report/latest")
    assert r.status_code == 503 and "AGENT_TRAFFIC_CONFIG" in r.json()["detail"]


def test_the_nightly_dag_writes_the_report_beside_its_summary(airflow_home: Path) -> None:
    """`write_report` runs once parsing and delivery are done, whatever their outcome, and is not
    downstream of `report`: a run with problems still fails, and still gets its report."""
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(REPO / "dags")).get_dag("agent_traffic_nightly")
    task = dag.get_task("write_report")
    assert task.trigger_rule == "all_done" and task.retries >= 1
    assert "parse_and_stage" in task.upstream_task_ids
    assert {t for t in dag.task_ids if t.startswith("deliver_")} <= task.upstream_task_ids
    assert "report" not in task.upstream_task_ids and not task.downstream_task_ids


def test_a_day_that_is_not_a_date_is_a_400(plugins, monkeypatch) -> None:
    client = _client(monkeypatch, all_admins=True)
    for day in ("../../etc", "2026-13-01", "<script>"):
        r = client.get("/agent-traffic/quality", params={"day": day})
        assert r.status_code == 400 and "YYYY-MM-DD" in r.json()["detail"], day


def test_every_answer_carries_a_strict_policy_and_nosniff(plugins, staged: Staged, monkeypatch) -> None:
    """Our pages may run only the report's own script (by hash) and fetch nothing; files served as
    stored (GX's pages) run sandboxed, with no script at all; nothing is content-sniffed."""
    from agent_traffic.team.report import SCRIPT_HASH

    client = _client(monkeypatch, all_admins=True)
    paths = ["/agent-traffic/", "/agent-traffic/report/latest", f"/agent-traffic/report/{DAY1}",
             "/agent-traffic/quality", "/agent-traffic/report/not-a-date", "/agent-traffic/quality?day=x",
             f"/agent-traffic/files/_quality/date={DAY1}/docs/index.html",
             f"/agent-traffic/files/_reports/date={DAY1}/report.html", "/agent-traffic/files/nope"]
    for path in paths:
        r = client.get(path)
        csp = r.headers.get("content-security-policy", "")
        directives = dict((d.strip().split(" ", 1) + [""])[:2] for d in csp.split(";") if d.strip())
        assert r.headers.get("x-content-type-options") == "nosniff", path
        assert directives.get("default-src") == "'none'" and "unsafe-inline" not in directives.get("script-src", ""), path
        assert not any("http" in v or "*" in v for v in directives.values()), path
        if "/files/" in path:
            assert "sandbox" in directives and "script-src" not in directives, path
        else:
            assert directives["script-src"] == SCRIPT_HASH, path


def test_the_dag_hands_resolved_keys_to_airflows_secret_masker(airflow_home: Path, monkeypatch) -> None:
    from airflow.sdk._shared.secrets_masker import redact

    from agent_traffic.config import Destination, SecretRef
    from agent_traffic_airflow import secret
    from tests.leaks import new_key

    key = new_key()
    monkeypatch.setenv("KA_KEY_FOR_MASK", key)
    dest = Destination(name="ka", vendor="knownagents", secret=SecretRef(env="KA_KEY_FOR_MASK"))
    assert secret(dest).reveal() == key  # read from the environment variable ...
    assert key not in redact(f"the vendor said: bad key {key}")  # ... and masked in task logs
