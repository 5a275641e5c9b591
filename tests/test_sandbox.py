"""The sandbox must answer like the vendors, over real HTTP, or delivery tests prove nothing."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from agent_traffic.devtools.sandbox import Sandbox, register_cli

TIMEOUT = 5
KEY = "sandbox-test-key-7f3c9a"
AUTH = {"Authorization": f"Bearer {KEY}"}  # the control routes need the key
SITE = "01J9Z8X7W6V5T4S3R2Q1P0N9M8"  # a ULID
OTHER_SITE = "01J9Z8X7W6V5T4S3R2Q1P0N9MA"
HK_SITE = "3f1c2a9e-4b6d-4e8f-9a0b-1c2d3e4f5a6b"
GPTBOT = "Mozilla/5.0 (compatible; GPTBot/1.0; +https://openai.com/gptbot)"


def event(n: int = 0, **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "domain": "example.com",
        "user_agent": GPTBOT,
        "url": f"https://example.com/page-{n}",
        "path": f"/page-{n}",
        "method": "GET",
        "status_code": 200,
        "timestamp": 1700000000 + n,
    }
    base.update(overrides)
    return base


def ndjson(events: list[dict[str, Any]]) -> bytes:
    return ("\n".join(json.dumps(e) for e in events) + "\n").encode()


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(api_keys=[KEY], seed=7) as sb:
        sb.retry_after = 0
        yield sb


def scrunch_url(sb: Sandbox, site: str = SITE) -> str:
    return f"{sb.url}/v1/sites/{site}/platforms/custom/web-traffic"


def post_scrunch(
    sb: Sandbox,
    body: bytes | dict[str, Any],
    content_type: str = "application/json",
    key: str | None = KEY,
    site: str = SITE,
) -> requests.Response:
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    headers = {"Content-Type": content_type}
    if key is not None:
        headers["X-Api-Key"] = key
    return requests.post(scrunch_url(sb, site), data=data, headers=headers, timeout=TIMEOUT)


# --------------------------------------------------------------------------- Scrunch: success


def test_single_json_event_is_accepted_and_stored(sandbox: Sandbox) -> None:
    ev = event(1, response_time=120, ip="203.0.113.1")
    resp = post_scrunch(sandbox, ev)
    assert resp.status_code == 200
    assert resp.json() == {"status": "ok"}
    assert sandbox.accepted("scrunch", SITE) == [ev]
    assert sandbox.requests_seen == {"scrunch": {"200": 1}}


def test_ndjson_batch_is_stored_in_order(sandbox: Sandbox) -> None:
    batch = [event(i) for i in range(50)]
    resp = post_scrunch(sandbox, ndjson(batch), "application/x-ndjson")
    assert resp.status_code == 200
    assert sandbox.accepted("scrunch", SITE) == batch
    assert sandbox.accepted("scrunch", OTHER_SITE) == []


def test_ndjson_without_trailing_newline_and_float_timestamp(sandbox: Sandbox) -> None:
    batch = [event(1, timestamp=1700000000.25), event(2)]
    body = "\n".join(json.dumps(e) for e in batch).encode()
    assert post_scrunch(sandbox, body, "application/x-ndjson").status_code == 200
    assert sandbox.accepted() == batch


def test_optional_fields_may_be_null_and_unknown_fields_are_kept(sandbox: Sandbox) -> None:
    ev = event(response_time=None, ip=None, extra="kept")
    assert post_scrunch(sandbox, ev).status_code == 200
    assert sandbox.accepted() == [ev]


def test_accepted_without_site_returns_all_sites_in_arrival_order(sandbox: Sandbox) -> None:
    post_scrunch(sandbox, event(1), site=SITE)
    post_scrunch(sandbox, event(2), site=OTHER_SITE)
    assert [e["path"] for e in sandbox.accepted("scrunch")] == ["/page-1", "/page-2"]
    assert [e["path"] for e in sandbox.accepted("scrunch", OTHER_SITE)] == ["/page-2"]


# --------------------------------------------------------------------------- Scrunch: validation

INVALID_EVENTS = [
    pytest.param("domain", event(domain=None), id="domain-null"),
    pytest.param("user_agent", event(user_agent=5), id="user_agent-int"),
    pytest.param("url", event(url=["x"]), id="url-array"),
    pytest.param("path", event(path="page"), id="path-no-slash"),
    pytest.param("method", event(method=1), id="method-int"),
    pytest.param("status_code", event(status_code="200"), id="status-string"),
    pytest.param("status_code", event(status_code=True), id="status-bool"),
    pytest.param("status_code", event(status_code=200.0), id="status-float"),
    pytest.param("timestamp", event(timestamp="2023-11-14T22:13:20Z"), id="timestamp-iso"),
    pytest.param("timestamp", event(timestamp="1700000000"), id="timestamp-digits"),
    pytest.param("timestamp", event(timestamp=True), id="timestamp-bool"),
    pytest.param("response_time", event(response_time=12.5), id="response_time-float"),
    pytest.param("response_time", event(response_time="12"), id="response_time-string"),
    pytest.param("ip", event(ip=123), id="ip-int"),
]


@pytest.mark.parametrize(("field", "bad"), INVALID_EVENTS)
def test_each_validation_rule_is_a_422(sandbox: Sandbox, field: str, bad: dict) -> None:
    resp = post_scrunch(sandbox, bad)
    assert resp.status_code == 422
    assert {"line": 1, "field": field} == {
        k: resp.json()["errors"][0][k] for k in ("line", "field")
    }
    assert sandbox.accepted() == []


@pytest.mark.parametrize(
    "field", ["domain", "user_agent", "url", "path", "method", "status_code", "timestamp"]
)
def test_missing_required_field_is_a_422(sandbox: Sandbox, field: str) -> None:
    ev = event()
    del ev[field]
    resp = post_scrunch(sandbox, ev)
    assert resp.status_code == 422
    assert resp.json()["errors"] == [{"line": 1, "field": field, "error": "field required"}]
    assert sandbox.accepted() == []


def test_one_bad_line_rejects_the_whole_batch_and_names_the_line(sandbox: Sandbox) -> None:
    batch = [event(1), event(2), event(3, status_code="200"), event(4)]
    resp = post_scrunch(sandbox, ndjson(batch), "application/x-ndjson")
    assert resp.status_code == 422
    assert resp.json()["errors"] == [
        {"line": 3, "field": "status_code", "error": "must be an integer, got string"}
    ]
    assert sandbox.accepted() == []


@pytest.mark.parametrize(
    ("body", "line"),
    [
        pytest.param(b'{"domain": "x"\n', 1, id="broken-json"),
        pytest.param(ndjson([event(1)]) + b"\n" + ndjson([event(2)]), 2, id="blank-middle-line"),
        pytest.param(b"[1, 2]\n", 1, id="array-line"),
        pytest.param(b"\n\n", 1, id="empty-batch"),
        pytest.param(b'{"timestamp": NaN}\n', 1, id="nan"),
        pytest.param(b"\xff\xfe\n", 1, id="not-utf8"),
    ],
)
def test_malformed_ndjson_is_a_422(sandbox: Sandbox, body: bytes, line: int) -> None:
    resp = post_scrunch(sandbox, body, "application/x-ndjson")
    assert resp.status_code == 422
    assert resp.json()["errors"][0]["line"] == line
    assert sandbox.accepted() == []


def test_json_content_type_takes_one_object_only(sandbox: Sandbox) -> None:
    as_array = json.dumps([event(1), event(2)]).encode()
    assert post_scrunch(sandbox, as_array).status_code == 422
    as_lines = ndjson([event(1), event(2)])
    resp = post_scrunch(sandbox, as_lines, "application/json")
    assert resp.status_code == 422
    assert "x-ndjson" in resp.json()["errors"][0]["error"]
    assert sandbox.accepted() == []


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/ndjson", "application/x-ndjson; charset=utf-8", ""],
)
def test_other_content_types_are_a_415(sandbox: Sandbox, content_type: str) -> None:
    resp = post_scrunch(sandbox, ndjson([event()]), content_type)
    assert resp.status_code == 415
    assert sandbox.accepted() == []


def test_json_with_charset_parameter_is_fine(sandbox: Sandbox) -> None:
    resp = post_scrunch(sandbox, event(), "application/json; charset=utf-8")
    assert resp.status_code == 200


def test_body_over_one_million_bytes_is_a_413(sandbox: Sandbox) -> None:
    line = json.dumps(event(user_agent="x" * 1000)).encode() + b"\n"
    body = line * (1_000_000 // len(line) + 1)
    assert len(body) > 1_000_000
    resp = post_scrunch(sandbox, body, "application/x-ndjson")
    assert resp.status_code == 413
    assert sandbox.accepted() == []
    # The connection survives: the next request on a fresh call works.
    assert post_scrunch(sandbox, event()).status_code == 200


def test_body_of_exactly_one_million_bytes_is_accepted(sandbox: Sandbox) -> None:
    ev = event()
    ev["user_agent"] = ""
    pad = 1_000_000 - len(json.dumps(ev).encode())
    ev["user_agent"] = "x" * pad
    body = json.dumps(ev).encode()
    assert len(body) == 1_000_000
    assert post_scrunch(sandbox, body).status_code == 200


def test_chunked_bodies_are_read_and_limited(sandbox: Sandbox) -> None:
    batch = [event(1), event(2)]
    headers = {"X-Api-Key": KEY, "Content-Type": "application/x-ndjson"}
    chunks = iter(ndjson(batch).splitlines(keepends=True))  # a generator body is sent chunked
    resp = requests.post(scrunch_url(sandbox), data=chunks, headers=headers, timeout=TIMEOUT)
    assert resp.status_code == 200
    assert sandbox.accepted() == batch
    too_big = (b"x" * 1000 for _ in range(1001))
    resp = requests.post(scrunch_url(sandbox), data=too_big, headers=headers, timeout=TIMEOUT)
    assert resp.status_code == 413


@pytest.mark.parametrize("site", ["not-a-ulid", "01J9Z8X7W6V5T4S3R2Q1P0N9MU", SITE + "0"])
def test_site_id_must_be_a_ulid(sandbox: Sandbox, site: str) -> None:
    resp = post_scrunch(sandbox, event(), site=site)
    assert resp.status_code == 404
    assert sandbox.accepted() == []


def test_unknown_route_and_wrong_method(sandbox: Sandbox) -> None:
    resp = requests.post(f"{sandbox.url}/v1/nowhere", json={}, timeout=TIMEOUT)
    assert resp.status_code == 404
    resp = requests.get(scrunch_url(sandbox), timeout=TIMEOUT)
    assert resp.status_code == 405


# --------------------------------------------------------------------------- auth


@pytest.mark.parametrize("key", [None, "", "wrong-key-value-123"])
def test_missing_or_wrong_key_is_a_401_that_never_echoes_it(
    sandbox: Sandbox, key: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG", logger="agent_traffic.devtools.sandbox")
    resp = post_scrunch(sandbox, event(), key=key)
    assert resp.status_code == 401
    assert "detail" in resp.json()
    for secret in filter(None, [key, KEY]):
        assert secret not in resp.text
        assert all(secret not in v for v in resp.headers.values())
        assert secret not in caplog.text
    assert sandbox.accepted() == []


def test_key_is_checked_before_the_body(sandbox: Sandbox) -> None:
    resp = post_scrunch(sandbox, event(status_code="bad"), key="nope")
    assert resp.status_code == 401


def test_without_configured_keys_any_non_empty_key_works() -> None:
    with Sandbox() as sb:
        assert post_scrunch(sb, event(), key="anything").status_code == 200
        assert post_scrunch(sb, event(), key="").status_code == 401
        assert post_scrunch(sb, event(), key=None).status_code == 401


# --------------------------------------------------------------------------- faults


def test_scripted_faults_are_consumed_in_order(sandbox: Sandbox) -> None:
    sandbox.retry_after = 3
    sandbox.inject("429", "500", "503", "401", "422")
    got = [post_scrunch(sandbox, event(i)) for i in range(6)]
    assert [r.status_code for r in got] == [429, 500, 503, 401, 422, 200]
    assert got[0].headers["Retry-After"] == "3"
    assert "Retry-After" not in got[1].headers
    assert sandbox.accepted() == [event(5)]
    assert sandbox.requests_seen["scrunch"] == {
        "429": 1,
        "500": 1,
        "503": 1,
        "401": 1,
        "422": 1,
        "200": 1,
    }


def test_retry_after_zero_and_http_date(sandbox: Sandbox) -> None:
    sandbox.inject("429", "429")
    assert post_scrunch(sandbox, event()).headers["Retry-After"] == "0"
    sandbox.retry_after = 2
    sandbox.retry_after_format = "http-date"
    value = post_scrunch(sandbox, event()).headers["Retry-After"]
    delay = parsedate_to_datetime(value).timestamp() - time.time()
    assert 0 < delay <= 3


def test_retry_after_none_sends_no_header(sandbox: Sandbox) -> None:
    sandbox.retry_after = None
    sandbox.inject("429")
    resp = post_scrunch(sandbox, event())
    assert resp.status_code == 429
    assert "Retry-After" not in resp.headers


def test_reset_is_a_connection_error_and_stores_nothing(sandbox: Sandbox) -> None:
    sandbox.inject("reset")
    with pytest.raises(requests.ConnectionError):
        post_scrunch(sandbox, event())
    assert sandbox.accepted() == []
    assert post_scrunch(sandbox, event()).status_code == 200
    assert sandbox.requests_seen["scrunch"] == {"reset": 1, "200": 1}


def test_reset_after_body_stores_but_never_answers(sandbox: Sandbox) -> None:
    """The duplicate-producing case: the vendor kept the batch, the client saw an error."""
    batch = [event(1), event(2)]
    sandbox.inject("reset_after_body")
    with pytest.raises(requests.ConnectionError):
        post_scrunch(sandbox, ndjson(batch), "application/x-ndjson")
    assert sandbox.accepted() == batch
    # A naive resend duplicates the batch: the sandbox shows it as the vendor would count it.
    assert post_scrunch(sandbox, ndjson(batch), "application/x-ndjson").status_code == 200
    assert sandbox.accepted() == batch + batch


def test_reset_after_body_on_a_session_with_keep_alive(sandbox: Sandbox) -> None:
    with requests.Session() as session:
        headers = {"X-Api-Key": KEY}
        url = scrunch_url(sandbox)
        assert session.post(url, json=event(1), headers=headers, timeout=TIMEOUT).ok
        sandbox.inject("reset_after_body")
        with pytest.raises(requests.ConnectionError):
            session.post(url, json=event(2), headers=headers, timeout=TIMEOUT)
        assert session.post(url, json=event(3), headers=headers, timeout=TIMEOUT).ok
    assert [e["path"] for e in sandbox.accepted()] == ["/page-1", "/page-2", "/page-3"]


def test_slow_answers_late_and_still_stores_after_a_client_timeout(sandbox: Sandbox) -> None:
    sandbox.inject("slow:0.3")
    start = time.monotonic()
    assert post_scrunch(sandbox, event(1)).status_code == 200
    assert time.monotonic() - start >= 0.3

    sandbox.inject("slow:0.5")
    with pytest.raises(requests.Timeout):
        requests.post(
            scrunch_url(sandbox),
            json=event(2),
            headers={"X-Api-Key": KEY},
            timeout=(TIMEOUT, 0.1),
        )
    deadline = time.monotonic() + 3
    while len(sandbox.accepted()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [e["path"] for e in sandbox.accepted()] == ["/page-1", "/page-2"]


def test_invalid_fault_names_are_refused(sandbox: Sandbox) -> None:
    for bad in ("418", "slow:abc", "slow:-1", "reset-after-body"):
        with pytest.raises(ValueError):
            sandbox.inject(bad)
    with pytest.raises(ValueError):
        sandbox.set_fault_rates({"500": 0.7, "429": 0.5})


def test_random_fault_rates_are_seeded_and_reproducible() -> None:
    def run() -> list[int]:
        with Sandbox(seed=42) as sb:
            sb.retry_after = 0
            sb.set_fault_rates({"500": 0.3, "429": 0.2})
            return [post_scrunch(sb, event(i), key="k").status_code for i in range(30)]

    first, second = run(), run()
    assert first == second
    assert {200, 500, 429} == set(first)


def test_every_request_faults_at_rate_one(sandbox: Sandbox) -> None:
    sandbox.set_fault_rates({"503": 1.0})
    assert {post_scrunch(sandbox, event()).status_code for _ in range(5)} == {503}
    sandbox.set_fault_rates({})
    assert post_scrunch(sandbox, event()).status_code == 200


# --------------------------------------------------------------------------- persistence


def test_persists_ndjson_per_vendor_and_site_and_reloads(tmp_path: Path) -> None:
    batch = [event(i) for i in range(3)]
    with Sandbox(data_dir=tmp_path, api_keys=[KEY]) as sb:
        post_scrunch(sb, ndjson(batch), "application/x-ndjson")
        post_scrunch(sb, event(9), site=OTHER_SITE)
        post_scrunch(sb, event(status_code="x"))  # rejected: not written
        sb.inject("reset_after_body")
        with pytest.raises(requests.ConnectionError):
            post_scrunch(sb, event(4))
    target = tmp_path / "scrunch" / f"{SITE}.ndjson"
    assert len(target.read_text().splitlines()) == 4
    assert Sandbox.load_accepted(tmp_path, "scrunch", SITE) == [*batch, event(4)]
    assert Sandbox.load_accepted(tmp_path, "scrunch", OTHER_SITE) == [event(9)]
    assert Sandbox.load_accepted(tmp_path, "scrunch", "01J9Z8X7W6V5T4S3R2Q1P0N9MB") == []
    with target.open("a") as fh:
        fh.write('{"torn": ')  # a write cut short by a kill
    assert len(Sandbox.load_accepted(tmp_path, "scrunch", SITE)) == 4


def test_load_accepted_refuses_path_tricks(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Sandbox.load_accepted(tmp_path, "scrunch", "../../etc/passwd")


# --------------------------------------------------------------------------- control API


def test_control_api(sandbox: Sandbox) -> None:
    base = f"{sandbox.url}/_sandbox"
    assert requests.get(f"{base}/health", timeout=TIMEOUT).status_code == 200

    resp = requests.post(
        f"{base}/faults", json={"script": ["429", "500"], "retry_after": 0}, headers=AUTH, timeout=TIMEOUT
    )
    assert resp.status_code == 200
    assert resp.json()["pending"] == ["429", "500"]
    first = post_scrunch(sandbox, event(1))
    assert (first.status_code, first.headers["Retry-After"]) == (429, "0")
    assert post_scrunch(sandbox, event(1)).status_code == 500
    assert post_scrunch(sandbox, event(1)).status_code == 200
    post_scrunch(sandbox, event(2), site=OTHER_SITE)

    resp = requests.get(
        f"{base}/accepted", params={"vendor": "scrunch", "site_id": SITE}, headers=AUTH, timeout=TIMEOUT
    )
    assert resp.headers["Content-Type"] == "application/x-ndjson"
    assert [json.loads(line) for line in resp.text.splitlines()] == [event(1)]
    resp = requests.get(f"{base}/accepted", params={"vendor": "scrunch"}, headers=AUTH, timeout=TIMEOUT)
    assert len(resp.text.splitlines()) == 2

    stats = requests.get(f"{base}/stats", headers=AUTH, timeout=TIMEOUT).json()
    assert stats["requests"]["scrunch"] == {"429": 1, "500": 1, "200": 2}
    assert stats["accepted"]["scrunch"] == {SITE: 1, OTHER_SITE: 1}

    resp = requests.post(f"{base}/faults", json={"rates": {"503": 1.0}}, headers=AUTH, timeout=TIMEOUT)
    assert resp.json()["rates"] == {"503": 1.0}
    assert post_scrunch(sandbox, event()).status_code == 503
    requests.post(f"{base}/faults", json={"rates": {}}, headers=AUTH, timeout=TIMEOUT)
    assert post_scrunch(sandbox, event()).status_code == 200


@pytest.mark.parametrize(
    "body",
    [{"script": ["teapot"]}, {"rates": {"500": 2}}, {"retry_after": -1}, {"nope": 1}, [1]],
)
def test_control_api_rejects_bad_documents(sandbox: Sandbox, body: Any) -> None:
    resp = requests.post(f"{sandbox.url}/_sandbox/faults", json=body, headers=AUTH, timeout=TIMEOUT)
    assert resp.status_code == 400
    assert sandbox.fault_state()["pending"] == []


# --------------------------------------------------------------------------- HitKeep


def hk_event(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "path": "/docs/?utm_source=x",
        "hostname": "www.example.com",
        "status_code": 200,
        "content_type": "text/html",
        "response_ms": 120,
        "bytes_served": 18422,
        "user_agent": GPTBOT,
    }
    base.update(overrides)
    return base


def post_hitkeep(
    sb: Sandbox, body: Any, key: str | None = KEY, site: str = HK_SITE
) -> requests.Response:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    url = f"{sb.url}/api/sites/{site}/ingest/ai-fetch"
    return requests.post(url, json=body, headers=headers, timeout=TIMEOUT)


def test_hitkeep_accepts_one_known_ai_fetch_with_202(sandbox: Sandbox) -> None:
    resp = post_hitkeep(sandbox, hk_event())
    assert resp.status_code == 202
    assert sandbox.accepted("hitkeep", HK_SITE) == [hk_event()]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        pytest.param(hk_event(user_agent="OAI-SearchBot/1.0"), 400, "known AI bot", id="ua"),
        pytest.param(hk_event(user_agent="Claude-User/1.0"), 400, "known AI bot", id="ua2"),
        pytest.param([hk_event()], 400, "one JSON object", id="array"),
        pytest.param(hk_event(status_code=99), 400, "status_code", id="status-low"),
        pytest.param(hk_event(status_code="200"), 400, "status_code", id="status-str"),
        pytest.param(hk_event(path=""), 400, "path", id="path"),
        pytest.param(hk_event(response_ms=1.5), 400, "response_ms", id="float-ms"),
    ],
)
def test_hitkeep_rejections(sandbox: Sandbox, body: Any, status: int, message: str) -> None:
    resp = post_hitkeep(sandbox, body)
    assert resp.status_code == status
    assert message in resp.json()["error"]
    assert sandbox.accepted("hitkeep") == []


def test_hitkeep_exact_ua_message(sandbox: Sandbox) -> None:
    resp = post_hitkeep(sandbox, hk_event(user_agent="Mozilla/5.0 Applebot/0.1"))
    assert resp.json() == {"error": "user_agent must match a known AI bot"}


def test_hitkeep_auth_site_and_size(sandbox: Sandbox) -> None:
    assert post_hitkeep(sandbox, hk_event(), key=None).status_code == 401
    assert post_hitkeep(sandbox, hk_event(), key="wrong").status_code == 401
    assert post_hitkeep(sandbox, hk_event(), site=SITE).status_code == 404
    big = hk_event(path="/" + "a" * (64 * 1024))
    assert post_hitkeep(sandbox, big).status_code == 413
    assert sandbox.accepted("hitkeep") == []


def test_hitkeep_429_has_no_retry_after(sandbox: Sandbox) -> None:
    sandbox.inject("429")
    resp = post_hitkeep(sandbox, hk_event())
    assert resp.status_code == 429
    assert "Retry-After" not in resp.headers


def test_hitkeep_rate_limit_burst_then_429(sandbox: Sandbox) -> None:
    with requests.Session() as session:
        url = f"{sandbox.url}/api/sites/{HK_SITE}/ingest/ai-fetch"
        headers = {"Authorization": f"Bearer {KEY}"}
        codes = [
            session.post(url, json=hk_event(), headers=headers, timeout=TIMEOUT).status_code
            for _ in range(40)
        ]
    assert codes[:20] == [202] * 20
    assert 429 in codes[20:]
    assert len(sandbox.accepted("hitkeep")) == codes.count(202)


# --------------------------------------------------------------------------- Known Agents


def visit(n: int = 0, **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "request_path": f"/pages/{n}",
        "request_method": "GET",
        "request_headers": {"user-agent": GPTBOT, "x-forwarded-for": "203.0.113.42"},
        "response_status_code": 200,
        "response_duration_in_milliseconds": 45,
    }
    base.update(overrides)
    return base


def post_known_agents(sb: Sandbox, body: Any, key: str | None = KEY) -> requests.Response:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    return requests.post(f"{sb.url}/visits", json=body, headers=headers, timeout=TIMEOUT)


def test_known_agents_object_and_array(sandbox: Sandbox) -> None:
    assert post_known_agents(sandbox, visit(1)).status_code == 200
    created = "2024-05-01T12:00:00Z"
    assert post_known_agents(sandbox, [visit(2), visit(3, created=created)]).status_code == 200
    assert sandbox.accepted("known_agents") == [visit(1), visit(2), visit(3, created=created)]


@pytest.mark.parametrize(
    "body",
    [
        pytest.param([visit(1), visit(2, request_path="pages")], id="path"),
        pytest.param(visit(request_headers="ua"), id="headers"),
        pytest.param(visit(response_status_code="200"), id="status"),
        pytest.param(visit(created="yesterday"), id="created"),
        pytest.param([], id="empty"),
    ],
)
def test_known_agents_rejects_the_whole_request(sandbox: Sandbox, body: Any) -> None:
    assert post_known_agents(sandbox, body).status_code == 400
    assert sandbox.accepted("known_agents") == []


def test_known_agents_auth(sandbox: Sandbox) -> None:
    resp = post_known_agents(sandbox, visit(), key="wrong")
    assert resp.status_code == 401
    assert "wrong" not in resp.text


# --------------------------------------------------------------------------- command line


def test_register_cli_parses_options(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["sandbox", "--port", "0", "--fault-rate", "500=0.1", "--fault-rate", "reset=0.02"]
    )
    assert args.host == "127.0.0.1"
    assert args.fault_rate == [("500", 0.1), ("reset", 0.02)]
    assert args.api_key == []
    assert args.func.__name__ == "run_sandbox_cli"
    assert parser.parse_args(["sandbox"]).port == 8900
    with pytest.raises(SystemExit):
        parser.parse_args(["sandbox", "--fault-rate", "teapot=0.5"])


_CLI = """
import argparse, sys
from agent_traffic.devtools.sandbox import register_cli
parser = argparse.ArgumentParser()
register_cli(parser.add_subparsers(dest="command"))
args = parser.parse_args(sys.argv[1:])
sys.exit(args.func(args))
"""


def test_cli_serves_in_another_process_until_sigterm(tmp_path: Path) -> None:
    env = {**os.environ, "AGENT_TRAFFIC_SANDBOX_KEYS": f" {KEY} ,other", "PYTHONPATH": "include"}
    cmd = [sys.executable, "-c", _CLI, "sandbox", "--port", "0", "--data-dir", str(tmp_path)]
    proc = subprocess.Popen(
        cmd,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.startswith("sandbox listening on http://127.0.0.1:"), line
        url = line.split()[-1]
        sb = Sandbox()
        sb.host, sb.port = "127.0.0.1", int(url.rsplit(":", 1)[1])
        assert post_scrunch(sb, event(1)).status_code == 200
        assert post_scrunch(sb, event(2), key="not-a-key").status_code == 401
        stats = requests.get(f"{url}/_sandbox/stats", headers=AUTH, timeout=TIMEOUT).json()
        assert stats["requests"]["scrunch"] == {"200": 1, "401": 1}
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=5)
    assert proc.returncode == 0
    assert KEY not in err
    assert Sandbox.load_accepted(tmp_path, "scrunch", SITE) == [event(1)]
