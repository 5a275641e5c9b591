"""The sandbox's fast mode (benchmarks only): auth, size and content type still checked, no parsing."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from agent_traffic.devtools.sandbox import Sandbox

KEY = "fast-test-key-41c2"
SITE = "01J9Z8X7W6V5T4S3R2Q1P0N9M8"
HK_SITE = "3f1c2a9e-4b6d-4e8f-9a0b-1c2d3e4f5a6b"


@pytest.fixture
def fast() -> Iterator[Sandbox]:
    with Sandbox(api_keys=[KEY], fast=True) as sb:
        yield sb


def post(sb: Sandbox, path: str, body: bytes, ctype: str, headers: dict[str, str]) -> requests.Response:
    return requests.post(f"{sb.url}{path}", data=body, headers={"Content-Type": ctype, **headers}, timeout=5)


def test_fast_mode_counts_events_and_keeps_bodies_raw(fast: Sandbox) -> None:
    scrunch = f"/v1/sites/{SITE}/platforms/custom/web-traffic"
    batch = b'{"a":1}\n{"a":2}\n{"a":3}\n'
    assert post(fast, scrunch, batch, "application/x-ndjson", {"X-Api-Key": KEY}).status_code == 200
    assert post(fast, scrunch, b"not json", "application/json", {"X-Api-Key": KEY}).status_code == 200  # unparsed
    hk = f"/api/sites/{HK_SITE}/ingest/ai-fetch"
    assert post(fast, hk, b'{"path":"/"}', "application/json", {"Authorization": f"Bearer {KEY}"}).status_code == 202
    visits = b'[{"request_path":"/a","request_headers":{"user-agent":"x"}},{"request_path":"/b"}]'
    assert post(fast, "/visits", visits, "application/json", {"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert fast.accepted_raw("scrunch") == [batch, b"not json"]
    assert fast.accepted("scrunch") == []  # nothing parsed, so no events to read back
    assert fast.stats()["accepted"] == {"scrunch": {SITE: 4}, "hitkeep": {HK_SITE: 1}, "known_agents": {"default": 2}}


def test_fast_mode_still_checks_auth_size_and_content_type(fast: Sandbox) -> None:
    scrunch = f"/v1/sites/{SITE}/platforms/custom/web-traffic"
    assert post(fast, scrunch, b'{"a":1}\n', "application/x-ndjson", {"X-Api-Key": "wrong"}).status_code == 401
    assert post(fast, scrunch, b'{"a":1}\n', "text/plain", {"X-Api-Key": KEY}).status_code == 415
    assert post(fast, scrunch, b"x" * 1_100_000, "application/x-ndjson", {"X-Api-Key": KEY}).status_code == 413
    assert fast.accepted_raw("scrunch") == []
