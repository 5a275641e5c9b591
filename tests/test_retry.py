"""Vector's delivery policy: what is retried, how long we wait, and what is never retried."""

from __future__ import annotations

import random
from email.utils import formatdate

import pytest

from agent_traffic.config import DeliveryPolicy
from agent_traffic.delivery.client import http_pool, proxy_for
from agent_traffic.delivery.retry import (
    FATAL,
    RETRY,
    STOP,
    SUCCESS,
    backoff,
    decide,
    parse_retry_after,
    send,
)

OK = frozenset({200})


@pytest.mark.parametrize(
    ("status", "verdict"),
    [(200, SUCCESS), (202, FATAL), (400, FATAL), (401, STOP), (403, STOP), (404, STOP), (408, RETRY),
     (413, FATAL), (422, FATAL), (429, RETRY), (500, RETRY), (501, FATAL), (502, RETRY), (503, RETRY)],
)
def test_decide(status: int, verdict: str) -> None:
    assert decide(status, OK) == verdict


def test_retry_after_seconds_and_http_date() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 0 ") == 0.0
    now = 1_800_000_000.0
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30, abs=1)
    assert parse_retry_after(formatdate(now - 30, usegmt=True), now=now) == 0.0  # in the past
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_full_jitter_stays_within_the_exponential_envelope() -> None:
    rng = random.Random(1)
    for attempt in range(12):
        ceiling = min(10.0, 0.5 * 2**attempt)
        waits = [backoff(attempt, 0.5, 10.0, rng) for _ in range(200)]
        assert all(0 <= w <= ceiling for w in waits)
        assert max(waits) > ceiling * 0.8  # full jitter spreads over the whole range


def _send(sandbox, api_key: str, policy: DeliveryPolicy, body: bytes | None = None):
    sleeps: list[float] = []
    url = f"{sandbox.url}/v1/sites/01JDEM0SANDB0X0000000000AA/platforms/custom/web-traffic"
    event = (b'{"domain":"example.com","user_agent":"GPTBot/1.2","url":"https://example.com/",'
             b'"path":"/","method":"GET","status_code":200,"timestamp":1700000000}')
    with http_pool(url, 1) as pool:
        r = send(pool, url, body or event, {"Content-Type": "application/json", "X-Api-Key": api_key},
                 policy, OK, sleep=sleeps.append, rng=random.Random(3))
    return r, sleeps


def test_429_waits_for_retry_after_then_succeeds(sandbox, api_key: str) -> None:
    sandbox.retry_after = 3
    sandbox.inject("429", "429")
    r, sleeps = _send(sandbox, api_key, DeliveryPolicy(max_attempts=5, retry_after_cap_s=120))
    assert r.outcome == SUCCESS and r.attempts == 3
    assert sleeps == [3.0, 3.0]
    assert r.retries_by_cause == {"429": 2}
    assert len(sandbox.accepted()) == 1


def test_retry_after_is_capped(sandbox, api_key: str) -> None:
    sandbox.retry_after = 3600
    sandbox.inject("429")
    r, sleeps = _send(sandbox, api_key, DeliveryPolicy(retry_after_cap_s=2.5))
    assert r.outcome == SUCCESS and sleeps == [2.5]


def test_5xx_and_resets_back_off_with_jitter(sandbox, api_key: str) -> None:
    sandbox.inject("500", "503", "reset")
    policy = DeliveryPolicy(max_attempts=6, backoff_base_s=1.0, backoff_cap_s=4.0)
    r, sleeps = _send(sandbox, api_key, policy)
    assert r.outcome == SUCCESS and r.attempts == 4
    assert len(sleeps) == 3 and all(0 <= s <= min(4.0, 2**i) for i, s in enumerate(sleeps))
    assert r.retries_by_cause == {"500": 1, "503": 1, "connection": 1}


def test_reset_after_body_counts_a_possible_duplicate(sandbox, api_key: str) -> None:
    sandbox.inject("reset_after_body")
    r, _ = _send(sandbox, api_key, DeliveryPolicy())
    assert r.outcome == SUCCESS and r.possible_duplicates == 1
    assert len(sandbox.accepted()) == 2  # the vendor kept both: this is the documented duplicate


