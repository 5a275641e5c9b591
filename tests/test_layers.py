"""The package under include/ is the pipeline without Airflow: the DAGs and the plugin import it,
never the other way round, so every stage runs and is tested on its own (and by the command line)."""

from __future__ import annotations

import ast
from pathlib import Path

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

#: Stage packages from the bottom up: a module may import its own package, the foundation (the
#: modules at the top of agent_traffic) and the packages below it, never one above.
LAYERS = ("ingest", "annotate", "staging", "delivery", "run", "team", "devtools")
#: Entry points that wire every stage together, so they sit above all of them.
ENTRY = {"cli", "__main__"}
PKG = REPO / "include" / "agent_traffic"


def _layer(module: str) -> int | None:
    """The layer of `agent_traffic.x[.y]`: -1 for the foundation, None for an entry point."""
    parts = module.split(".")
    if parts[0] != "agent_traffic" or len(parts) < 2:
        return -1
    if parts[1] in ENTRY:
        return None
    return LAYERS.index(parts[1]) if parts[1] in LAYERS else -1


def upward_imports(pkg: Path = PKG) -> dict[str, list[str]]:
    """module -> the later-stage modules it imports, for every module under `pkg`."""
    bad: dict[str, list[str]] = {}
    for p in sorted(pkg.rglob("*.py")):
        me = ".".join(p.relative_to(pkg.parent).with_suffix("").parts)
        mine = _layer(me)
        if mine is None:
            continue
        for name in _imports(p.read_text()):
            theirs = _layer(name) if name.startswith("agent_traffic") else -1
            if theirs is None or theirs > mine:
                bad.setdefault(me, []).append(name)
    return bad


def test_every_module_sits_in_a_stage_package_or_the_foundation() -> None:
    top = sorted(p.stem for p in PKG.glob("*.py"))
    assert set(LAYERS) <= {p.name for p in PKG.iterdir() if (p / "__init__.py").exists()}
    assert len(top) <= 13, top  # the foundation stays small: config, formats, errors, layout, arrow_values, ...


def test_no_stage_imports_a_later_stage() -> None:
    assert upward_imports() == {}


def test_the_layer_check_sees_an_upward_import_however_it_is_written(tmp_path: Path) -> None:
    pkg = tmp_path / "agent_traffic"
    for folder, name, text in [
        ("staging", "validate.py", "def f():\n    from agent_traffic.team.report import page\n"),
        ("ingest", "parse.py", "import agent_traffic.delivery.plan as p\nfrom agent_traffic.config import X\n"),
        ("delivery", "plan.py", "from agent_traffic.staging.validate import v\nfrom agent_traffic import errors\n"),
        (".", "cli.py", "from agent_traffic.devtools import sandbox\n"),
    ]:
        (pkg / folder).mkdir(parents=True, exist_ok=True)
        (pkg / folder / name).write_text(text)
    assert upward_imports(pkg) == {"agent_traffic.staging.validate": ["agent_traffic.team.report"],
                                   "agent_traffic.ingest.parse": ["agent_traffic.delivery.plan"]}
