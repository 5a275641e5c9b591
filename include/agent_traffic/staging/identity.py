"""Event identity across versions of one object: what a new version shares with the one before.

A line's event id hashes the object's URL, its line number and its bytes (parse.py), not the
object's version: a log that grew, or was rewritten with the same lines, gives its old lines the
ids they had. When a new version is staged, the lines whose id the previous version also had are
recorded in its manifest (`carried`: from which version, which lines); the planner carries over
the events a destination acknowledged for those lines (plan.py), so only new and changed lines
are sent.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from agent_traffic import layout
from agent_traffic.ingest.storage import Store

#: Line numbers as ascending inclusive runs (first, last): how plans, acks and manifests keep lines.
LineRuns = tuple[tuple[int, int], ...]


def line_runs(lines: Iterable[int] | np.ndarray) -> LineRuns:
    """Ascending line numbers as inclusive runs: [1,2,3,7] -> ((1,3),(7,7))."""
    a = np.asarray(lines if isinstance(lines, np.ndarray) else list(lines), dtype=np.int64)
    if not len(a):
        return ()
    first, last = int(a[0]), int(a[-1])
    if last - first + 1 == len(a):  # one run, the common case (select: all, or a bot's visit)
        return ((first, last),)
    cut = np.flatnonzero(np.diff(a) != 1) + 1
    firsts = np.concatenate(([first], a[cut])).tolist()
    lasts = np.concatenate((a[cut - 1], [last])).tolist()
    return tuple(zip(firsts, lasts, strict=True))


def lines_in(runs: Iterable[Sequence[int]]) -> Iterator[int]:
    """Every line number of inclusive runs: ((1,3),(7,7)) -> 1, 2, 3, 7."""
    for a, b in runs:
        yield from range(a, b + 1)


def unchanged_lines(store: Store, day: str, previous: str, files: dict[str, int]) -> dict[str, Any] | None:
    """Lines of the version just staged (`files`) whose event the previous version (its object id)
    had too, as inclusive ranges, with their count; None when the previous version staged nothing."""
    old = store.get_json_or_none(layout.manifest_key(day, previous)) or {}
    old_keys = [k for k in old.get("files", {}) if layout.is_event_key(k)]
    new_keys = [k for k in files if layout.is_event_key(k)]
    if not old_keys or not new_keys:
        return None
    import duckdb  # here: the planner imports this module for `line_runs`, and a delivery process needs no DuckDB

    con = duckdb.connect(":memory:")
    if not store.is_local:
        con.register_filesystem(store.fs)
    try:
        def urls(keys: list[str]) -> list[str]:
            return [store.path(k) if store.is_local else store.url(k) for k in keys]

        lines = con.execute(
            "SELECT DISTINCT n.line_number FROM read_parquet(?) n SEMI JOIN read_parquet(?) o USING (event_id) "
            "ORDER BY 1", [urls(new_keys), urls(old_keys)]).fetchnumpy()["line_number"]
    finally:
        con.close()
    return {"from": previous, "count": len(lines), "lines": [list(r) for r in line_runs(np.asarray(lines))]}
