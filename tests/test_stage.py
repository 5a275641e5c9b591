"""Partition split of a block of events: every row once, in line order, under its own key."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc

from agent_traffic.staging.stage import partitions


def test_partitions_keep_every_row_once_in_line_order() -> None:
    t0 = datetime(2026, 11, 20, 23, 59, 58, tzinfo=UTC)
    sites, providers = ["a.example", "b.example"], ["openai", "human", "anthropic"]
    n = 2_000
    table = pa.table({
        "line_number": pa.array(range(1, n + 1), pa.int64()),
        "site": [sites[i % 2] for i in range(n)],
        "provider": [providers[(i // 3) % 3] for i in range(n)],
        "ts": pa.array([t0 + timedelta(milliseconds=i * 7) for i in range(n)], pa.timestamp("us", "UTC")),
    })
    seen: dict[tuple[str, str, str], list[int]] = {}
    for key, part in partitions(table):
        assert key not in seen
        seen[key] = part["line_number"].to_pylist()
        assert seen[key] == sorted(seen[key])  # line order inside a partition
        assert set(part["site"].to_pylist()) == {key[0]} and set(part["provider"].to_pylist()) == {key[1]}
        assert {t.date().isoformat() for t in part["ts"].to_pylist()} == {key[2]}  # the UTC day
    assert sorted(x for rows in seen.values() for x in rows) == list(range(1, n + 1))
    assert len(seen) == 2 * 3 * 2  # the block crosses midnight UTC


def test_one_partition_is_the_block_itself() -> None:
    table = pa.table({"site": ["a"] * 3, "provider": ["p"] * 3, "line_number": [1, 2, 3],
                      "ts": pa.array([datetime(2026, 1, 1, tzinfo=UTC)] * 3, pa.timestamp("us", "UTC"))})
    assert [(k, p.num_rows) for k, p in partitions(table)] == [(("a", "p", "2026-01-01"), 3)]


def _block(first_line: int, n: int, rare_every: int) -> pa.Table:
    """A block of staged-schema events: most rows one provider, every `rare_every`-th another."""
    from agent_traffic.schema import CLASS_FIELDS, EVENT_SCHEMA

    cols = {}
    for f in EVENT_SCHEMA:
        if f.name == "provider":
            cols[f.name] = pa.array(["rare" if i % rare_every == 0 else "common" for i in range(n)])
        elif f.name == "site":
            cols[f.name] = pa.array(["example.com"] * n)
        elif f.name == "line_number":
            cols[f.name] = pa.array(range(first_line, first_line + n), pa.int64())
        elif f.name == "ts":
            cols[f.name] = pa.array([datetime(2026, 11, 21, 12, tzinfo=UTC)] * n, f.type)
        elif pa.types.is_string(f.type) and f in CLASS_FIELDS:  # the classifier's few answers
            cols[f.name] = pa.array([f"{f.name}-{i % 7}" for i in range(n)])
        elif pa.types.is_string(f.type):
            cols[f.name] = pa.array([f"{f.name}-{first_line + i}-" + "x" * 40 for i in range(n)])
        elif pa.types.is_boolean(f.type):
            cols[f.name] = pa.array([False] * n)
        else:
            cols[f.name] = pa.array([0] * n, f.type)
    return pa.table(cols, schema=EVENT_SCHEMA)


def test_rows_held_for_a_rare_partition_do_not_keep_their_blocks_alive(tmp_path) -> None:
    """Memory must not grow with the object: a few held rows are copied out of their block."""
    import gc

    from agent_traffic.ingest.storage import Store
    from agent_traffic.schema import QUARANTINE_SCHEMA
    from agent_traffic.staging.stage import ObjectStager

    stager = ObjectStager(Store(str(tmp_path / "st")), "obj", "2026-11-21")
    empty = QUARANTINE_SCHEMA.empty_table()
    before = pa.total_allocated_bytes()
    for b in range(8):
        block = _block(1 + b * 40_000, 40_000, rare_every=10_000)  # 4 rare rows a block
        stager.add(block, empty)
        del block
        gc.collect()
    # every common row was written; what stays in memory is the rare rows, not eight blocks
    assert pa.total_allocated_bytes() - before < 4 * 1024 * 1024
    rows = stager.commit()
    assert rows == {"events/site=example.com/provider=common/date=2026-11-21/part-obj.parquet": 8 * 39_996,
                    "events/site=example.com/provider=rare/date=2026-11-21/part-obj.parquet": 8 * 4}


def test_staged_files_read_back_as_the_events_with_the_statistics_readers_prune_on(tmp_path, monkeypatch) -> None:
    """Statistics stay where readers prune (the planner skips row groups of no AI agent unread);
    free text carries none. Readers see the events as they were, in plain types, each file in line
    order (the planner puts the parts in line order as it writes them), or all in line order when
    the object is large (the planner takes it a segment at a time)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from agent_traffic.delivery.plan import read_object_events
    from agent_traffic.ingest.storage import Store
    from agent_traffic.schema import EVENT_SCHEMA, QUARANTINE_SCHEMA
    from agent_traffic.staging.stage import NO_STATISTICS, ObjectStager

    store = Store(str(tmp_path / "st"))
    stager = ObjectStager(store, "obj", "2026-11-21")
    blocks = [_block(1 + b * 40_000, 40_000, rare_every=7) for b in range(2)]
    for block in blocks:
        stager.add(block, QUARANTINE_SCHEMA.empty_table())
    files = stager.commit()
    assert len(files) == 2
    common = "events/site=example.com/provider=common/date=2026-11-21/part-obj.parquet"
    meta = pq.ParquetFile(tmp_path / "st" / common).metadata
    for g in range(meta.num_row_groups):
        stats = {meta.schema.column(i).name: meta.row_group(g).column(i).statistics for i in range(meta.num_columns)}
        assert all(stats[c] is None for c in NO_STATISTICS)
        assert all(stats[c] is not None and stats[c].has_min_max for c in ("ts", "status", "is_ai", "is_bot", "agent"))
        assert stats["referred_by"] is not None
    skipped: list[int] = []
    assert read_object_events(store, list(files), selection="ai", skipped=skipped.append) is None
    assert skipped == list(files.values())  # every row group proven free of AI agents, none read
    got = read_object_events(store, list(files))
    assert got.schema.equals(EVENT_SCHEMA)  # plain strings, not the writer's dictionaries
    for t in (pq.read_table(tmp_path / "st" / k) for k in files):
        assert pc.all(pc.greater(t["line_number"][1:], t["line_number"][:-1])).as_py()
    assert got.sort_by("line_number").equals(pa.concat_tables(blocks).cast(got.schema))
    import agent_traffic.delivery.plan as plan

    monkeypatch.setattr(plan, "SEGMENT_ROWS", 1_000)
    assert read_object_events(store, list(files)).equals(pa.concat_tables(blocks).cast(got.schema))


