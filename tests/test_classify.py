"""Classifying user agents: a labelled corpus of documented strings, the precedence pitfalls,
the browser/unknown fallbacks, speed, and a false-positive check on a real 2015 access log."""

from __future__ import annotations

import csv
import dataclasses
import re
from collections import Counter
from pathlib import Path

import pytest

from agent_traffic.annotate.catalog import Agent, Catalog, Provider, load_catalog
from agent_traffic.annotate.classify import (
    COLUMNS,
    HUMAN,
    MAX_UA_CHARS,
    UNKNOWN,
    Classification,
    Classifier,
    looks_like_browser,
    to_arrow_table,
)

CORPUS = Path(__file__).parent / "data" / "user_agents.csv"
SHARED = Path(__file__).resolve().parents[2] / "shared"
APACHE_LOG = SHARED / "reference" / "apache_access_combined.log"


@pytest.fixture(scope="module")
def clf() -> Classifier:
    return Classifier(load_catalog())


def _corpus() -> list[dict[str, str]]:
    with CORPUS.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# -- the labelled corpus ------------------------------------------------------------------------


def test_corpus_is_broad_enough() -> None:
    rows = _corpus()
    assert len(rows) >= 60
    assert all(r["source"].startswith("https://") for r in rows)
    assert sum(r["expected_agent"] == "human" for r in rows) >= 10
    required = {
        "GPTBot", "OAI-SearchBot", "ChatGPT-User", "ClaudeBot", "Claude-User", "Claude-SearchBot",
        "PerplexityBot", "Perplexity-User", "Googlebot", "bingbot", "Applebot", "Amazonbot",
        "Amzn-SearchBot", "Bytespider", "CCBot", "meta-externalagent", "facebookexternalhit",
        "DuckAssistBot", "MistralAI-User", "AhrefsBot", "SemrushBot", "curl", "python-requests",
        "Go-http-client", "HeadlessChrome",
    }
    assert required <= {r["expected_agent"] for r in rows}
    googlebot = [r["user_agent"] for r in rows if r["expected_agent"] == "Googlebot"]
    assert any("Android" in ua for ua in googlebot) and any("Android" not in ua for ua in googlebot)


@pytest.mark.parametrize("row", _corpus(), ids=lambda r: r["user_agent"][:70])
def test_corpus(clf: Classifier, row: dict[str, str]) -> None:
    got = clf.classify(row["user_agent"])
    expected = (row["expected_agent"], row["expected_provider"], row["expected_purpose"])
    assert (got.agent, got.provider, got.purpose) == expected
    if row["expected_agent"] == "human":
        assert got == HUMAN
    else:
        assert got.is_bot and got.is_ai == (row["expected_purpose"] != "none")


# -- the named pitfalls -------------------------------------------------------------------------

GPTBOT = "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.1; +https://openai.com/gptbot)"
CHROME = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/131.0.0.0 Safari/537.36")


