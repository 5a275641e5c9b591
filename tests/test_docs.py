"""The README stays short and every relative link in README.md and docs/ leads somewhere real."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# [text](target) and [text](target "title"); images too. Code spans are removed first.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
CODE = re.compile(r"```.*?```|`[^`\n]*`", re.S)


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"```.*?```", "", page.read_text("utf-8"), flags=re.S)
    heads = re.findall(r"^#{1,6}\s+(.+?)\s*$", text, re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in heads}


def _links(page: Path) -> list[str]:
    return [t for t in LINK.findall(CODE.sub("", page.read_text("utf-8")))
            if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]


def test_readme_is_under_15_kb():
    size = (REPO / "README.md").stat().st_size
    assert size < 15_000, f"README.md is {size} bytes: move detail into a docs/ page"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page: Path):
    broken = []
    for target in _links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target}: no heading with anchor #{anchor}")
    assert not broken, f"{page.relative_to(REPO)}: " + "; ".join(broken)


def test_the_link_checker_sees_a_broken_link(tmp_path: Path):
    page = tmp_path / "x.md"
    page.write_text("# Top\n\n[ok](x.md#top) [gone](missing.md) [bad](x.md#nowhere) `[code](nope.md)`\n")
    assert _links(page) == ["x.md#top", "missing.md", "x.md#nowhere"]
    assert _anchors(page) == {"top"}


def test_benchmark_results_keep_their_history_when_regenerated():
    from benchmarks.__main__ import render

    results = {"x": {"title": "X", "when": "today", "machine": "m", "commit": "c", "rows": [{"a": 1}]}}
    previous = render(results) + "\n## History: before\n\n- 91 s on the old machine\n"
    again = render(results, previous)
    assert again.endswith("## History: before\n\n- 91 s on the old machine\n")
    assert again.count("## X") == 1
    assert "History" not in render(results, render(results))


def test_benchmark_results_md_has_the_history_section():
    assert "\n## History" in (REPO / "benchmarks" / "results.md").read_text("utf-8")
