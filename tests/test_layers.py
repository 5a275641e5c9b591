"""The package under include/ is the pipeline without Airflow: the DAGs and the plugin import it,
never the other way round, so every stage runs and is tested on its own (and by the command line)."""

from __future__ import annotations

import ast

from tests.conftest import REPO


def _imports(source: str) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_include_never_imports_airflow() -> None:
    files = sorted((REPO / "include").rglob("*.py"))
    assert len(files) > 30
    offenders = {str(p.relative_to(REPO)): sorted(n for n in _imports(p.read_text()) if n.split(".")[0] == "airflow")
                 for p in files}
    assert {p: n for p, n in offenders.items() if n} == {}


def test_the_check_sees_an_airflow_import_however_it_is_written() -> None:
    for line in ("import airflow", "from airflow.sdk import dag", "import airflow.models as m",
                 "def f():\n    from airflow.sdk.log import mask_secret"):
        assert any(n.split(".")[0] == "airflow" for n in _imports(line)), line
    assert not _imports("from .airflow import x") and "airflowish" in _imports("import airflowish")
