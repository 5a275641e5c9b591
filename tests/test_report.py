"""The HTML report: every chart's numbers against the staged Parquet and the ledger, computed here
independently (DuckDB straight over the files, numpy percentiles, the run summary's ledger), and
the file is self-contained (no network, hostile text escaped)."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pytest

from agent_traffic.cli import main
from agent_traffic.config import load_config
from agent_traffic.layout import report_key
from agent_traffic.run.summary import ledger_status
from agent_traffic.team.report import TOP, build_report, report_days, write_daily_report
from tests.test_query import DAY1, DAY2, HOSTILE_PATH, Staged, shared_staging

Cells = dict[tuple[str, str], float]  # (label, series) -> value


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Staged:
    return shared_staging(tmp_path_factory)


@pytest.fixture(scope="module")
def page(staged: Staged) -> str:
    return build_report(staged.store, DAY1, DAY2)


def report_data(html_text: str) -> dict[str, Any]:
    m = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', html_text, re.S)
    assert m, "the report embeds its data"
    return json.loads(m.group(1))


def chart_cells(chart: dict[str, Any]) -> Cells:
    return {(label, s["name"]): s["values"][i] for s in chart["series"]
            for i, label in enumerate(chart["labels"]) if s["values"][i]}


def _rows(staged: Staged, sql: str) -> list[tuple]:
    return duckdb.sql(sql.replace("EVENTS", staged.raw_events())).fetchall()


def _top(rows: list[tuple]) -> list[tuple]:
    """Rows (label, value, ...) ordered as the report ranks them: value desc, then label."""
    return sorted(rows, key=lambda r: (-r[1], r[0]))[:TOP]


def expected_charts(staged: Staged) -> dict[str, Cells]:
    """What each chart must show, from the Parquet files and the ledger, without agent_traffic.team.query."""
    out: dict[str, Cells] = {}
    for chart, col in (("ai-by-provider", "provider"), ("ai-by-purpose", "purpose")):
        out[chart] = {(str(d), s): n for d, s, n in _rows(
            staged, f"SELECT date, {col}, count(*) FROM EVENTS WHERE is_ai GROUP BY ALL")}
    agents = _top(_rows(staged, "SELECT agent, count(*) FROM EVENTS WHERE is_ai GROUP BY agent"))
    out["top-agents"] = {(a, "requests"): n for a, n in agents}
    paths = _top(_rows(staged, "SELECT path, count(*) FROM EVENTS WHERE is_ai GROUP BY path"))
    out["top-paths"] = {(p, "requests"): n for p, n in paths}
    cov = _top(_rows(staged, """SELECT agent, count(DISTINCT (host, path)) FROM EVENTS
                                WHERE is_ai AND status >= 200 AND status < 300 GROUP BY agent"""))
    out["coverage"] = {(a, "distinct URLs"): n for a, n in cov}
    errs = _rows(staged, """SELECT agent || ' · ' || path, sum(CASE WHEN status < 500 THEN 1 ELSE 0 END),
                                   sum(CASE WHEN status >= 500 THEN 1 ELSE 0 END)
                            FROM EVENTS WHERE is_ai AND status >= 400 GROUP BY ALL""")
    errs = sorted(errs, key=lambda r: (-(r[1] + r[2]), r[0]))[:TOP]
    out["errors"] = {k: v for label, e4, e5 in errs for k, v in (((label, "4xx"), e4), ((label, "5xx"), e5)) if v}
    durations: dict[str, list[float]] = {}
    for agent, ms in _rows(staged, "SELECT agent, duration_ms FROM EVENTS WHERE is_ai AND duration_ms IS NOT NULL"):
        durations.setdefault(agent, []).append(ms)
    ranked = sorted(durations, key=lambda a: (-len(durations[a]), a))[:TOP]
    out["response-times"] = {(a, q): float(np.percentile(durations[a], p))  # the report rounds to 0.01
                             for a in ranked for q, p in (("p50", 50), ("p95", 95))}
    top_agents = [a for a, _ in agents]
    out["verification"] = {(a, v or "not recorded"): n for a, v, n in _rows(
        staged, "SELECT agent, verification, count(*) FROM EVENTS WHERE is_ai GROUP BY ALL") if a in top_agents}
    out["referred"] = {(p, "visits"): n for p, n in _rows(
        staged, "SELECT referred_by, count(*) FROM EVENTS WHERE referred_by IS NOT NULL GROUP BY ALL")}
    cfg = load_config(staged.config)
    deliveries: Cells = {}
    for st in ledger_status(cfg, staged.store, [str(DAY1), str(DAY2)]):
        label = f"{st.destination} ({st.site})"
        for outcome in ("delivered", "failed", "pending", "held", "too_old"):
            if getattr(st, outcome, 0):
                deliveries[(label, outcome.replace("_", " "))] = getattr(st, outcome)
        for reason, n in st.not_selected.items():
            deliveries[(label, f"not sent: {reason}")] = n
        for reason, n in (getattr(st, "not_eligible", None) or {}).items():
            deliveries[(label, f"not eligible: {reason}")] = n
    out["deliveries"] = deliveries
    return out


def test_every_chart_shows_the_numbers_of_the_staged_data(staged: Staged, page: str) -> None:
    charts = {c["id"]: c for c in report_data(page)["charts"]}
    want = expected_charts(staged)
    assert set(charts) == set(want)
    for chart_id, cells in want.items():
        got = chart_cells(charts[chart_id])
        assert got.keys() == cells.keys(), chart_id
        for k, v in cells.items():
            assert got[k] == pytest.approx(v, abs=0.0051), (chart_id, k)
    # the fixture exercises every chart: nothing is empty by accident
    assert all(want[c] for c in want), [c for c in want if not want[c]]
    assert {s for _, s in want["deliveries"]} >= {"delivered", "failed", "held"}
    assert {s for _, s in want["verification"]} == {"verified", "spoofed", "unverifiable", "not recorded"}
    # ranked charts keep the ranking order
    for chart_id in ("top-agents", "top-paths", "coverage", "errors"):
        assert charts[chart_id]["labels"] == list(dict.fromkeys(k[0] for k in want[chart_id])), chart_id


class _Tables(HTMLParser):
    """Collects the number tables: chart id -> {(label, series): value} from data attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: dict[str, Cells] = {}
        self.metrics: dict[str, float] = {}
        self.chart = ""
        self.label = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "figure" and a.get("data-chart"):
            self.chart = a["data-chart"] or ""
            self.cells[self.chart] = {}
        elif tag == "tr" and "data-label" in a:
            self.label = a["data-label"] or ""
        elif tag == "td" and "data-series" in a and a["data-series"] != "total" and float(a["data-value"] or 0):
            self.cells[self.chart][(self.label, a["data-series"] or "")] = float(a["data-value"] or 0)
        elif tag == "div" and "data-metric" in a:
            self.metrics[a["data-metric"] or ""] = float(a["data-value"] or 0)


