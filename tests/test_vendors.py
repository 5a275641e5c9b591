"""Field mapping per vendor, checked against the vendors' own documented examples.

Each example payload below is copied from the vendor's page (the seeds in ../shared/seeds); the
staged row beside it is the request the example describes. The mapping must reproduce the
vendor's example exactly, and the last tests check that the copies still match the pages.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pytest

from agent_traffic.config import Destination, SecretRef, Site
from agent_traffic.delivery.plan import build_chunks, select_mask
from agent_traffic.delivery.vendors import vendor
from agent_traffic.delivery.vendors.hitkeep import HITKEEP_AI_TOKENS, accepts
from agent_traffic.devtools.sandbox import HITKEEP_AI_TOKENS as SANDBOX_HITKEEP_TOKENS
from agent_traffic.errors import ConfigError

SEEDS = Path(__file__).resolve().parents[2] / "shared" / "seeds"
SITE = Site(name="example.com")
HK_SITE = "3f1c2a9e-4b6d-4e8f-9a0b-1c2d3e4f5a6b"
GPTBOT_DOC = "Mozilla/5.0 (compatible; GPTBot/1.0; +https://openai.com/gptbot)"


def dest(vendor_name: str, **kw: Any) -> Destination:
    base: dict[str, Any] = {"name": f"{vendor_name}-example", "vendor": vendor_name, "secret": SecretRef(env="K")}
    if vendor_name == "scrunch":
        base["site_id"] = "01JDEM0SANDB0X0000000000AA"
    if vendor_name == "hitkeep":
        base |= {"site_id": HK_SITE, "base_url": "https://hitkeep.example.com"}
    return Destination(**{**base, **kw})


def row(**kw: Any) -> dict[str, Any]:
    """A staged event (the columns the vendors read), GET 200 by default."""
    path = kw.pop("path", "/")
    query = kw.pop("query", None)
    host = kw.pop("host", "example.com")
    base = {
        "ts": datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC), "site": "example.com", "host": host,
        "method": "GET", "path": path, "query": query,
        "url": f"https://{host}{path}" + (f"?{query}" if query else ""),
        "status": 200, "bytes": None, "duration_ms": None, "client_ip": None, "user_agent": GPTBOT_DOC,
        "referer": None, "content_type": None, "source_object": "s3://logs/a.gz", "line_number": 1,
        "agent": "GPTBot", "is_ai": True, "is_bot": True,
    }
    out = {**base, **kw}
    out["ts_us"] = (out["ts"] - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    return out


def body_of(rows: list[dict[str, Any]], d: Destination) -> bytes:
    table = pa.Table.from_pylist([{**r, "line_number": i + 1} for i, r in enumerate(rows)])
    (chunk,) = list(build_chunks(table, SITE, d, "obj1", Counter()))
    return chunk.body


# --------------------------------------------------------------------------- the documented examples

SCRUNCH_SINGLE = {
    "domain": "example.com", "user_agent": GPTBOT_DOC, "url": "https://example.com/blog/post",
    "path": "/blog/post", "method": "GET", "status_code": 200, "timestamp": 1700000000,
    "response_time": 120, "ip": "203.0.113.1",
}
SCRUNCH_BATCH = (  # seed 001's NDJSON example, byte for byte
    '{"domain":"example.com","user_agent":"Mozilla/5.0 (compatible; GPTBot/1.0)","url":"https://example.com/page-1",'
    '"path":"/page-1","method":"GET","status_code":200,"timestamp":1700000000}\n'
    '{"domain":"example.com","user_agent":"Mozilla/5.0 (compatible; ClaudeBot/1.0)","url":"https://example.com/page-2",'
    '"path":"/page-2","method":"GET","status_code":200,"timestamp":1700000060,"response_time":95,"ip":"198.51.100.42"}'
)
HITKEEP_EXAMPLES = [
    {"path": "/guides/analytics/ai-visibility/?utm_source=docs", "hostname": "www.example.com", "status_code": 200,
     "content_type": "text/html; charset=utf-8", "response_ms": 143, "bytes_served": 48231, "user_agent": GPTBOT_DOC},
    {"path": "/docs/", "hostname": "www.example.com", "status_code": 200, "content_type": "text/html",
     "response_ms": 120, "bytes_served": 18422, "user_agent": GPTBOT_DOC},
]
KNOWN_AGENTS_BATCH = [
    {"request_path": "/pages/1234", "request_method": "GET",
     "request_headers": {"user-agent": "Mozilla/5.0...", "referer": "https://www.google.com",
                         "x-forwarded-for": "203.0.113.42"},
     "response_status_code": 200, "response_duration_in_milliseconds": 45},
    {"request_path": "/about?foo=bar", "request_method": "GET",
     "request_headers": {"user-agent": "Mozilla/5.0...", "x-forwarded-for": "198.51.100.73"},
     "response_status_code": 200, "response_duration_in_milliseconds": 32},
]


def test_scrunch_single_event_is_the_documented_one() -> None:
    r = row(path="/blog/post", duration_ms=120.0, client_ip="203.0.113.1",
            ts=datetime.fromtimestamp(1700000000, UTC))
    body = body_of([r], dest("scrunch"))
    assert orjson.loads(body) == SCRUNCH_SINGLE
    assert list(orjson.loads(body)) == list(SCRUNCH_SINGLE)  # the documented field order too


def test_scrunch_batch_is_the_documented_ndjson_byte_for_byte() -> None:
    rows = [
        row(path="/page-1", user_agent="Mozilla/5.0 (compatible; GPTBot/1.0)", ts=datetime.fromtimestamp(1700000000, UTC)),
        row(path="/page-2", user_agent="Mozilla/5.0 (compatible; ClaudeBot/1.0)", agent="ClaudeBot",
            ts=datetime.fromtimestamp(1700000060, UTC), duration_ms=95.0, client_ip="198.51.100.42"),
    ]
    assert body_of(rows, dest("scrunch")) == SCRUNCH_BATCH.encode() + b"\n"


@pytest.mark.parametrize("example", HITKEEP_EXAMPLES)
def test_hitkeep_event_is_the_documented_one(example: dict[str, Any]) -> None:
    path, _, query = example["path"].partition("?")
    r = row(path=path, query=query or None, host="www.example.com", content_type=example["content_type"],
            duration_ms=float(example["response_ms"]), bytes=example["bytes_served"], client_ip="203.0.113.9")
    body = body_of([r], dest("hitkeep", ip_policy="send"))  # HitKeep never gets an IP, whatever the setting
    assert body == orjson.dumps(example)  # one object, the documented field order, no IP


def test_hitkeep_omits_what_it_would_not_store() -> None:
    """response_ms and bytes_served are stored only when > 0; content_type only when known."""
    v, d = vendor("hitkeep"), dest("hitkeep")
    ev = v.event(row(bytes=0, duration_ms=0.2, client_ip="203.0.113.9", referer="https://x/"), SITE, d)
    assert ev == {"path": "/", "hostname": "example.com", "status_code": 200, "user_agent": GPTBOT_DOC}


def test_known_agents_batch_is_the_documented_array() -> None:
    rows = [
        row(path="/pages/1234", user_agent="Mozilla/5.0...", referer="https://www.google.com",
            client_ip="203.0.113.42", duration_ms=45.0),
        row(path="/about", query="foo=bar", user_agent="Mozilla/5.0...", client_ip="198.51.100.73", duration_ms=32.0),
    ]
    body = body_of(rows, dest("knownagents"))
    assert body == orjson.dumps(KNOWN_AGENTS_BATCH)  # an array, even the field order of the example


def test_known_agents_sends_an_array_even_for_one_visit_and_sdk_fields_only_on_request() -> None:
    r = row(content_type="text/html", duration_ms=None)
    plain = orjson.loads(body_of([r], dest("knownagents")))
    assert isinstance(plain, list) and set(plain[0]) == {"request_path", "request_method", "request_headers",
                                                         "response_status_code"}
    sdk = orjson.loads(body_of([r], dest("knownagents", send_sdk_fields=True)))[0]
    assert sdk["created"] == "2023-11-14T22:13:20.000Z"
    assert sdk["response_headers"] == {"content-type": "text/html"}


@pytest.mark.parametrize(
    ("vendor_name", "policy", "expected"),
    [("scrunch", None, "203.0.113.77"), ("scrunch", "truncate", "203.0.113.0"), ("scrunch", "omit", None),
     ("knownagents", None, "2001:db8:85a3:8d3::7"), ("knownagents", "truncate", "2001:db8:85a3::"),
     ("knownagents", "omit", None)],
)
def test_ip_policy_per_destination(vendor_name: str, policy: str | None, expected: str | None) -> None:
    ip = "203.0.113.77" if vendor_name == "scrunch" else "2001:db8:85a3:8d3::7"
    d = dest(vendor_name, **({"ip_policy": policy} if policy else {}))  # truncate: /24 IPv4, /48 IPv6
    ev = vendor(vendor_name).event(row(client_ip=ip), SITE, d)
    got = ev.get("ip") if vendor_name == "scrunch" else ev["request_headers"].get("x-forwarded-for")
    assert got == expected


def test_ip_policy_defaults_per_vendor() -> None:
    assert dest("scrunch").ip_policy == "send"
    assert dest("knownagents").ip_policy == "send"
    assert dest("hitkeep").ip_policy == "omit"


# --------------------------------------------------------------------------- HitKeep's classifier


def test_hitkeep_tokens_match_the_receiver_model_of_hitkeep() -> None:
    assert HITKEEP_AI_TOKENS == SANDBOX_HITKEEP_TOKENS


@pytest.mark.parametrize(
    ("ua", "ok"),
    [(GPTBOT_DOC, True), ("Mozilla/5.0 ... ChatGPT-User/1.0; +https://openai.com/bot", True),
     ("meta-externalagent/1.1", True), ("CCBot/2.0", True),
     ("Mozilla/5.0 ... OAI-SearchBot/1.0", False), ("Claude-User/1.0", False), ("Perplexity-User/1.0", False),
     ("MistralAI-User/1.0", False), ("DuckAssistBot/1.1", False), ("Mozilla/5.0 Applebot/0.1", False), ("", False)],
)
def test_hitkeep_eligibility_is_its_own_lowercase_substring_rule(ua: str, ok: bool) -> None:
    assert accepts(ua) is ok


def test_hitkeep_ineligible_rows_say_which_agent() -> None:
    table = pa.Table.from_pylist([
        row(user_agent=GPTBOT_DOC), row(user_agent="OAI-SearchBot/1.0", agent="OAI-SearchBot"),
        row(user_agent="OAI-SearchBot/1.0", agent="OAI-SearchBot"), row(user_agent="Claude-User/1.0", agent="Claude-User"),
    ])
    reasons = vendor("hitkeep").ineligible(table, dest("hitkeep")).to_pylist()
    assert reasons == [None, "not eligible for HitKeep (OAI-SearchBot)", "not eligible for HitKeep (OAI-SearchBot)",
                       "not eligible for HitKeep (Claude-User)"]
    custom = vendor("hitkeep").ineligible(table, dest("hitkeep", eligible_user_agents=["OAI-SearchBot"])).to_pylist()
    assert custom == [f"not eligible for HitKeep ({a})" for a in ("GPTBot",)] + [None, None] + [
        "not eligible for HitKeep (Claude-User)"]
    assert vendor("scrunch").ineligible(table, dest("scrunch")) is None


def test_hitkeep_chunks_are_one_object_under_64_kib() -> None:
    rows = [row(path=f"/p/{i}") for i in range(5)] + [row(path="/" + "x" * 70_000)]
    table = pa.Table.from_pylist([{**r, "line_number": i + 1} for i, r in enumerate(rows)])
    skipped: Counter[str] = Counter()
    chunks = list(build_chunks(table, SITE, dest("hitkeep"), "obj1", skipped))
    assert [c.events for c in chunks] == [1] * 5
    assert all(c.content_type == "application/json" and isinstance(orjson.loads(c.body), dict) for c in chunks)
    assert skipped == {"larger than HitKeep's 65,535-byte request limit": 1}


def test_known_agents_batches_stay_within_their_limits() -> None:
    rows = [row(path=f"/p/{i}", user_agent="x" * 900) for i in range(300)]
    table = pa.Table.from_pylist([{**r, "line_number": i + 1} for i, r in enumerate(rows)])
    d = dest("knownagents", max_batch_bytes=50_000)
    chunks = list(build_chunks(table, SITE, d, "obj1", Counter()))
    assert all(len(c.body) <= 50_000 for c in chunks) and max(len(c.body) for c in chunks) > 45_000
    assert sum(len(orjson.loads(c.body)) for c in chunks) == 300
    assert [c.events for c in build_chunks(table, SITE, dest("knownagents"), "obj1", Counter())] == [100, 100, 100]


# --------------------------------------------------------------------------- selection


def test_selection_ai_and_referred_reads_referred_by_and_treats_it_missing_as_null() -> None:
    rows = [row(is_ai=True), row(is_ai=False, is_bot=False, agent="human"),
            row(is_ai=False, is_bot=False, agent="human"), row(is_ai=False, is_bot=True, agent="Googlebot")]
    without = pa.Table.from_pylist(rows)
    assert select_mask(without, "ai_and_referred").to_pylist() == [True, False, False, False]
    with_col = without.append_column("referred_by", pa.array([None, "openai", "", None], pa.string()))
    assert select_mask(with_col, "ai_and_referred").to_pylist() == [True, True, False, False]
    assert select_mask(with_col, "ai").to_pylist() == [True, False, False, False]
    assert select_mask(with_col, "automated").to_pylist() == [True, False, False, True]
    assert select_mask(with_col, "all") is None


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("kw", "message"),
    [({"vendor": "hitkeep", "site_id": HK_SITE}, "HitKeep is self-hosted: set `base_url`"),
     ({"vendor": "hitkeep", "site_id": HK_SITE, "base_url": "https://h", "max_batch_events": 5},
      "one event per request"),
     ({"vendor": "knownagents", "site_id": "x"}, "Known Agents has no site id"),
     ({"vendor": "hitkeep", "base_url": "https://h"}, "`site_id` is required"),
     ({"vendor": "scrunch", "site_id": "01JDEM0SANDB0X0000000000AA", "max_age_hours": 5},
      "`max_age_hours` does not apply to scrunch"),
     ({"vendor": "scrunch", "site_id": "01JDEM0SANDB0X0000000000AA", "send_older_events": True},
      "`send_older_events` does not apply to scrunch"),
     ({"vendor": "knownagents", "rate_limit_per_s": 5}, "`rate_limit_per_s` does not apply to knownagents"),
     ({"vendor": "scrunch", "site_id": "01JDEM0SANDB0X0000000000AA", "send_sdk_fields": True},
      "`send_sdk_fields` does not apply")],
)
def test_destination_settings_are_checked_per_vendor(tmp_path: Path, kw: dict[str, Any], message: str) -> None:
    from agent_traffic.config import parse_config

    data = {"staging": "st", "sources": [{"name": "w", "url": "l/{date:%Y}/*", "site": "example.com"}],
            "sites": [{"name": "example.com", "destinations": [{"name": "d", "secret": {"env": "K"}, **kw}]}]}
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(data, base_dir=tmp_path)


def test_vendor_defaults() -> None:
    hk, ka, sc = dest("hitkeep"), dest("knownagents"), dest("scrunch")
    assert (hk.max_batch_events, hk.max_batch_bytes, hk.rate_limit_per_s, hk.rate_limit_burst) == (1, 65_535, 10, 20)
    assert (ka.max_batch_events, ka.max_batch_bytes, ka.endpoint_base) == (100, 512_000, "https://api.knownagents.com")
    assert (sc.max_batch_events, sc.max_batch_bytes) == (5000, 1_000_000)
    assert hk.max_age_hours == ka.max_age_hours == 48 and not hk.send_older_events
    assert vendor("hitkeep").url(hk) == f"https://hitkeep.example.com/api/sites/{HK_SITE}/ingest/ai-fetch"
    assert vendor("knownagents").url(ka) == "https://api.knownagents.com/visits"


# --------------------------------------------------------------------------- the copies match the pages


def _payloads(text: str) -> list[Any]:
    """Every request body in a page's cURL examples (JSON, a JSON array, or NDJSON lines)."""
    out: list[Any] = []
    for block in re.findall(r"(?:-d|--data) '(.*?)'", text, flags=re.S):
        try:
            out.append(json.loads(block))
        except json.JSONDecodeError:
            out.append([json.loads(line) for line in block.strip().splitlines()])
    return out


