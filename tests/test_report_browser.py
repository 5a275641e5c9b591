"""The report in a real browser: headless Chromium (Debian's `chromium`) opens the file, its
script draws the charts, and the drawn marks carry the staged data's numbers at proportional
sizes. Only file:// is loaded; Chromium's background networking is off and DNS resolves nothing.
`make test` installs Chromium first (scripts/ensure-chromium.sh); without it this test skips."""

from __future__ import annotations

import shutil
import subprocess
from collections import defaultdict
from html.parser import HTMLParser
from pathlib import Path

import pytest

from agent_traffic.team.report import build_report
from tests.test_query import DAY1, DAY2, HOSTILE_PATH, Staged, shared_staging
from tests.test_report import expected_charts, report_data

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (scripts/ensure-chromium.sh installs it)")


def chromium_dom(page: Path, profile: Path) -> str:
    """The DOM after the page's scripts ran, as Chromium serializes it."""
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--no-default-browser-check",
           "--disable-extensions", "--no-proxy-server", "--host-resolver-rules=MAP * ~NOTFOUND",
           f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom", page.as_uri()]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "<html" in p.stdout, p.stderr[-2000:]
    return p.stdout


class _Dom(HTMLParser):
    """Figures (state), their SVG marks (label, series, value, size) and the page's script count."""

    def __init__(self) -> None:
        super().__init__()
        self.figures: dict[str, dict[str, str]] = {}
        self.marks: dict[str, list[dict[str, str]]] = defaultdict(list)
        self.svg_max: dict[str, float] = {}
        self.body: dict[str, str] = {}
        self.tags: defaultdict[str, int] = defaultdict(int)
        self.texts: list[str] = []
        self._figure = ""
        self._in_svg_text = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags[tag] += 1
        if tag == "body":
            self.body = a
        elif tag == "figure" and "data-chart" in a:
            self._figure = a["data-chart"]
            self.figures[self._figure] = a
        elif tag == "svg" and "data-max" in a:
            self.svg_max[self._figure] = float(a["data-max"])
        elif tag == "rect" and "data-series" in a:
            self.marks[self._figure].append(a)
        self._in_svg_text = tag == "text"

    def handle_data(self, data: str) -> None:
        if self._in_svg_text:
            self.texts.append(data)

    def handle_endtag(self, tag: str) -> None:
        self._in_svg_text = False


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Staged:
    return shared_staging(tmp_path_factory)


@pytest.fixture(scope="module")
def dom(staged: Staged, tmp_path_factory: pytest.TempPathFactory) -> tuple[_Dom, str]:
    folder = tmp_path_factory.mktemp("chromium")
    page = folder / "report.html"
    html_text = build_report(staged.store, DAY1, DAY2)
    page.write_text(html_text, encoding="utf-8")
    parsed = _Dom()
    parsed.feed(chromium_dom(page, folder / "profile"))
    return parsed, html_text


def test_chromium_draws_every_chart(dom: tuple[_Dom, str]) -> None:
    d, html_text = dom
    assert d.body.get("data-charts") == "done"  # the script ran to its end
    states = {chart: f.get("data-rendered") for chart, f in d.figures.items()}
    assert states and all(s == "ok" for s in states.values()), states
    assert set(states) == {c["id"] for c in report_data(html_text)["charts"]}
    assert all(d.marks[c] for c in states)


def test_the_drawn_marks_carry_the_staged_numbers(staged: Staged, dom: tuple[_Dom, str]) -> None:
    d, _ = dom
    for chart, cells in expected_charts(staged).items():
        drawn = {(m["data-label"], m["data-series"]): float(m["data-value"]) for m in d.marks[chart]}
        assert drawn.keys() == cells.keys(), chart
        for k, v in cells.items():
            assert drawn[k] == pytest.approx(v, abs=0.0051), (chart, k)


def test_mark_sizes_are_proportional_to_the_numbers(dom: tuple[_Dom, str]) -> None:
    """Bars are as long, and columns as tall, as their value: one scale per chart."""
    d, html_text = dom
    kinds = {c["id"]: c["kind"] for c in report_data(html_text)["charts"]}
    for chart, marks in d.marks.items():
        size = "height" if kinds[chart] == "columns" else "width"
        scales = {float(m[size]) / float(m["data-value"]) for m in marks}
        assert max(scales) - min(scales) < 0.01 * max(scales), (chart, sorted(scales)[:3])
        top = max(marks, key=lambda m: float(m["data-value"]))
        if kinds[chart] != "columns" and len({m["data-series"] for m in marks}) == 1:
            assert float(top["data-value"]) == d.svg_max[chart]  # the longest bar is the maximum


def test_text_from_the_logs_stays_text_in_the_browser(dom: tuple[_Dom, str]) -> None:
    d, _ = dom
    assert d.tags["em"] == 0 and d.tags["script"] == 2  # no markup from a logged path became elements
    assert any(HOSTILE_PATH[:30] in t for t in d.texts)  # the label is drawn as text (shortened)
