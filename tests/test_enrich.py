"""Resource type (HitKeep's rules) and AI referrals, alone and through the pipeline's DuckDB path."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import duckdb
import pyarrow as pa
import pytest

from agent_traffic.annotate.annotator import ANNOTATION_COLUMNS, Annotator
from agent_traffic.annotate.catalog import load_catalog
from agent_traffic.annotate.enrich import (
    EXTENSION_RE,
    HOST_RE,
    UTM_SOURCE_RE,
    ReferrerTable,
    extension,
    referrer_host,
    resource_type,
    utm_source,
)
from agent_traffic.schema import CLASS_FIELDS, EVENT_SCHEMA, PARSED_FIELDS, conform

FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0"
GPTBOT = "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2; +https://openai.com/gptbot)"


def events_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Parsed events (the parser's schema) with defaults for every field a row does not set."""
    base = {"ts": datetime(2026, 11, 21, 12, tzinfo=UTC), "site": "example.com", "host": "example.com",
            "method": "GET", "path": "/", "query": None, "url": "https://example.com/", "status": 200,
            "bytes": 100, "duration_ms": None, "client_ip": None, "user_agent": FIREFOX, "referer": None,
            "content_type": None, "source_object": "file:///x.log"}
    full = [{**base, **r, "event_id": f"e{i}", "line_number": i + 1} for i, r in enumerate(rows)]
    schema = pa.schema(PARSED_FIELDS)
    return pa.Table.from_pylist([{f.name: r[f.name] for f in schema} for r in full], schema=schema)


# -- resource type ------------------------------------------------------------------------------


RESOURCE_CASES = [
    ("text/html; charset=utf-8", "/x.png", "html"),  # the content type wins over the path
    ("TEXT/HTML", "/", "html"),
    ("application/xhtml+xml", "/", "html"),
    ("image/webp", "/", "image"),
    ("image/svg+xml", "/logo", "image"),
    ("application/pdf", "/paper", "document"),
    ("text/plain; charset=utf-8", "/llms.txt", "document"),
    ("text/markdown", "/README", "document"),
    ("application/vnd.openxmlformats-officedocument.wordprocessingml.document", "/a", "document"),
    ("application/msword", "/a.doc", "document"),
    ("application/vnd.ms-excel", "/a.xls", "document"),
    ("application/json", "/api", "other"),
    ("text/css", "/s.css", "other"),
    ("application/javascript", "/app.js", "other"),
    ("application/xml", "/sitemap.xml", "other"),
    # no content type: the extension decides
    (None, "/", "html"),
    (None, "/pricing", "html"),
    ("", "/docs/index.HTML", "html"),
    (None, "/static/logo.PNG", "image"),
    (None, "/paper.pdf", "document"),
    (None, "/llms.txt", "document"),
    (None, "/robots.txt", "document"),
    (None, "/static/app.js", "other"),
    (None, "/sitemap.xml", "other"),
    (None, "/v1.2/", "html"),
]


@pytest.mark.parametrize(("content_type", "path", "expected"), RESOURCE_CASES)
def test_resource_type(content_type: str | None, path: str, expected: str) -> None:
    assert resource_type(content_type, path) == expected


def test_python_and_duckdb_extract_the_same_keys() -> None:
    """The regexes run in DuckDB in the pipeline and in Python for one-off calls: same answers."""
    paths = ["/", "/a.PDF", "/a.tar.gz", "/.htaccess", "/x/y.z/", "/v1.2", "/file.verylongextension", "/é.png"]
    referers = ["https://chatgpt.com/", "HTTPS://Chat.OpenAI.com:443/c/1", "https://user@claude.ai/x",
                "android-app://com.openai.chatgpt/", "-", "", "chatgpt.com", "https://perplexity.ai?q=1",
                "https://gemini.google.com#x"]
    queries = ["utm_source=chatgpt.com", "a=1&utm_source=ChatGPT.com&b=2", "xutm_source=chatgpt.com", "", "a=1"]
    con = duckdb.connect()
    for values, regex, py in [(paths, EXTENSION_RE, extension), (referers, HOST_RE, referrer_host),
                              (queries, UTM_SOURCE_RE, utm_source)]:
        sql = [r[0] for r in con.execute(
            f"SELECT lower(regexp_extract(v, '{regex}', 1)) FROM unnest(?::VARCHAR[]) t(v)", [values]).fetchall()]
        assert sql == [py(v) for v in values], regex


# -- referrals ----------------------------------------------------------------------------------


def test_referrer_table_matches_hosts_and_subdomains_only() -> None:
    table = ReferrerTable(load_catalog().referrers)
    assert table.referred_by("https://chatgpt.com/") == "openai"
    assert table.referred_by("https://www.perplexity.ai/search/abc") == "perplexity"
    assert table.referred_by("https://claude.ai/chat/1") == "anthropic"
    assert table.referred_by("https://gemini.google.com/app") == "google"
    assert table.referred_by("https://copilot.microsoft.com/") == "microsoft"
    assert table.referred_by("android-app://com.openai.chatgpt/") == "openai"
    assert table.referred_by(None, "utm_source=chatgpt.com") == "openai"
    for not_ai in ["https://www.google.com/", "https://www.bing.com/search?q=x", "https://notchatgpt.com/",
                   "https://chatgpt.com.evil.example/", "https://example.com/?ref=chatgpt.com", "-", None]:
        assert table.referred_by(not_ai) is None, not_ai