def test_the_tables_under_the_charts_carry_the_same_numbers(staged: Staged, page: str) -> None:
    parser = _Tables()
    parser.feed(page)
    want = expected_charts(staged)
    for chart_id, cells in want.items():
        assert parser.cells[chart_id].keys() == cells.keys(), chart_id
        for k, v in cells.items():
            assert parser.cells[chart_id][k] == pytest.approx(v, abs=0.0051), (chart_id, k)
    ev = _rows(staged, "SELECT count(*), count(*) FILTER (WHERE is_ai), count(DISTINCT agent) FILTER (WHERE is_ai) "
                       "FROM EVENTS")[0]
    quarantined = duckdb.sql(f"SELECT count(*) FROM read_parquet('{staged.staging}/quarantine/**/*.parquet')").fetchall()
    (st,) = ledger_status(load_config(staged.config), staged.store, [str(DAY1), str(DAY2)])
    assert parser.metrics["requests"] == ev[0] and parser.metrics["ai"] == ev[1]
    assert parser.metrics["ai-agents"] == ev[2]
    assert parser.metrics["quarantined"] == quarantined[0][0] > 0
    assert parser.metrics["lines-read"] == sum(s["lines"]["read"] for s in staged.summaries.values())
    assert (parser.metrics["delivered"], parser.metrics["failed"], parser.metrics["pending"],
            parser.metrics["held"]) == (st.delivered, st.failed, st.pending, st.held)
    assert parser.metrics["quality-failed"] == 1


def test_the_health_section_names_every_problem(page: str) -> None:
    section = page[page.index("<section id='health'>"):page.index("</section>")]
    assert "HTTP 422" in section  # the dead letter, with the vendor's status
    assert "event(s) held by failed data-quality checks" in section  # the dry-run day, quality failed
    assert "delivery held" in section and "expect_column_values_to_be_unique(event_id)" in section
    assert "unparseable timestamp" in section  # a quarantine reason


def test_the_report_is_self_contained_and_escapes_what_it_shows(page: str) -> None:
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page, re.I)
    assert not re.search(r"<(link|img|iframe|object|embed)\b|@import|url\(|<script[^>]+src", page, re.I)
    # the hostile path is data: escaped in the HTML, and unable to close the JSON script element
    top_paths = next(c for c in report_data(page)["charts"] if c["id"] == "top-paths")
    assert HOSTILE_PATH in top_paths["labels"]
    assert "<em>bold</em>" not in page and "&lt;em&gt;bold&lt;/em&gt;" in page
    assert page.count("</script>") == 2


def test_the_nightly_report_goes_to_the_store_by_date(staged: Staged) -> None:
    key = write_daily_report(staged.store, DAY1)
    assert key == report_key(str(DAY1)) == f"_reports/date={DAY1}/report.html"
    html_text = staged.store.get_bytes(key).decode()
    assert f'data-first="{DAY1}" data-last="{DAY1}"' in html_text
    data = report_data(html_text)
    days = {label for c in data["charts"] if c["kind"] == "columns" for label in c["labels"]}
    assert days == {str(DAY1)}
    write_daily_report(staged.store, DAY2)
    assert report_days(staged.store) == [str(DAY2), str(DAY1)]


def test_a_range_without_data_still_reports(staged: Staged) -> None:
    page = build_report(staged.store, "2026-01-01", "2026-01-03")
    data = report_data(page)
    assert all(not c["labels"] for c in data["charts"])
    assert page.count("class='empty'") == len(data["charts"])
    assert "No data-quality results" in page


def test_report_command_writes_a_file(staged: Staged, tmp_path: Path, monkeypatch, capsys) -> None:
    out = tmp_path / "r.html"
    assert main(["report", "--config", str(staged.config), "--from", str(DAY1), "--to", str(DAY2),
                 "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    assert report_data(out.read_text())["charts"] == report_data(build_report(staged.store, DAY1, DAY2))["charts"]
    monkeypatch.chdir(tmp_path)
    assert main(["report", "--config", str(staged.config), "--from", str(DAY2)]) == 0
    assert (tmp_path / f"agent-traffic-report_{DAY2}.html").is_file()
