"""Browsers, apps and unknown bots: the client shapes of data/clients.yaml, measured on public
detectors' fixtures (tests/data/ua_corpus/, see its README) and on the shapes the issue named."""

from __future__ import annotations

import pyarrow as pa
import pytest

from agent_traffic.annotate.annotator import Annotator
from agent_traffic.annotate.catalog import CatalogError, load_catalog
from agent_traffic.annotate.classify import APP_CLIENT, HUMAN, UNKNOWN, Classifier
from agent_traffic.annotate.clients import ClientKind, load_client_shapes, parse_client_shapes
from agent_traffic.delivery.plan import select_mask
from tests import ua_corpus
from tests.test_classify_cli import _classify
from tests.test_enrich import events_table

MAX_FP_RATE = 0.002  # browsers called bots
MIN_RECALL = 0.97  # bots found


@pytest.fixture(scope="module")
def clf() -> Classifier:
    return Classifier(load_catalog())


# -- the evaluation on the kept corpus ----------------------------------------------------------


@pytest.mark.parametrize("split", ua_corpus.SPLITS)
def test_bots_found_and_browsers_spared_on_public_fixtures(clf: Classifier, split: str) -> None:
    """crawlerdetect 0.4.2's crawler and device fixtures: the tune half and the held-out half."""
    score = ua_corpus.score(lambda ua: clf.classify(ua).is_bot, split)
    assert score.bots > 1_500 and score.browsers > 3_500, score
    assert score.fp_rate <= MAX_FP_RATE, str(score)
    assert score.recall >= MIN_RECALL, str(score)


def test_corpus_split_is_stable_and_balanced() -> None:
    bots = ua_corpus.load(ua_corpus.BOTS, drop_non_ua=False)
    browsers = ua_corpus.load(ua_corpus.BROWSERS, drop_non_ua=True)
    for parts in (bots, browsers):
        tune, held = len(parts["tune"]), len(parts["held_out"])
        assert abs(tune - held) < 0.1 * (tune + held)
        assert not set(parts["tune"]) & set(parts["held_out"])
    assert ua_corpus.split_of("Dalvik/2.1.0") == ua_corpus.split_of("Dalvik/2.1.0")
    # Non-UA lines are dropped from the browser side only, and only these kinds.
    assert all(not ua_corpus.is_user_agent(x) for x in browsers["dropped"])
    for junk in ("zr", "5775", 'Z"><script src=https://x.example/a></script>'):
        assert not ua_corpus.is_user_agent(junk)
    assert ua_corpus.is_user_agent("Foo/1.0") and ua_corpus.is_user_agent("Links (0.98; Win32)")


# -- the shapes the issue named -----------------------------------------------------------------


@pytest.mark.parametrize(
    "ua",
    [
        # App HTTP stacks.
        "Dalvik/2.1.0 (Linux; U; Android 13; Pixel 7 Build/TQ3A.230901.001)",
        "Callpod Keeper for Android 1.0 (11.1.6/300) Dalvik/2.1.0 (Linux; U; Android 8.0.0; Nexus 6P)",
        "Twitter/7.12.1 CFNetwork/887 Darwin/17.0.0",
        "com.apple.WebKit.Networking/10600.2.5 CFNetwork/720.1.1 Darwin/14.0.0 (x86_64)",
        "Yammer/6.6.23.1427 (iPhone6,2; iPhone OS 8.3; en_GB; en; Scale/2.00)",
        "GadgetViewer/4.102.0 (com.gidjit.SmartLauncher; build:4.102.36; iOS 11.3.0) Alamofire/4.7.0",
    ],
)
def test_app_http_stacks_are_apps(clf: Classifier, ua: str) -> None:
    assert clf.classify(ua) == APP_CLIENT
    assert not APP_CLIENT.is_bot and not APP_CLIENT.is_ai and APP_CLIENT.category == "App"


def test_catalog_agents_of_category_app_are_not_bots(clf: Classifier) -> None:
    got = clf.classify("okhttp/4.9.0")
    assert (got.agent, got.category, got.is_bot, got.is_ai) == ("okhttp", "App", False, False)