def test_rows_held_from_blocks_mostly_written_are_copied_out_of_them(tmp_path) -> None:
    """A partition a block holds a third of is kept as a slice of that block (no copy); once most of
    the block is written and such rows pile up, they are copied out, so memory follows the rows held,
    not the blocks they came from. Every row still reaches its file once, in line order."""
    import gc

    import pyarrow.parquet as pq

    from agent_traffic.ingest.storage import Store
    from agent_traffic.schema import QUARANTINE_SCHEMA
    from agent_traffic.staging.stage import BUFFER_ROWS, ObjectStager

    n, blocks = 30_000, 8
    stager = ObjectStager(Store(str(tmp_path / "st")), "obj", "2026-11-21")
    empty = QUARANTINE_SCHEMA.empty_table()
    row_bytes = _block(1, 1_000, rare_every=7).nbytes / 1_000
    before = pa.total_allocated_bytes()
    for b in range(blocks):
        block = _block(1 + b * n, n, rare_every=3)  # a third of each block: provider "rare"...
        block = block.set_column(block.schema.get_field_index("provider"), "provider",  # ...named per block
                                 pc.replace_substring(block["provider"], "rare", f"only-in-{b}"))
        stager.add(block, empty)
        del block
        gc.collect()
    held = min(blocks * n // 3, BUFFER_ROWS)  # each block's third is held (never FLUSH_ROWS of it)
    assert pa.total_allocated_bytes() - before < 1.5 * held * row_bytes
    rows = stager.commit()
    assert sum(rows.values()) == blocks * n
    for b in range(blocks):
        key = f"events/site=example.com/provider=only-in-{b}/date=2026-11-21/part-obj.parquet"
        lines = pq.read_table(tmp_path / "st" / key, columns=["line_number"])["line_number"].to_pylist()
        assert lines == list(range(1 + b * n, 1 + (b + 1) * n, 3))
