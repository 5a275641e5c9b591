"""The run's steps (`agent_traffic.run.steps`): the nightly DAG and `agent-traffic run` call the same
ones, so a date run either way writes the same discovery record, plans and summary."""

from __future__ import annotations

import ast

from agent_traffic.ingest.discover import ObjectRef
from agent_traffic.run.steps import parse_batches
from tests.conftest import REPO

CONDUCTORS = (REPO / "dags" / "agent_traffic_nightly.py", REPO / "include" / "agent_traffic" / "run" / "runner.py")


def _imported_names(source: str) -> set[str]:
    return {a.name for node in ast.walk(ast.parse(source)) if isinstance(node, ast.ImportFrom)
            for a in node.names}


def _ref(name: str, size: int) -> ObjectRef:
    return ObjectRef(object_id=name, url=f"s3://logs/{name}", size=size, etag=name, mtime=None, source="web",
                     date="2026-11-21")


def test_objects_go_to_batches_of_about_equal_bytes_largest_first() -> None:
    refs = [_ref("a", 100), _ref("b", 60), _ref("c", 50), _ref("d", 30), _ref("e", 20)]
    batches = parse_batches(refs, 2)
    assert [[r.object_id for r in b] for b in batches] == [["a", "d"], ["b", "c", "e"]]  # 130 bytes each
    assert sorted(r.object_id for b in batches for r in b) == ["a", "b", "c", "d", "e"]  # each once
    assert [len(b) for b in parse_batches(refs, 64)] == [1] * 5  # never an empty batch
    assert parse_batches([], 64) == []


def test_the_dag_and_the_runner_call_the_same_steps_and_build_nothing_themselves() -> None:
    for path in CONDUCTORS:
        names = _imported_names(path.read_text())
        assert {"discover_days", "plan_days", "finish_run"} <= names, path.name
        assert not names & {"discover_objects", "plan_deliveries", "build_summary", "ledger_status",
                            "source_holds", "planned_dates"}, path.name


def test_the_default_config_path_is_written_once() -> None:
    code = [p for folder in ("dags", "plugins", "include") for p in (REPO / folder).rglob("*.py")]
    spelled = sorted(str(p.relative_to(REPO)) for p in code
                     if any(isinstance(n, ast.Constant) and n.value == "agent-traffic.yaml"
                            for n in ast.walk(ast.parse(p.read_text()))))
    assert spelled == ["plugins/agent_traffic_airflow.py"]
