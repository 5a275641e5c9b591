"""One module spells the staging layout (`layout.py`), one the delivery ledger (`ledger.py`): any
other module that writes a staging prefix as a string fails here, and the keys read back."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_traffic import layout
from tests.conftest import REPO

#: Pieces of a staging key, by the module that owns them. Docstrings and comments may mention
#: them; code may not: it calls the owner.
_AT = r"(?:^|[/^])"  # a key's start or a folder's: a path, a prefix, a regex's anchor
LAYOUT = re.compile(rf"{_AT}(events|quarantine)/|{_AT}_(manifests|holds|runs|quality|reports|ranges|outbox)(/|$)"
                    rf"|{_AT}date=|/(site|provider|source)=")
LEDGER = re.compile(rf"{_AT}_delivery(/|$)|/(plans|packs|acks|dead|too_old|leases|stopped)/")
OWNERS = {"include/agent_traffic/layout.py": LAYOUT, "include/agent_traffic/delivery/ledger.py": LEDGER}
#: The ledger's own keys are partitioned the same way (`site=<s>/date=<D>` under `_delivery/<dest>/`).
PARTITION = re.compile(r"(?<=[})])/(site|date)=")  # after a field or a regex group, never a prefix


def _sources() -> list[Path]:
    return sorted([*(REPO / "include" / "agent_traffic").rglob("*.py"), *(REPO / "dags").glob("*.py"),
                   *(REPO / "plugins").glob("*.py")])


def string_literals(source: str) -> Iterator[tuple[int, str]]:
    """(line, text) of every string in code: an f-string whole, its fields as `{}`; docstrings left out."""
    tree = ast.parse(source)
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                skip.add(id(first.value))
        elif isinstance(node, ast.JoinedStr):
            skip |= {id(v) for v in ast.walk(node) if v is not node}
            yield node.lineno, "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            yield node.lineno, node.value


def misplaced(rel: str, source: str) -> list[str]:
    """The staging or ledger key pieces `rel` spells though another module owns them."""
    out = []
    for line, text in sorted(string_literals(source)):
        owner = LEDGER if LEDGER.search(text) else LAYOUT if LAYOUT.search(text) else None
        if owner is LAYOUT and OWNERS.get(rel) is LEDGER and not LAYOUT.search(PARTITION.sub("", text)):
            continue  # the ledger partitions its subtree by site and date too
        if owner is not None and OWNERS.get(rel) is not owner:
            out.append(f"{rel}:{line}: {text!r} ({'ledger.py' if owner is LEDGER else 'layout.py'} owns it)")
    return out


def test_no_module_but_layout_and_ledger_spells_a_staging_key() -> None:
    files = _sources()
    assert len(files) > 30 and any(p.parent.name == "plugins" for p in files)
    found = [m for p in files for m in misplaced(str(p.relative_to(REPO)), p.read_text("utf-8"))]
    assert found == [], "build these keys with agent_traffic.layout (or the ledger):\n" + "\n".join(found)


def test_the_check_sees_keys_in_code_but_not_in_docstrings_or_comments() -> None:
    source = '''"""Writes events/site=<s>/ and _runs/<id>.json."""
def f(site, day, run_id):
    """Under _quality/date=<D>/."""
    # quarantine/date=<D>/
    a = f"events/site={site}/provider=x/date={day}/part-1.parquet"
    b = "_runs/" + run_id
    c = store.path("_quality")
    d = f"{root}/_delivery/{dest}/site={site}/date={day}"
    e = f"{prefix}/acks/{chunk}.json"
    g = "_manifests/date=" f"{day}/"
    h = f"site={site}"  # a finding's scope, not a key
    i = re.compile(r"^_runs/([^/]+)\\.json$")
'''
    found = misplaced("include/agent_traffic/x.py", source)
    assert [f.split(":")[1] for f in found] == ["5", "6", "7", "8", "9", "10", "12"], found
    assert "ledger.py owns it" in found[3] and "layout.py owns it" in found[0]
    lines = {owner: [f.split(":")[1] for f in found if f"{owner} owns it" in f] for owner in ("layout.py", "ledger.py")}
    assert lines["ledger.py"] == ["8", "9"]
    assert [f.split(":")[1] for f in misplaced("include/agent_traffic/delivery/ledger.py", source)] == lines["layout.py"]
    assert [f.split(":")[1] for f in misplaced("include/agent_traffic/layout.py", source)] == lines["ledger.py"]
    ledger_key = 'k = f"{root}/{dest}/site={site}/date={day}"\n'
    assert misplaced("include/agent_traffic/delivery/ledger.py", ledger_key) == []  # its own subtree, partitioned alike
    assert len(misplaced("include/agent_traffic/delivery/deliver.py", ledger_key)) == 1


# ---------------------------------------------------------------------------------------------
# Keys: the exact bytes earlier releases wrote (existing staging must read back), and their parsers


def test_keys_keep_the_bytes_staging_already_holds() -> None:
    d, oid = "2026-03-01", "0123456789abcdef"
    assert layout.event_key("example.com", "openai", d, oid) == \
        f"events/site=example.com/provider=openai/date={d}/part-{oid}.parquet"
    assert layout.quarantine_key(d, oid) == f"quarantine/date={d}/part-{oid}.parquet"
    assert layout.quality_quarantine_key(d, oid) == f"quarantine/date={d}/part-{oid}-quality.parquet"
    assert layout.manifest_key(d, oid) == f"_manifests/date={d}/{oid}.json"
    assert layout.manifests_prefix() == "_manifests/" and layout.manifests_prefix(d) == f"_manifests/date={d}/"
    assert layout.hold_key(d, "cdn") == f"_holds/date={d}/source=cdn.json"
    assert layout.holds_prefix(d) == f"_holds/date={d}/"
    assert layout.run_key("r1") == "_runs/r1.json" and layout.discovery_key("r1") == "_runs/discovery/r1.json"
    assert layout.quality_key(d, "r1") == f"_quality/date={d}/r1.json"
    assert layout.quality_status_key(d, "example.com") == f"_quality/date={d}/site=example.com/status.json"
    assert layout.quality_prefix() == "_quality/" and layout.quality_prefix(d) == f"_quality/date={d}/"
    assert layout.docs_prefix(d) == f"_quality/date={d}/docs/"
    assert layout.docs_index_key(d) == f"_quality/date={d}/docs/index.html"
    assert layout.report_key(d) == f"_reports/date={d}/report.html"
    assert layout.ranges_root("s3://bucket/staging/") == "s3://bucket/staging/_ranges"
    assert layout.outbox_key("r1", "plausible", d, "c.json") == f"r1/plausible/{d}/c.json"
    assert layout.parquet_glob(layout.EVENTS, d) == f"events/*/*/date={d}/*.parquet"
    assert layout.parquet_glob(layout.QUARANTINE, d) == f"quarantine/date={d}/*.parquet"
    assert layout.parquet_glob(layout.EVENTS) == "events/**/*.parquet"


@pytest.mark.parametrize("site", ["example.com", "blog.example.org", "xn--bcher-kva.example"])
def test_event_keys_read_back(site: str) -> None:
    key = layout.event_key(site, "anthropic", "2026-01-02", "ab12")
    assert layout.is_event_key(key) and key.startswith(layout.events_prefix(site))
    assert not key.startswith(layout.events_prefix(site + "x"))
    assert layout.event_site(key) == site and layout.day_of(key) == "2026-01-02"
    quarantined = layout.quarantine_key("2026-01-02", "ab12")
    assert not layout.is_event_key(quarantined)
    assert layout.day_of(quarantined) == "2026-01-02"


def test_record_keys_read_back() -> None:
    d = "2026-12-31"
    assert layout.parse_quality_status_key(layout.quality_status_key(d, "example.com")) == (d, "example.com")
    assert layout.parse_quality_status_key(layout.quality_key(d, "r1")) is None
    assert layout.parse_report_key(layout.report_key(d)) == d
    assert layout.parse_report_key(f"{layout.reports_prefix()}date={d}/other.html") is None
    assert layout.parse_run_key(layout.run_key("manual__2026-01-02T00:00")) == "manual__2026-01-02T00:00"
    assert layout.parse_run_key(layout.discovery_key("r1")) is None
    assert layout.is_docs_index(layout.docs_index_key(d)) and not layout.is_docs_index(layout.quality_key(d, "r"))
    assert layout.day_of(f"date={d}") == d and layout.day_of("discovery") is None
    for key in (layout.manifest_key(d, "o"), layout.hold_key(d, "s"), layout.quality_key(d, "r"),
                layout.docs_index_key(d), layout.report_key(d)):
        assert layout.day_of(key) == d, key
