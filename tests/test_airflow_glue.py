"""The Airflow side shared by the DAGs and the plugin (`plugins/agent_traffic_airflow.py`) and the
days a run processes: what Connections give the pipeline, and which tasks make a run fail."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

import pytest

from agent_traffic.config import parse_config
from agent_traffic.ingest.storage import list_objects
from agent_traffic.run.steps import run_days
from tests.conftest import make_bucket, put_object


def test_the_days_of_a_run() -> None:
    run_after = datetime(2026, 12, 2, 9, 30, tzinfo=UTC)
    assert run_days("2026-11-01", "2026-11-03", None, run_after) == [date(2026, 11, 1), date(2026, 11, 2),
                                                                    date(2026, 11, 3)]
    assert run_days("2026-11-01", None, datetime(2026, 11, 30, tzinfo=UTC), run_after) == [date(2026, 11, 1)]
    # `airflow dags trigger -l 2026-11-30`: that day, whatever Airflow's inferred data interval says
    assert run_days(None, None, datetime(2026, 11, 30, tzinfo=UTC), run_after) == [date(2026, 11, 30)]
    assert run_days(None, None, None, run_after) == [date(2026, 12, 1)]  # the last complete day


def test_an_aws_connection_is_resolved_by_the_amazon_provider_role_and_all(
        airflow_home, s3_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """A Connection with `role_arn`: the provider assumes the role (moto's STS on loopback) and
    the store lists the bucket with the temporary credentials and their session token."""
    from agent_traffic_airflow import store_options

    make_bucket(s3_server, "role-logs")
    put_object(s3_server, "role-logs", "2026/11/21/a.log.gz", b"x")
    monkeypatch.setenv("AIRFLOW_CONN_LOGS_AWS", json.dumps({
        "conn_type": "aws", "login": "AKIDEXAMPLE", "password": "not-the-role-secret",
        "extra": {"role_arn": "arn:aws:iam::123456789012:role/logs-reader", "region_name": "us-east-1",
                  "endpoint_url": s3_server, "service_config": {"sts": {"endpoint_url": s3_server}}}}))
    cfg = parse_config({"version": 1, "staging": str(tmp_path / "staging"),
                        "object_store": {"airflow_conn_id": "logs_aws"},
                        "sources": [{"name": "w", "url": "s3://role-logs/{date:%Y/%m/%d}/", "site": "example.com"}],
                        "sites": [{"name": "example.com", "destinations": []}]}, base_dir=tmp_path)
    options = store_options(cfg)
    assert options.key.startswith("ASIA") and options.token and options.secret != "not-the-role-secret"
    assert "ASIA" not in repr(options) and options.token not in repr(options)
    assert options.fsspec_kwargs("s3")["token"] == options.token
    assert [o.url for o in list_objects("s3://role-logs/2026/11/21/", options)] == ["s3://role-logs/2026/11/21/a.log.gz"]


@pytest.mark.parametrize(("conn", "url"), [
    ({"conn_type": "http", "host": "https://webhooks.example.com/"}, "https://webhooks.example.com"),
    ({"conn_type": "http", "host": "webhooks.example.com", "schema": "http", "port": 8443},
     "http://webhooks.example.com:8443"),
    ({"conn_type": "http", "host": "webhooks.example.com"}, "https://webhooks.example.com"),
    ({"conn_type": "generic", "password": "k"}, None),
])
def test_a_destinations_connection_host_is_its_base_url(conn, url, airflow_home, monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path) -> None:
    from agent_traffic_airflow import connection_base_url, with_base_url

    monkeypatch.setenv("AIRFLOW_CONN_SCRUNCH_EXAMPLE", json.dumps({**conn, "password": "k"}))
    cfg = parse_config({"version": 1, "staging": str(tmp_path), "sites": [{
        "name": "example.com", "destinations": [
            {"name": "scrunch-example", "vendor": "scrunch", "site_id": "01JDEM0SANDB0X0000000000AA",
             "base_url": "https://config.example", "secret": {"airflow_conn_id": "scrunch_example"}},
            {"name": "other", "vendor": "scrunch", "site_id": "01JDEM0SANDB0X0000000000BB",
             "base_url": "https://config.example", "secret": {"env": "K"}}]}],
        "sources": [{"name": "w", "url": str(tmp_path) + "/{date:%Y}/", "site": "example.com"}]}, base_dir=tmp_path)
    dest = cfg.destination("scrunch-example")
    assert connection_base_url(dest) == url
    moved = with_base_url(cfg, dest.name, connection_base_url(dest))
    assert moved.destination("scrunch-example").endpoint_base == (url or "https://config.example")
    assert moved.destination("other").endpoint_base == "https://config.example"


def test_a_run_fails_on_failed_tasks_causes_first(airflow_home) -> None:
    from agent_traffic_airflow import failed_tasks

    states = {"discover": "failed", "parse_and_stage": "upstream_failed", "validate": "upstream_failed",
              "deliver_scrunch_0": "success", "deliver_scrunch_1": "failed", "plan_scrunch": "success",
              "report": "running", "write_report": "upstream_failed", "parse_and_stage_3": "removed"}
    assert failed_tasks(states, ignore=("report", "write_report")) == [
        "deliver_scrunch_1 (failed)", "discover (failed)", "parse_and_stage (upstream_failed)",
        "validate (upstream_failed)"]


def test_a_poisoned_object_is_retried_from_airflow_with_the_trigger_it_names(airflow_home, tmp_path) -> None:
    """In Airflow the PROBLEM line names the trigger with `retry_poisoned`, a param of the DAG."""
    from airflow.dag_processing.dagbag import DagBag

    from agent_traffic.run.summary import build_summary
    from tests.conftest import REPO

    dag = DagBag(dag_folder=str(REPO / "dags")).get_dag("agent_traffic_nightly")
    assert dag.params["retry_poisoned"] is False
    nightly = __import__("agent_traffic_nightly")
    command = nightly._trigger_command({"date_from": "{date}", "retry_poisoned": True})
    cfg = parse_config({"version": 1, "staging": str(tmp_path), "sites": [{"name": "example.com", "destinations": []}],
                        "sources": [{"name": "w", "url": str(tmp_path) + "/{date:%Y}/", "site": "example.com"}]},
                       base_dir=tmp_path)
    poisoned = {"url": "s3://logs/bad.log.gz", "date": "2026-11-21", "failures": 3, "reason": "boom"}
    s = build_summary(run_id="r", cfg=cfg, days=["2026-11-21"], discovery={"poisoned": [poisoned]}, objects=[],
                      deliveries=[], ledger=[], dry_run=False, retry_poisoned_command=command)
    said = next(p for p in s["problems"] if "is poisoned" in p)
    assert said.endswith("""`airflow dags trigger agent_traffic_nightly -c '{"date_from": "2026-11-21", "retry_poisoned": true}'`""")