@pytest.mark.parametrize(
    ("ua", "agent"),
    [
        # Hyphenated siblings are different agents.
        ("Mozilla/5.0 (compatible; Claude-User/1.0; +Claude-User@anthropic.com)", "Claude-User"),
        ("Mozilla/5.0 (compatible; Claude-SearchBot/1.0)", "Claude-SearchBot"),
        ("Mozilla/5.0 (compatible; OAI-SearchBot/1.0; +https://openai.com/searchbot)",
         "OAI-SearchBot"),
        ("Mozilla/5.0 (compatible; GoogleOther-Video/1.0)", "GoogleOther-Video"),
        ("Googlebot-News", "Googlebot-News"),
        ("SemrushBot-SWA/1.0 (+https://www.semrush.com/bot/)", "SemrushBot-SWA"),
        # Amzn-SearchBot's UA may point at the amazonbot page: still not Amazonbot.
        ("Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; Amzn-SearchBot/0.1; "
         "+https://developer.amazon.com/amazonbot) Chrome/119.0.6045.214 Safari/537.36",
         "Amzn-SearchBot"),
        # Whole tokens only.
        ("Mozilla/5.0 (compatible; NotGPTBot2/1.0)", "unknown"),
        ("MyGPTBot/1.0", "unknown"),
        ("GPTBot_x/1.0", "unknown"),
        # Case and version duplicates land on one agent.
        ("Mozilla/5.0 (compatible; Meta-ExternalAgent/1.1)", "meta-externalagent"),
        ("META-EXTERNALFETCHER/1.1", "meta-externalfetcher"),
        ("gptbot", "GPTBot"),
        # Generic words match only in their documented, versioned form.
        ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
         "Cursor/0.42.3 Chrome/124.0.6367.243 Electron/30.4.0 Safari/537.36", "Cursor"),
        ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
         "Code/1.96.2 Chrome/128.0.6613.186 Electron/32.2.6 Safari/537.36", "Code"),
        ("Mozilla/5.0 (compatible; Cursor; +https://example.com)", "unknown"),
        ("code-review-tool/1.0 (Code)", "unknown"),
        ("Operator", "unknown"),
        ("Mozilla/5.0 (X11; Linux x86_64) Operator/1.0", "Operator"),
        ("Spider/1.2 (+https://spider.example)", "Spider"),
        ("Sogou web spider/4.0(+http://www.sogou.com/docs/help/webmasters.htm#07)", "Sogou"),
        ("Mozilla/5.0 (compatible; Baiduspider/2.0; +http://www.baidu.com/search/spider.html)",
         "Baiduspider"),
        ("my spider/1.0", "unknown"),
        ("OpenAI/Python 1.52.0", "OpenAI"),
        # Bots that quote another bot's name.
        ("TelegramBot (like TwitterBot)", "TelegramBot"),
        ("Feedly/1.0 (+http://www.feedly.com/fetcher.html; like FeedFetcher-Google)", "Feedly"),
        ("Mozilla/5.0 (compatible; Exabot/3.0; +http://www.exabot.com/go/robot)",
         "Exabot (Exalead)"),
        ("LinkedInBot/1.0 (compatible; Mozilla/5.0; Apache-HttpClient +http://www.linkedin.com)",
         "LinkedInBot"),
        # A named bot beats the generic client it runs on.
        ("Mozilla/5.0 (compatible; GPTBot/1.1) python-requests/2.31.0", "GPTBot"),
        ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
         "HeadlessChrome/120.0.0.0 Safari/537.36 (compatible; Claude-User/1.0)", "Claude-User"),
        ("Apache-HttpClient/4.5.13 (Java/17.0.2)", "Apache-HttpClient"),
        ("Java/17.0.2", "Java"),
        # Multi-word tokens.
        ("Mozilla/5.0 (compatible; ChatGPT Agent)", "ChatGPT Agent"),
        ("Brightbot 1.0", "Brightbot"),
        ("Mozilla/5.0 (compatible; Terra Cotta/1.0)", "TerraCotta"),
    ],
)
def test_precedence_pitfalls(clf: Classifier, ua: str, agent: str) -> None:
    assert clf.classify(ua).agent == agent


@pytest.mark.parametrize("token", ["Google-Extended", "Applebot-Extended"])
def test_robots_only_tokens_never_claim_traffic(clf: Classifier, token: str) -> None:
    assert clf.classify(f"Mozilla/5.0 (compatible; {token}/1.0)").agent == "unknown"
    assert clf.classify(token).agent == "unknown"
    assert all(a.name != token for a, _ in clf.matches(f"{token} {GPTBOT}"))


def test_robots_only_never_matches_anything(clf: Classifier) -> None:
    robots_only = [a for a in clf.catalog if a.robots_only]
    assert robots_only
    for agent in robots_only:
        for tok in agent.tokens:
            assert not clf.matches(f"x ({tok}) x"), tok


def test_google_extended_is_not_googlebot(clf: Classifier) -> None:
    ua = ("Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; Googlebot/2.1; "
          "+http://www.google.com/bot.html) Chrome/131.0.6778.204 Safari/537.36")
    assert clf.classify(ua).agent == "Googlebot"
    assert clf.classify(ua).is_ai is False


def test_matches_lists_every_candidate_best_first(clf: Classifier) -> None:
    names = [a.name for a, _ in clf.matches("TelegramBot (like TwitterBot)")]
    assert names == ["TelegramBot", "Twitterbot"]


# -- precedence rules, on a small hand-made catalog ------------------------------------------------