@pytest.mark.parametrize(
    "ua",
    [
        # Yandex's in-app browser is not a Yandex robot.
        "Mozilla/5.0 (Linux; Android 7.0; SM-G930F Build/NRD90M) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/58.0.3029.83 YaBrowser/17.6.0.358.00 Mobile Safari/537.36 YandexSearch/7.10",
        "Mozilla/5.0 (iPhone; CPU iPhone OS 16_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/16.0 YandexSearchBrowser/2210.3 Mobile/15E148 Safari/604.1",
        # Facebook's in-app browser.
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Mobile/15E148 [FBAN/FBIOS;FBAV/440.0.0.33.117;FBBV/539035098;FBDV/iPhone14,5;FBMD/iPhone]",
        # UC Browser and Opera Mini, which do not start with Mozilla.
        "UCWEB/2.0 (MIDP-2.0; U; Adr 7.0; en-US; SM-J701F) U2/1.0.0 UCBrowser/11.0.0.1016 U2/1.0.0 Mobile",
        "Opera/9.80 (J2ME/MIDP; Opera Mini/6.5.27510/34.1624; U; en) Presto/2.8.119 Version/11.10",
        # Mozilla/5.0 that lost its parentheses, or spaces.
        "Mozilla/5.0 Chrome/60.0.3112.101 Safari/537.36",
        "Mozilla/5.0+(Windows+NT+5.1;+rv:25.0)+Gecko/20100101+Firefox/25.0",
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_13_3)",
        # Feature phones and old browsers.
        "BlackBerry8520/5.0.0.681 Profile/MIDP-2.1 Configuration/CLDC-1.1 VendorID/123",
        "Nokia7610/2.0 (5.0509.0) SymbianOS/7.0s Series60/2.1 Profile/MIDP-2.0 Configuration/CLDC-1.0",
        "Mozilla/4.76 [en] (X11; U; Linux 2.4.2-2 i686)",
        "Mozilla/4.0 (compatible; MSIE 6.0; America Online Browser 1.1; Windows NT 5.1; SV1)",
    ],
)
def test_browser_shapes_are_human(clf: Classifier, ua: str) -> None:
    assert clf.classify(ua) == HUMAN


@pytest.mark.parametrize(
    ("ua", "agent"),
    [
        # Yandex's robots still match their catalog entry; only the in-app browser is spared.
        ("Mozilla/5.0 (compatible; YandexMetrika/2.0; +http://yandex.com/bots)", "Yandex (other)"),
        ("Mozilla/5.0 (Windows NT 6.1) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/48.0 "
         "Safari/537.36 Yandex.Translate", "Yandex (other)"),
        # A browser engine driven by a monitoring service is that service.
        ("Mozilla/5.0 (Windows NT 6.1; WOW64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/53.0 "
         "Safari/537.36 PTST/314", "WebPageTest"),
        ("Mozilla/5.0 (X11; Linux x86_64; rv:52.0) Gecko/20100101 Firefox/52.0 Ghost Inspector",
         "Synthetic monitors"),
        ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/534.34 (KHTML, like Gecko) wkhtmltopdf "
         "Safari/534.34", "Page renderers"),
        # An app stack with a bot marker is still a bot.
        ("Email%20Extractor/29 CFNetwork/897.15 Darwin/17.5.0 (x86_64)", "unknown"),
        ("MyCrawler/1.0 Dalvik/2.1.0 (Linux; U; Android 9; +https://crawler.example)", "unknown"),
        ("Mozilla/4.0 (compatible; MSIE 7.0; Windows NT 5.0) LinkCheck by Siteimprove.com",
         "Synthetic monitors"),
        ("Mozilla/5.0 (Windows NT 6.1; WOW64) adbeat.com/policy AppleWebKit/537.36 (KHTML, like Gecko)",
         "unknown"),
    ],
)
def test_bots_inside_browser_and_app_shapes(clf: Classifier, ua: str, agent: str) -> None:
    got = clf.classify(ua)
    assert got.agent == agent and got.is_bot