def test_422_and_401_are_never_retried(sandbox, api_key: str) -> None:
    r, sleeps = _send(sandbox, api_key, DeliveryPolicy(), body=b'{"domain": "example.com"}')
    assert (r.outcome, r.status, r.attempts, sleeps) == (FATAL, 422, 1, [])
    assert "user_agent" in r.body  # the vendor's answer is kept for the dead letter
    r, sleeps = _send(sandbox, "wrong-" + api_key, DeliveryPolicy())
    assert (r.outcome, r.status, r.attempts, sleeps) == (STOP, 401, 1, [])


def test_attempts_are_bounded(sandbox, api_key: str) -> None:
    sandbox.inject(*["500"] * 10)
    r, sleeps = _send(sandbox, api_key, DeliveryPolicy(max_attempts=3))
    assert (r.outcome, r.status, r.attempts, len(sleeps)) == (RETRY, 500, 3, 2)


def test_a_429_without_retry_after_backs_off_with_jitter(sandbox, api_key: str) -> None:
    """HitKeep's and Known Agents' 429 say nothing about when to come back."""
    sandbox.retry_after = None
    sandbox.inject("429", "429")
    r, sleeps = _send(sandbox, api_key, DeliveryPolicy(max_attempts=5, backoff_base_s=1.0, backoff_cap_s=8.0))
    assert r.outcome == SUCCESS and r.retries_by_cause == {"429": 2}
    assert len(sleeps) == 2 and 0 <= sleeps[0] <= 1.0 and 0 <= sleeps[1] <= 2.0


def test_the_limiter_runs_before_every_attempt_retries_included(sandbox, api_key: str) -> None:
    calls: list[int] = []
    sandbox.inject("500")
    url = f"{sandbox.url}/v1/sites/01JDEM0SANDB0X0000000000AA/platforms/custom/web-traffic"
    event = (b'{"domain":"example.com","user_agent":"GPTBot/1.2","url":"https://example.com/",'
             b'"path":"/","method":"GET","status_code":200,"timestamp":1700000000}')
    with http_pool(url, 1) as pool:
        r = send(pool, url, event, {"Content-Type": "application/json", "X-Api-Key": api_key},
                 DeliveryPolicy(), OK, sleep=lambda _s: None, before_attempt=lambda: calls.append(1) or 0.25)
    assert r.outcome == SUCCESS and len(calls) == r.attempts == 2 and r.throttled_s == 0.5


def test_a_request_that_cannot_be_built_stops_and_never_quotes_the_key() -> None:
    secret = "s3cr3t-" + "k" * 20
    with http_pool("http://127.0.0.1:9/x", 1) as pool:
        r = send(pool, "http://127.0.0.1:9/x", b"{}", {"Authorization": f"Bearer {secret}\n"},
                 DeliveryPolicy(), OK, sleep=lambda _s: None)
    assert r.outcome == STOP and r.attempts == 1 and r.status is None
    assert "request not sent: ValueError" in r.body and secret not in r.body


def test_a_refused_connection_is_retried_but_is_no_possible_duplicate() -> None:
    """Nothing listens on port 9 of loopback: the body never left, so no duplicate is possible."""
    with http_pool("http://127.0.0.1:9/x", 1) as pool:
        r = send(pool, "http://127.0.0.1:9/x", b"{}", {}, DeliveryPolicy(max_attempts=2), OK,
                 sleep=lambda _s: None)
    assert (r.outcome, r.attempts, r.possible_duplicates) == (RETRY, 2, 0)
    assert r.retries_by_cause == {"connection": 1}
    assert r.body.startswith("connection error: could not connect to http://127.0.0.1:9 (") and "refused" in r.body
    assert "check the destination's base_url" in r.body


def test_proxies_come_from_the_environment_as_with_requests(monkeypatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert proxy_for("https://api.example.com/visits") is None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "localhost,.corp.example")
    assert proxy_for("https://api.example.com/visits") == "http://proxy.internal:3128"
    assert proxy_for("https://ingest.corp.example/visits") is None
    assert proxy_for("http://api.example.com/visits") is None  # no HTTP_PROXY set
    assert type(http_pool("https://api.example.com/visits", 2)).__name__ == "ProxyManager"
