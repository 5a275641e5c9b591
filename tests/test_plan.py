"""Chunking: deterministic, in line order, within the vendor's limits, rebuilt byte-identically."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pyarrow as pa
import pytest

from agent_traffic.config import Destination, SecretRef, Site
from agent_traffic.plan import Chunk, build_chunks, decode_chunk, encode_chunk

SITE = Site(name="example.com")


def dest(**kw) -> Destination:
    base = {"name": "scrunch-example", "vendor": "scrunch", "site_id": "01JDEM0SANDB0X0000000000AA",
            "secret": SecretRef(env="K")}
    return Destination(**{**base, **kw})


def events(n: int, ua_len: int = 60, start_line: int = 1) -> pa.Table:
    t0 = datetime(2026, 11, 21, tzinfo=UTC)
    rows = [
        {
            "ts": t0 + timedelta(seconds=i, milliseconds=250 * (i % 2)),
            "url": f"https://example.com/p/{i}?q=1",
            "path": f"/p/{i}",
            "method": "GET",
            "status": 200,
            "user_agent": "GPTBot/1.2 " + "x" * ua_len,
            "duration_ms": 12.6 if i % 3 else None,
            "client_ip": "203.0.113.77",
            "line_number": start_line + i,
            "source_object": "s3://logs/a.gz",
        }
        for i in range(n)
    ]
    return pa.Table.from_pylist(rows)


def lines_of(chunk: Chunk) -> list[dict]:
    return [orjson.loads(x) for x in chunk.body.splitlines()]


def test_chunks_stay_under_the_byte_limit_and_keep_line_order() -> None:
    chunks = build_chunks(events(3000, ua_len=400), SITE, dest(max_batch_bytes=100_000), "obj1")
    assert len(chunks) > 10
    assert all(len(c.body) <= 100_000 for c in chunks)
    assert all(c.content_type == "application/x-ndjson" and c.body.endswith(b"\n") for c in chunks)
    seen = [e["path"] for c in chunks for e in lines_of(c)]
    assert seen == [f"/p/{i}" for i in range(3000)]
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert all(c.first_line <= c.last_line for c in chunks)
    assert sum(c.events for c in chunks) == 3000


def test_default_limit_is_just_under_one_megabyte() -> None:
    chunks = build_chunks(events(12_000, ua_len=300), SITE, dest(max_batch_events=100_000), "obj1")
    sizes = [len(c.body) for c in chunks]
    assert max(sizes) <= 1_000_000 and max(sizes) > 990_000


def test_event_count_limit() -> None:
    chunks = build_chunks(events(250), SITE, dest(max_batch_events=100), "obj1")
    assert [c.events for c in chunks] == [100, 100, 50]


def test_one_event_is_sent_as_plain_json() -> None:
    (chunk,) = build_chunks(events(1), SITE, dest(), "obj1")
    assert chunk.content_type == "application/json" and not chunk.body.endswith(b"\n")
    assert orjson.loads(chunk.body)["path"] == "/p/0"


def test_scrunch_fields_and_types() -> None:
    (chunk,) = build_chunks(events(3), SITE, dest(), "obj1")
    a, b, c = lines_of(chunk)
    assert set(a) == {"domain", "user_agent", "url", "path", "method", "status_code", "timestamp", "ip"}
    t0 = int(datetime(2026, 11, 21, tzinfo=UTC).timestamp())
    assert a["timestamp"] == t0 and isinstance(a["timestamp"], int)  # Unix seconds, never ISO 8601
    assert b["timestamp"] == t0 + 1.25 and b["response_time"] == 13
    assert a["domain"] == "example.com" and a["status_code"] == 200


@pytest.mark.parametrize(("policy", "ip"), [("send", "203.0.113.77"), ("truncate", "203.0.113.0"), ("omit", None)])
def test_ip_policy(policy: str, ip: str | None) -> None:
    (chunk,) = build_chunks(events(2), SITE, dest(ip_policy=policy), "obj1")
    assert lines_of(chunk)[0].get("ip") == ip


def test_rebuilt_chunks_are_byte_identical_and_ids_follow_content() -> None:
    d = dest(max_batch_events=40)
    a = build_chunks(events(200), SITE, d, "obj1")
    b = build_chunks(events(200), SITE, d, "obj1")
    assert [(c.chunk_id, c.body) for c in a] == [(c.chunk_id, c.body) for c in b]
    assert len({c.chunk_id for c in a}) == len(a)
    other_object = build_chunks(events(200), SITE, d, "obj2")
    assert {c.chunk_id for c in a}.isdisjoint(c.chunk_id for c in other_object)
    other_dest = build_chunks(events(200), SITE, dest(name="scrunch-b", max_batch_events=40), "obj1")
    assert {c.chunk_id for c in a}.isdisjoint(c.chunk_id for c in other_dest)
    changed = build_chunks(events(200, ua_len=61), SITE, d, "obj1")
    assert {c.chunk_id for c in a}.isdisjoint(c.chunk_id for c in changed)


def test_chunk_file_round_trip() -> None:
    (chunk,) = build_chunks(events(5), SITE, dest(), "obj1")
    assert decode_chunk(encode_chunk(chunk)) == chunk


def test_an_event_larger_than_the_limit_is_an_error_that_says_where() -> None:
    with pytest.raises(ValueError, match=r"s3://logs/a.gz line 1 serializes to \d+ bytes"):
        build_chunks(events(1, ua_len=5000), SITE, dest(max_batch_bytes=2000), "obj1")
