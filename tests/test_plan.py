"""Chunking: deterministic, in line order, within the vendor's limits, rebuilt byte-identically."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import orjson
import pyarrow as pa
import pytest

from agent_traffic.config import Destination, SecretRef, Site
from agent_traffic.delivery.ledger import Chunk, Ledger, decode_chunk, encode_chunk
from agent_traffic.delivery.plan import build_chunks as _build
from agent_traffic.staging.identity import line_runs, lines_in

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


def build_chunks(table: pa.Table, site: Site, d: Destination, oid: str, skipped: Counter | None = None) -> list[Chunk]:
    return list(_build(table, site, d, oid, Counter() if skipped is None else skipped))


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


def test_an_event_larger_than_the_limit_is_counted_not_eligible_never_a_crash() -> None:
    table = pa.concat_tables([events(3), events(1, ua_len=5000, start_line=4), events(2, start_line=5)],
                             promote_options="permissive")
    skipped: Counter[str] = Counter()
    chunks = build_chunks(table, SITE, dest(max_batch_bytes=2000), "obj1", skipped)
    assert skipped == {"larger than Scrunch's 1,999-byte request limit": 1}
    assert sum(c.events for c in chunks) == 5
    assert 4 not in {n for c in chunks for n in lines_in(c.lines)}


def test_chunks_carry_their_lines_and_oldest_event() -> None:
    chunks = build_chunks(events(250), SITE, dest(max_batch_events=100), "obj1")
    assert [c.lines for c in chunks] == [((1, 100),), ((101, 200),), ((201, 250),)]
    t0 = datetime(2026, 11, 21, tzinfo=UTC).timestamp()
    assert [c.oldest_ts for c in chunks] == [t0, t0 + 100, t0 + 200]
    assert "lines" not in chunks[0].meta() and "body" not in chunks[0].meta()


def test_line_runs_round_trip() -> None:
    lines = [1, 2, 3, 7, 9, 10]
    assert line_runs(lines) == ((1, 3), (7, 7), (9, 10))
    assert list(lines_in(line_runs(lines))) == lines
    assert line_runs([]) == ()


def _staged(tmp_path, n: int):
    """A store holding one object's staged events, and its manifest record."""
    import pyarrow.parquet as pq

    from agent_traffic.ingest.storage import Store

    store = Store(str(tmp_path / "staging"))
    key = "events/site=example.com/provider=openai/date=2026-11-21/part-obj1.parquet"
    table = events(n).append_column("is_ai", pa.array([True] * n)).append_column("is_bot", pa.array([True] * n))
    (tmp_path / "staging" / key).parent.mkdir(parents=True)
    pq.write_table(table, tmp_path / "staging" / key)
    return store, {"date": "2026-11-21", "object_id": "obj1", "url": "s3://logs/a.gz", "files": {key: n}}


def test_a_changed_setting_plans_again_but_never_resends_what_was_acknowledged(tmp_path) -> None:
    from agent_traffic.delivery.plan import plan_object

    store, manifest = _staged(tmp_path, 250)
    ledger = Ledger(store, "scrunch-example", "example.com", "2026-11-21")
    prefix = ledger.prefix
    first = plan_object(store, SITE, dest(max_batch_events=100), manifest)
    assert [c["events"] for c in first.chunks] == [100, 100, 50]
    acked = first.chunks[1]  # the vendor took the middle chunk; an ack records its lines
    chunk = ledger.find_chunk(acked["chunk_id"])
    store.put_json(f"{prefix}/acks/{acked['chunk_id']}.json", {"chunk_id": acked["chunk_id"], "lines": chunk.lines})
    second = plan_object(store, SITE, dest(max_batch_events=40), manifest)
    assert second.chunks[0] == {k: v for k, v in acked.items() if k not in ("offset", "length")}  # kept, not repacked
    assert second.balanced  # counted once
    new_lines = [n for c in second.chunks[1:] for n in lines_in(ledger.find_chunk(c["chunk_id"]).lines)]
    assert sorted(new_lines) == [*range(1, 101), *range(201, 251)]  # every other event, once
    assert all(c["events"] <= 40 for c in second.chunks[1:])
    assert second.pack != first.pack and not ledger.has_pack(first.pack)  # the old pack went


