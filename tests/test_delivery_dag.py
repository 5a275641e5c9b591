"""The DAG delivers to all three vendors: a pool and mapped tasks per vendor, a key per destination
from its Airflow Connection, and the outcome table in the task log, without a key in it."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.vendor_fixtures import fast_hitkeep, keys, received, three_vendor_config, wanted

pytestmark = pytest.mark.airflow


@pytest.fixture
def dag(airflow_home: Path):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    return bag.get_dag("agent_traffic_nightly")


def test_a_pool_and_mapped_tasks_per_vendor(dag) -> None:
    for vendor in ("scrunch", "hitkeep", "knownagents"):
        assert dag.get_task(f"plan_{vendor}")
        deliver = dag.get_task(f"deliver_{vendor}")
        assert deliver.pool == f"agent_traffic_{vendor}"
    # HitKeep limits each client IP and the limiter lives in the task's process: one at a time.
    assert dag.get_task("deliver_hitkeep").max_active_tis_per_dagrun == 1
    assert dag.get_task("deliver_knownagents").max_active_tis_per_dagrun == 4


def test_dag_run_delivers_to_three_vendors_with_a_connection_per_destination(
    dag, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd
) -> None:
    from airflow.utils.state import DagRunState

    from agent_traffic.devtools.sandbox import Sandbox

    dest_keys = keys()
    with Sandbox(api_keys=dest_keys.values(), seed=9) as sb:
        sb.retry_after = 0
        fast_hitkeep(sb)
        opt_in = {"send_older_events": True}  # DAY is in the past: send it anyway
        cfg = three_vendor_config(tmp_path / "c.yaml", tmp_path, sb.url, hitkeep=opt_in, knownagents=opt_in,
                                  delivery={"chunks_per_group": 200})  # a few mapped tasks, not dozens
        monkeypatch.setenv("AGENT_TRAFFIC_CONFIG", str(cfg))
        for name, key in dest_keys.items():
            conn = name.replace("-", "_").upper()
            monkeypatch.setenv(f"AIRFLOW_CONN_{conn}", json.dumps({"conn_type": "generic", "password": key}))
        run = dag.test(logical_date=datetime(2026, 11, 21, tzinfo=UTC))  # the logical date names the day
        assert run.state == DagRunState.SUCCESS
        got = received(sb)
    for name, seqs in wanted().items():
        assert set(got[name]) == seqs and max(got[name].values()) == 1, name
    out = capfd.readouterr()
    log = out.out + out.err
    for name in dest_keys:  # a row per site and destination in the report task's table
        assert any(line.startswith(name) for line in log.splitlines()), name
    assert "not eligible for HitKeep (OAI-SearchBot)" in log  # the report task's table
    for key in dest_keys.values():
        assert key not in log