def test_catalog_referrers_cover_the_major_assistants() -> None:
    owners = {h: p for p, hosts in load_catalog().referrers.items() for h in hosts}
    for host, provider in [("chatgpt.com", "openai"), ("perplexity.ai", "perplexity"), ("claude.ai", "anthropic"),
                           ("gemini.google.com", "google"), ("copilot.microsoft.com", "microsoft")]:
        assert owners[host] == provider
    assert "google.com" not in owners and "bing.com" not in owners  # search is not an AI referral


# -- through the pipeline's path ---------------------------------------------------------------


@pytest.fixture(scope="module")
def annotator() -> Annotator:
    return Annotator.build(snapshots={})


def test_annotate_adds_the_staged_columns_and_keeps_every_row(annotator: Annotator) -> None:
    rows = [
        {"path": "/pricing", "referer": "https://chatgpt.com/", "content_type": "text/html"},
        {"path": "/pricing", "query": "utm_source=chatgpt.com"},
        {"path": "/a.pdf", "referer": "https://www.perplexity.ai/search?q=1"},
        {"path": "/logo.png", "referer": "https://www.google.com/"},
        {"path": "/pricing", "referer": "https://chatgpt.com/", "user_agent": GPTBOT, "client_ip": "203.0.113.9"},
        {"path": "/x", "referer": "android-app://com.openai.chatgpt/", "content_type": "application/json"},
        {"path": "/x", "referer": "not a url at all"},
    ]
    out = annotator.annotate(events_table(rows))
    assert tuple(out.column_names[-len(ANNOTATION_COLUMNS):]) == ANNOTATION_COLUMNS
    assert {f.name for f in CLASS_FIELDS} == set(ANNOTATION_COLUMNS)
    conform(out, EVENT_SCHEMA)  # the stage's contract accepts it
    got = out.select(["referred_by", "resource_type", "agent", "verification"]).to_pylist()
    assert [g["referred_by"] for g in got] == ["openai", "openai", "perplexity", None, None, "openai", None]
    assert [g["resource_type"] for g in got] == ["html", "html", "document", "image", "html", "other", "html"]
    # a bot with an AI referrer is not a referred human; with no range snapshots, GPTBot is unverifiable
    assert got[4]["agent"] == "GPTBot" and got[4]["verification"] == "unverifiable"
    assert all(g["verification"] is None for i, g in enumerate(got) if i != 4)


def test_annotate_with_no_client_ips_or_referers(annotator: Annotator) -> None:
    out = annotator.annotate(events_table([{"user_agent": GPTBOT}, {"user_agent": ""}]))
    assert out.column("verification").to_pylist() == ["unverifiable", None]
    assert out.column("referred_by").to_pylist() == [None, None]


def test_annotate_returns_line_order_whatever_the_input_order(annotator: Annotator) -> None:
    rows = [{"path": f"/p{i}.png" if i % 2 else f"/p{i}", "user_agent": GPTBOT if i % 3 else FIREFOX}
            for i in range(50)]
    table = events_table(rows)
    shuffled = table.take(list(reversed(range(table.num_rows))))
    out = annotator.annotate(shuffled)
    assert out["line_number"].to_pylist() == list(range(1, 51))
    assert out["path"].to_pylist() == [r["path"] for r in rows]
    assert out["resource_type"].to_pylist() == ["image" if i % 2 else "html" for i in range(50)]
    assert out["agent"].to_pylist() == ["GPTBot" if i % 3 else "human" for i in range(50)]
    with pytest.raises(ValueError, match="line numbers repeat"):
        annotator.annotate(pa.concat_tables([table, table]))


def test_annotate_resource_types_match_the_one_request_function(annotator: Annotator) -> None:
    """The block path (extensions cut from the distinct paths; null and "" content types both
    mean none) answers every case as `resource_type` does for one request."""
    cases = [(ct, path) for ct, path, _ in RESOURCE_CASES] * 3 + [(None, "/x.pdf"), ("", "/x.pdf"), (None, "/a")]
    out = annotator.annotate(events_table([{"content_type": ct, "path": p} for ct, p in cases]))
    assert out["resource_type"].to_pylist() == [resource_type(ct, p) for ct, p in cases]


@pytest.mark.parametrize("space", [7, 5_000_000])  # a table of the space; a sort
def test_unique_by_table_is_numpy_unique(space: int) -> None:
    import numpy as np

    from agent_traffic.annotate.annotator import _unique

    keys = np.random.default_rng(1).integers(0, 7, 1_000) * (space // 7)
    want_values, want_where = np.unique(keys, return_inverse=True)
    values, where = _unique(keys, space)
    assert values.tolist() == want_values.tolist() and where.tolist() == want_where.tolist()