def _agent(name: str, tokens: list[str], **kw: object) -> Agent:
    base = {"provider": "unknown", "category": "Scraper", "purpose": "none", "ai": False}
    return Agent(name=name, tokens=tuple(tokens), **{**base, **kw})  # type: ignore[arg-type]


def _tiny(*agents: Agent) -> Classifier:
    return Classifier(Catalog(agents=agents, providers={"unknown": Provider("unknown", "?")}))


def test_higher_priority_wins_over_longer_token() -> None:
    clf = _tiny(_agent("Long", ["LongerToken"]), _agent("Short", ["Tok"], priority=5))
    assert clf.classify("LongerToken/1 Tok/2").agent == "Short"


def test_longer_token_wins_at_equal_priority() -> None:
    clf = _tiny(_agent("Short", ["Tok"]), _agent("Long", ["LongerToken"]))
    assert clf.classify("Tok/2 LongerToken/1").agent == "Long"


def test_catalog_order_breaks_ties() -> None:
    clf = _tiny(_agent("First", ["AAAA"]), _agent("Second", ["BBBB"]))
    assert clf.classify("BBBB AAAA").agent == "First"
    clf = _tiny(_agent("Second", ["BBBB"]), _agent("First", ["AAAA"]))
    assert clf.classify("BBBB AAAA").agent == "Second"


def test_prefix_tokens_at_the_same_position_are_all_seen() -> None:
    """The trie reports the longest token at a position; shorter ones must not be lost."""
    clf = _tiny(_agent("Foo", ["Foo"], priority=1), _agent("FooBar", ["Foo Bar"]))
    assert clf.classify("x Foo Bar/1").agent == "Foo"
    assert [a.name for a, _ in clf.matches("x Foo Bar/1")] == ["Foo", "FooBar"]


def test_pattern_and_token_at_the_same_position() -> None:
    clf = _tiny(
        _agent("Tok", ["Widget"]),
        _agent("Pat", [], pattern=r"Widget/\d+ \(special\)", priority=3),
    )
    assert clf.classify("Widget/2 (special)").agent == "Pat"
    assert clf.classify("Widget/2 (plain)").agent == "Tok"


def test_pattern_with_capturing_groups() -> None:
    clf = _tiny(_agent("P", [], pattern=r"(?:ab|cd)(e)?/(\d)"), _agent("Q", ["zz"]))
    assert clf.classify("x cde/1 zz").agent == "P"


def test_empty_catalog_classifies_by_shape_only() -> None:
    clf = _tiny()
    assert clf.classify(CHROME) == HUMAN
    assert clf.classify("GPTBot/1.0") == UNKNOWN


# -- fallbacks ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ua",
    [
        "",
        "-",
        "   ",
        "Mozilla/5.0 (compatible; SomeNewBot/1.0; +https://example.com/bot)",
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/131.0.0.0 Safari/537.36 (compatible; SiteCheck)",
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/120 Safari/537.36 +https://crawler.example",
        "Mozilla/5.0",
        "Mozilla/4.0 (compatible;)",
        "SomeTool/1.0",
    ],
)
def test_unknown_bots(clf: Classifier, ua: str) -> None:
    assert clf.classify(ua) == UNKNOWN


def test_none_is_unknown(clf: Classifier) -> None:
    assert clf.classify(None) == UNKNOWN


@pytest.mark.parametrize(
    "ua",
    [
        CHROME,
        "Mozilla/5.0 (compatible; MSIE 10.0; Windows NT 6.2; Trident/6.0)",
        "Mozilla/4.0 (compatible; MSIE 8.0; Windows NT 5.1; Trident/4.0; .NET CLR 2.0.50727)",
        "Opera/9.80 (X11; Linux x86_64) Presto/2.12.388 Version/12.16",
        "Mozilla/5.0 (Linux; Android 9; CUBOT X19) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/120.0.0.0 Mobile Safari/537.36",
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
        "(KHTML, like Gecko) Mobile/15E148 Instagram 330.0.0.40.92",
    ],
)
def test_browsers_are_human(clf: Classifier, ua: str) -> None:
    assert looks_like_browser(ua)
    assert clf.classify(ua) == HUMAN


def test_classification_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        HUMAN.agent = "x"  # type: ignore[misc]