def test_shapes_that_stay_unknown_bots(clf: Classifier) -> None:
    for ua in ("Mozilla/5.0", "zr", "SomeTool/1.0", "Mozilla/4.0 (compatible;)"):
        assert clf.classify(ua) == UNKNOWN, ua


# -- what each destination's `select` does with the app class -----------------------------------


def test_select_takes_apps_only_under_all(clf: Classifier) -> None:
    rows = [clf.classify(ua) for ua in ("okhttp/4.9.0", "GPTBot/1.1", "curl/8.5.0",
                                          "Mozilla/5.0 Chrome/60.0.3112.101 Safari/537.36")]
    assert [r.category for r in rows] == ["App", "AI Data Scraper", rows[2].category, "Browser"]
    table = pa.table({"is_ai": [r.is_ai for r in rows], "is_bot": [r.is_bot for r in rows],
                      "referred_by": [""] * 4})
    assert select_mask(table, "ai").to_pylist() == [False, True, False, False]
    assert select_mask(table, "automated").to_pylist() == [False, True, True, False]
    assert select_mask(table, "all") is None  # every row


# -- the rules file -----------------------------------------------------------------------------


def test_rules_file_names_each_section_and_rule() -> None:
    shapes = load_client_shapes()
    assert shapes.rule("Twitter/7.12.1 CFNetwork/887 Darwin/17.0.0") == (ClientKind.APP, "Apple app (CFNetwork)")
    assert shapes.rule("zr") == (ClientKind.BOT, None)
    assert shapes.rule("UCWEB/2.0 (MIDP-2.0; U; Adr 7.0)")[0] is ClientKind.BROWSER


def test_bad_rules_file_says_where() -> None:
    doc = {"version": 1,
           "bot_hints": {"lowercase": True, "rules": [{"name": "ok", "pattern": "bot\\S"},
                                                      {"name": "shouty", "pattern": "Bot"}]},
           "apps": {"rules": [{"name": "broken", "pattern": "Dalvik/(\\d"}]},
           "browsers": {"rules": []}}
    with pytest.raises(CatalogError) as err:
        parse_client_shapes(doc, "mine.yaml")
    text = str(err.value)
    assert "mine.yaml: apps.rules[0] (broken).pattern: not a valid regex" in text
    assert "mine.yaml: browsers: expected `rules:`, a non-empty list" in text
    assert "mine.yaml: bot_hints.rules[1] (shouty).pattern: the section is matched lower-cased" in text
    assert "rules[0] (ok)" not in text


def test_cli_reports_apps_with_no_verdict() -> None:
    """The path users run: `agent-traffic classify`, a user agent and an IP per line."""
    lines = ["Dalvik/2.1.0 (Linux; U; Android 13; Pixel 7 Build/TQ3A.230901.001)\t203.0.113.9",
             "okhttp/4.9.0\t203.0.113.9"]
    out = _classify("\n".join(lines).encode() + b"\n")
    assert [(r["agent"], r["category"], r["is_bot"], r["verification"]) for r in out] == [
        ("app", "App", False, None), ("okhttp", "App", False, "unverifiable")]


def test_pipeline_gives_apps_no_verdict_and_keeps_their_referrals() -> None:
    """The stage's annotate step: an app claims no operator, so it gets no IP verdict; like a
    browser's, its visit from an AI assistant is a referral."""
    annotator = Annotator.build(snapshots={})
    dalvik = "Dalvik/2.1.0 (Linux; U; Android 13; Pixel 7 Build/TQ3A.230901.001)"
    out = annotator.annotate(events_table([
        {"user_agent": dalvik, "client_ip": "203.0.113.9", "referer": "https://chatgpt.com/"},
        {"user_agent": "curl/8.5.0", "client_ip": "203.0.113.9", "referer": "https://chatgpt.com/"}]))
    got = out.select(["agent", "category", "is_bot", "verification", "referred_by"]).to_pylist()
    assert got[0] == {"agent": "app", "category": "App", "is_bot": False, "verification": None,
                      "referred_by": "openai"}
    assert got[1]["is_bot"] and got[1]["verification"] == "unverifiable" and got[1]["referred_by"] is None
