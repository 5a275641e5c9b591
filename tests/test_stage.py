"""Partition split of a block of events: every row once, in line order, under its own key."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pyarrow as pa

from agent_traffic.stage import partitions


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