def test_huge_user_agents_are_bounded(clf: Classifier) -> None:
    """Only the first MAX_UA_CHARS characters are matched: a megabyte user agent costs no more."""
    assert clf.classify("GPTBot/1.1 " + "a" * 1_000_000).agent == "GPTBot"
    assert clf.classify("a" * (MAX_UA_CHARS - 4) + " GPTBot/1.1").agent != "GPTBot"
    assert clf.classify("a" * (MAX_UA_CHARS - 12) + " GPTBot/1.1").agent == "GPTBot"


# -- batch API, cache and speed -----------------------------------------------------------------


def test_classify_many_classifies_each_distinct_string_once() -> None:
    clf = Classifier(load_catalog())
    uas = [GPTBOT, CHROME, GPTBOT, "", CHROME, "curl/8.5.0"]
    out = clf.classify_many(uas)
    assert list(out) == [GPTBOT, CHROME, "", "curl/8.5.0"]
    assert out[GPTBOT].agent == "GPTBot" and out[CHROME] == HUMAN and out[""] == UNKNOWN
    assert clf.cache_info().misses == 4
    clf.classify_many(uas)
    assert clf.cache_info().misses == 4


def _distinct_uas(n: int) -> list[str]:
    rows = [r["user_agent"] for r in _corpus()]
    return [f"{rows[i % len(rows)]} build/{i}" for i in range(n)]


def test_5000_distinct_user_agents_each_classified_once() -> None:
    """Speed is `make bench`'s (bench_classify); here, 5,000 distinct strings cost 5,000 lookups."""
    clf = Classifier(load_catalog())
    uas = _distinct_uas(5000)
    out = clf.classify_many(uas + uas)
    assert len(out) == 5000 and clf.cache_info().misses == 5000
    assert out[uas[0]] == clf.classify(uas[0])


def test_to_arrow_table() -> None:
    pa = pytest.importorskip("pyarrow")
    clf = Classifier(load_catalog())
    table = to_arrow_table(clf.classify_many([GPTBOT, CHROME, ""]))
    assert tuple(table.column_names) == COLUMNS
    assert table.num_rows == 3
    assert table.schema.field("is_ai").type == pa.bool_()
    assert table.schema.field("scrunch_type").type == pa.string()
    rows = {r["user_agent"]: r for r in table.to_pylist()}
    assert rows[GPTBOT]["agent"] == "GPTBot" and rows[GPTBOT]["scrunch_type"] == "training"
    assert rows[GPTBOT]["cloudflare_category"] == "AI Crawler" and rows[GPTBOT]["is_ai"] is True
    assert rows[CHROME]["category"] == "Browser" and rows[CHROME]["is_bot"] is False
    assert rows[""]["scrunch_type"] is None and rows[""]["category"] == "Unknown Bot"


def test_classification_fields_match_the_columns() -> None:
    fields = [f.name for f in dataclasses.fields(Classification)]
    assert ["user_agent", *fields] == list(COLUMNS)


# -- false positives on a real log (optional reference data) --------------------------------------

_COMBINED_UA = re.compile(r'"[^"]*" \d{3} \S+ "(?:[^"\\]|\\.)*" "((?:[^"\\]|\\.)*)"\s*$')


def test_real_2015_apache_log_has_no_ai_agents(clf: Classifier) -> None:
    """10,000 real lines from 2015: browsers, search engines, feed readers, odd strings, and no
    AI agent of today, so every AI verdict would be a false positive."""
    if not APACHE_LOG.exists():
        pytest.skip(f"reference data not present: {APACHE_LOG}")
    uas: Counter[str] = Counter()
    with APACHE_LOG.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            m = _COMBINED_UA.search(line)
            if m:
                uas[m.group(1)] += 1
    assert sum(uas.values()) > 9_900
    found = clf.classify_many(uas)
    ai = {ua: c.agent for ua, c in found.items() if c.is_ai}
    assert not ai, ai
    by_agent = Counter()
    for ua, n in uas.items():
        by_agent[found[ua].agent] += n
    assert by_agent["human"] > 5_000
    assert by_agent["Googlebot"] > 400 and by_agent["bingbot"] > 100
    assert by_agent["Baiduspider"] > 50 and by_agent["Exabot (Exalead)"] > 30