def test_too_old_depends_on_now_and_the_vendor(tmp_path) -> None:
    from datetime import UTC, datetime

    from agent_traffic.delivery.plan import plan_object

    store, manifest = _staged(tmp_path, 100)  # one event per second from 2026-11-21 00:00
    ka = Destination(name="ka", vendor="knownagents", secret=SecretRef(env="K"), max_age_hours=24)
    now = datetime(2026, 11, 22, 0, 0, 50, tzinfo=UTC)  # the first 50 events are over 24 h old
    plan = plan_object(store, SITE, ka, manifest, now=now)
    assert plan.too_old == 50 and plan.selected == 50 and plan.balanced
    assert plan.too_old_before == "2026-11-21T00:00:50+00:00"
    opted = Destination(name="ka2", vendor="knownagents", secret=SecretRef(env="K"), max_age_hours=24,
                        send_older_events=True)
    assert plan_object(store, SITE, opted, manifest, now=now).too_old == 0
    assert plan_object(store, SITE, dest(name="sc"), manifest, now=now).too_old == 0  # Scrunch backfills


def test_row_groups_a_destination_selects_nothing_of_are_counted_not_read(tmp_path) -> None:
    """Human traffic is most of a log: for `select: ai`, row groups whose statistics show no AI
    agent are skipped unread, and their rows are still counted, as not selected."""
    import pyarrow.parquet as pq

    from agent_traffic.delivery.plan import plan_object, read_object_events
    from agent_traffic.ingest.storage import Store

    store = Store(str(tmp_path / "staging"))
    n = 300
    humans = events(n).append_column("is_ai", pa.array([False] * n)).append_column("is_bot", pa.array([False] * n))
    mixed = events(n, start_line=n + 1)
    mixed = mixed.append_column("is_ai", pa.array([i % 3 == 0 for i in range(n)])).append_column(
        "is_bot", pa.array([i % 3 == 0 for i in range(n)]))
    key = "events/site=example.com/provider=x/date=2026-11-21/part-obj1.parquet"
    (tmp_path / "staging" / key).parent.mkdir(parents=True)
    with pq.ParquetWriter(tmp_path / "staging" / key, humans.schema) as w:  # two row groups, as staging writes them
        w.write_table(humans)
        w.write_table(mixed)
    skipped: list[int] = []
    t = read_object_events(store, [key], selection="ai", skipped=skipped.append)
    assert skipped == [n] and t.num_rows == n  # the human row group was not read
    assert read_object_events(store, [key], selection="all", skipped=skipped.append).num_rows == 2 * n
    wanted = ["line_number", "is_ai", "user_agent"]  # only these decoded, statistics read or not
    for selection in ("ai", "all", None):
        assert read_object_events(store, [key], columns=wanted, selection=selection,
                                  skipped=skipped.append).column_names == wanted
    manifest = {"date": "2026-11-21", "object_id": "obj1", "url": "s3://logs/a.gz", "files": {key: 2 * n}}
    plan = plan_object(store, SITE, dest(select="ai"), manifest)
    assert plan.events_total == 2 * n and plan.selected == n // 3 and plan.balanced
    assert plan.not_selected == {"not an AI agent": 2 * n - n // 3}
    only_humans = "events/site=example.com/provider=y/date=2026-11-21/part-obj2.parquet"
    (tmp_path / "staging" / only_humans).parent.mkdir(parents=True)
    pq.write_table(humans, tmp_path / "staging" / only_humans)
    plan = plan_object(store, SITE, dest(select="ai"), {**manifest, "object_id": "obj2", "files": {only_humans: n}})
    assert plan.events_total == n and plan.selected == 0 and plan.not_selected == {"not an AI agent": n}
    assert plan.balanced and plan.pack is None


def test_dictionary_columns_are_read_as_dictionaries_where_a_file_has_them(tmp_path) -> None:
    """The vendor's few-values columns come as Arrow dictionaries; a staged file of an older
    schema without one of them is read too (its rows null there), not refused."""
    import pyarrow.parquet as pq

    from agent_traffic.delivery.plan import read_object_events
    from agent_traffic.ingest.storage import Store

    store = Store(str(tmp_path / "staging"))
    keys = [f"events/site=example.com/provider={p}/date=2026-11-21/part-obj1.parquet" for p in ("x", "y")]
    for key, table in zip(keys, (events(5), events(3, start_line=6).drop_columns(["method"])), strict=True):
        (tmp_path / "staging" / key).parent.mkdir(parents=True)
        pq.write_table(table, tmp_path / "staging" / key)
    t = read_object_events(store, keys, columns=["line_number", "user_agent", "method"],
                           dictionary=("user_agent", "method"))
    assert pa.types.is_dictionary(t.schema.field("user_agent").type)
    assert pa.types.is_dictionary(t.schema.field("method").type)
    assert t.num_rows == 8 and t["method"].null_count == 3
    assert t["user_agent"].cast(pa.string()).to_pylist() == events(5)["user_agent"].to_pylist() + events(3)["user_agent"].to_pylist()