def _seed(prefix: str) -> str:
    found = sorted(SEEDS.glob(f"{prefix}_*.txt")) if SEEDS.is_dir() else []
    if not found:
        pytest.skip("the vendor pages (../shared/seeds) are not available here")
    return found[0].read_text(encoding="utf-8")


def test_scrunch_examples_are_the_pages() -> None:
    for prefix in ("000", "001"):
        assert SCRUNCH_SINGLE in _payloads(_seed(prefix))
    assert [json.loads(x) for x in SCRUNCH_BATCH.splitlines()] in _payloads(_seed("001"))


def test_hitkeep_examples_are_the_page() -> None:
    text = _seed("002")
    block = re.search(r"Send one JSON object per AI crawler request:\s*(\{.*?\n\})", text, flags=re.S)
    assert block and json.loads(block.group(1)) == HITKEEP_EXAMPLES[0]
    assert HITKEEP_EXAMPLES[1] in _payloads(text)
    listed = re.search(r"const aiBotTokens = \[(.*?)\];", text, flags=re.S)
    assert listed and tuple(re.findall(r'"([^"]+)"', listed.group(1))) == HITKEEP_AI_TOKENS


def test_known_agents_example_is_the_page() -> None:
    assert KNOWN_AGENTS_BATCH in _payloads(_seed("003"))
