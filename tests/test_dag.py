"""The DAG in real Airflow: it imports cleanly, and a `dag.test()` run reads gzip logs from an S3
protocol server (moto, on loopback) and delivers to the local receiver."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from agent_traffic.devtools.samples import combined_lines, gzip_log
from tests.conftest import REPO, make_bucket, put_object, write_config

pytestmark = pytest.mark.airflow

DAY = date(2026, 11, 21)
SITE_ID = "01JDEM0SANDB0X0000000000AA"


@pytest.fixture
def dagbag(airflow_home: Path):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags"))


def test_dag_folder_imports_without_errors(dagbag) -> None:
    from airflow.sdk import CronDataIntervalTimetable

    assert dagbag.import_errors == {}
    dag = dagbag.get_dag("agent_traffic_nightly")
    assert isinstance(dag.timetable, CronDataIntervalTimetable)  # not a zero-width cron trigger
    assert dag.catchup is False and dag.max_active_runs == 1
    assert set(dag.params.keys()) == {"date_from", "date_to", "sites", "destinations", "dry_run", "reprocess",
                                        "retry_poisoned"}
    assert dag.doc_md and "agent_traffic_nightly" in dag.doc_md
    deliver = dag.get_task("deliver_scrunch")
    assert deliver.pool == "agent_traffic_scrunch"
    for t in dag.tasks:
        assert t.retries >= 2 or t.task_id.startswith("plan_") or t.task_id == "report" or t.retries >= 1


def test_nightly_run_from_s3_to_the_receiver(
    dagbag, s3_env: str, sandbox, api_key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd
) -> None:
    from airflow.utils.state import DagRunState

    make_bucket(s3_env, "logs")
    make_bucket(s3_env, "staging")
    lines = []
    for i in range(3):
        chunk = list(combined_lines(DAY, 1500, seed=i, tag=f"o{i}"))
        lines += chunk
        put_object(s3_env, "logs", f"nginx/{DAY:%Y/%m/%d}/access-{i}.log.gz", gzip_log(chunk))
    put_object(s3_env, "logs", "nginx/2026/11/22/other-day.log.gz", gzip_log(lines[:10]))
    cfg = write_config(  # the base URL in the config answers nothing: the Connection's host wins
        tmp_path / "cfg.yaml", staging="s3://staging/agent-traffic",
        source_url="s3://logs/nginx/{date:%Y/%m/%d}/*.log.gz", base_url="http://127.0.0.1:9",
        object_store={"endpoint_url": s3_env},
    )
    monkeypatch.setenv("AGENT_TRAFFIC_CONFIG", str(cfg))
    monkeypatch.setenv("AIRFLOW_CONN_SCRUNCH_EXAMPLE", json.dumps({"conn_type": "http", "host": sandbox.url,
                                                                   "password": api_key}))
    monkeypatch.delenv("SCRUNCH_API_KEY_EXAMPLE", raising=False)

    dag = dagbag.get_dag("agent_traffic_nightly")
    run = dag.test(logical_date=datetime(2026, 11, 21, tzinfo=UTC))  # the logical date names the day
    assert run.state == DagRunState.SUCCESS
    assert {ti.task_id: ti.state for ti in run.get_task_instances()}.get("report") == "success"

    accepted = sandbox.accepted("scrunch", SITE_ID)
    seqs = [e["url"].rsplit("seq=", 1)[1] for e in accepted]
    assert len(seqs) == len(set(seqs)) > 100  # every AI event once, none from the other day
    assert all(s.startswith("o") for s in seqs)

    from agent_traffic.ingest.storage import Store, StoreOptions

    store = Store("s3://staging/agent-traffic", StoreOptions(endpoint_url=s3_env, key="testing", secret="testing"))
    summaries = [k for k in store.list("_runs/") if k.count("/") == 1]
    summary = store.get_json(summaries[0])
    assert summary["ok"] and summary["dates"] == [str(DAY)]
    assert summary["lines"]["read"] == 4500 and summary["lines"]["balanced"]
    assert summary["objects"]["staged"] == 3
    manifest = store.get_json(f"_runs/discovery/{summary['run_id']}.json")["objects"]
    assert sorted(o["url"].rsplit("/", 1)[1] for o in manifest) == [f"access-{i}.log.gz" for i in range(3)]
    assert all(o["size"] > 0 and o["etag"] for o in manifest)
    assert summary["destinations"][0]["delivered"] == len(seqs)
    assert store.list(f"events/site=example.com/provider=openai/date={DAY}/")
    assert store.get_json(f"_quality/date={DAY}/site=example.com/status.json")["status"] == "pass"
    assert summary["quality"][str(DAY)]["statuses"] == {"example.com": "pass"}
    assert store.exists(f"_quality/date={DAY}/docs/index.html")
    assert store.exists(f"_reports/date={DAY}/report.html")
    out = capfd.readouterr()
    assert api_key not in out.out + out.err  # the key never reaches the task logs

    # A manual re-run of the same date (trigger-form params) finds nothing new and sends nothing.
    again = dag.test(logical_date=datetime(2026, 11, 25, tzinfo=UTC), run_conf={"date_from": str(DAY)})
    assert again.state == DagRunState.SUCCESS
    assert len(sandbox.accepted("scrunch", SITE_ID)) == len(seqs)
