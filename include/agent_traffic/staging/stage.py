"""Write one object version's classified events as Hive-partitioned Parquet (site/provider/date).

Rows stream into one local Parquet writer per partition while the object is read (a partition's
rows held until there are `FLUSH_ROWS`, at most `BUFFER_ROWS` in all), so memory stays bounded;
nothing reaches the store until `commit()`, after the whole object decompressed and parsed
cleanly. File names embed the object id, so re-staging a version overwrites its own files
and never adds duplicates.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import tempfile
from collections.abc import Iterator
from datetime import date, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from agent_traffic import layout
from agent_traffic.arrow_values import from_numpy, to_numpy
from agent_traffic.ingest.storage import Store
from agent_traffic.schema import QUARANTINE_SCHEMA, STAGED_SCHEMA, conform

EPOCH = date(1970, 1, 1)
PARQUET_OPTS = {"compression": "zstd", "compression_level": 1}  # level 3: 25% slower to write, same size
#: Columns of free text, near unique per row: a row group's min/max of them prunes no read (the
#: planner prunes on is_ai, is_bot and referred_by; queries filter on time, status, agent...).
NO_STATISTICS = ("event_id", "url", "path", "query", "referer", "user_agent", "client_ip")
#: Columns of a few values per file (the partition's keys, the object, the classifier's answers):
#: their pages are a few bytes of dictionary indices, and zstd's setup per page (Arrow makes a
#: context per call) cost more than it saved (0.07 s of a day's 1.2 s of writing, for 0.05 MB).
UNCOMPRESSED = ("site", "provider", "host", "source_object", "method", "purpose", "verification", "scrunch_type",
                "cloudflare_category", "referred_by")
#: Event files: no Arrow schema inside (readers see plain strings, not STAGED_SCHEMA's dictionaries),
#: no dictionary for columns that are unique per row, where it only costs time and bytes, and no
#: statistics of free text. Values go to the encoders in one batch per row group (FLUSH_ROWS and
#: more), not Parquet's default 1,024: each batch costs a call per column and encoder (the same bytes).
EVENT_PARQUET_OPTS = {
    "compression": {n: "none" if n in UNCOMPRESSED else "zstd" for n in STAGED_SCHEMA.names},
    "compression_level": {n: PARQUET_OPTS["compression_level"] for n in STAGED_SCHEMA.names if n not in UNCOMPRESSED},
    "write_batch_size": 65_536,
    "store_schema": False,
    "use_dictionary": [n for n in STAGED_SCHEMA.names if n not in ("event_id", "ts", "line_number", "bytes")],
    "write_statistics": [n for n in STAGED_SCHEMA.names if n not in NO_STATISTICS],
}


def partitions(events: pa.Table) -> Iterator[tuple[tuple[str, str, str], pa.Table]]:
    """(site, provider, UTC day) and its rows, in line order within each, partitions in the order
    of their first row. One integer key per row from the columns' dictionary indices (no text made
    per row), one stable sort, one take of the block in that order, and each partition a slice of
    it: one gather of the block, not one per partition (a take costs per call and per column,
    and a block has tens of partitions). A block of one partition is yielded as is. The slices
    share the sorted copy's buffers: a holder copies what it keeps (`ObjectStager` does)."""
    site, sites = _codes(events["site"])
    provider, providers = _codes(events["provider"])
    day = to_numpy(pc.cast(pc.cast(events["ts"], pa.date32()), pa.int32()))
    first_day = int(day.min())
    days = int(day.max()) - first_day + 1
    key = (site.astype(np.int64) * len(providers) + provider) * days + (day - first_day)
    uniq, first, code = np.unique(key, return_index=True, return_inverse=True)
    by_first = np.argsort(first)  # partitions in the order their first rows come
    rank = np.empty_like(by_first)
    rank[by_first] = np.arange(len(by_first))
    names = [(sites[s], providers[p], (EPOCH + timedelta(days=first_day + int(d))).isoformat())
             for s, p, d in zip(*np.unravel_index(uniq[by_first], (len(sites), len(providers), days)), strict=True)]
    if len(names) == 1:
        yield names[0], events
        return
    code = rank[code.reshape(-1)]
    order = np.argsort(code, kind="stable")  # stable: line order kept inside each partition
    counts = np.bincount(code, minlength=len(names))
    block = events.take(from_numpy(order))  # from chunks: they are concatenated once, inside this one take
    start = 0
    for name, n in zip(names, counts.tolist(), strict=True):
        yield name, block.slice(start, n)
        start += n


def _codes(values: pa.ChunkedArray) -> tuple[np.ndarray, list[str]]:
    """Each row's index into the column's distinct values, and those values (no null in them)."""
    enc = pc.dictionary_encode(values).combine_chunks()  # a dictionary column is used as it is
    return to_numpy(enc.indices), enc.dictionary.to_pylist()


def _owned(table: pa.Table) -> pa.Table:
    """A copy that shares no buffer with `table` but its dictionaries (the classifier's few answers).
    Chunks (tables put together) are concatenated, a copy already; one chunk is taken whole."""
    if table.num_columns and table.column(0).num_chunks > 1:
        return table.combine_chunks()
    return table.take(from_numpy(np.arange(table.num_rows)))


#: Rows of one partition written at once, and rows held across partitions before the largest is
#: written: a block spread over many partitions (a CDN's many hosts and agents) would otherwise be
#: written in slivers of a few hundred rows, each a row group; that doubled the write time.
FLUSH_ROWS = 32_768
BUFFER_ROWS = 65_536


class ObjectStager:
    """Collects one object's output in local files; `commit()` puts them in the store."""

    def __init__(self, store: Store, object_id: str, source_date: str) -> None:
        self.store = store
        self.object_id = object_id
        self.source_date = source_date
        self._tmp = tempfile.mkdtemp(prefix=f"stage-{object_id}-")
        self._writers: dict[str, pq.ParquetWriter] = {}
        # key -> writer options, rows not yet written (each a slice of a copy in `_copies`), their count
        self._held: dict[str, tuple[dict, list[tuple[pa.Table, int]], int]] = {}
        self._held_rows = 0
        # number -> [rows of a copy that held rows are slices of, its rows still held]: a copy
        # stays in memory while any of its rows is held
        self._copies: dict[int, list[int]] = {}
        self._numbers = itertools.count()
        self._copied_rows = 0
        self.rows: dict[str, int] = {}

    def _hold(self, keep: list[tuple[str, pa.Table]], opts: dict, block_rows: int = 0) -> None:
        """Hold these (key, rows), slices of one block of `block_rows` rows (0: not ours to hold).
        A quarter of the block or more: the slice itself (its file soon has FLUSH_ROWS and frees
        the block). The rest: copied out, in one take for all (a take per partition costs per
        call), or a few rows of a rare partition would keep every block they came from alive, and
        memory would grow with the object."""
        big = {k for k, t in keep if block_rows and t.num_rows * 4 >= block_rows}
        if big:
            self._keep([(k, t) for k, t in keep if k in big], opts, block_rows)
        if small := [(k, t) for k, t in keep if k not in big]:
            copy = _owned(pa.concat_tables([t for _, t in small]))
            starts = itertools.accumulate((t.num_rows for _, t in small), initial=0)
            self._keep([(k, copy.slice(i, t.num_rows)) for (k, t), i in zip(small, starts, strict=False)], opts,
                       copy.num_rows)

    def _keep(self, keep: list[tuple[str, pa.Table]], opts: dict, block_rows: int) -> None:
        """Hold slices of one table of `block_rows` rows, which stays in memory while any is held."""
        number, rows = next(self._numbers), sum(t.num_rows for _, t in keep)
        self._copies[number] = [block_rows, rows]
        self._copied_rows += block_rows
        self._held_rows += rows
        for key, t in keep:
            _, parts, n = self._held.get(key, (opts, [], 0))
            parts.append((t, number))
            self._held[key] = (opts, parts, n + t.num_rows)

    def _flush(self, key: str, more: pa.Table | None = None) -> None:
        """Write the key's held rows (and `more`, rows of the same file) as one row group."""
        opts, held, n = self._held.pop(key)
        self._held_rows -= n
        for t, copy in held:
            live = self._copies[copy]
            live[1] -= t.num_rows
            if not live[1]:
                self._copied_rows -= live[0]
                del self._copies[copy]
        parts = [t for t, _ in held] + ([more] if more is not None else [])
        w = self._writers.get(key)
        if w is None:
            path = os.path.join(self._tmp, key.replace("/", "__"))
            w = self._writers[key] = pq.ParquetWriter(path, parts[0].schema, **opts)
        # One dictionary for the parts (they come from different blocks): Parquet writes a
        # dictionary column by its indices only while its dictionary stays the same, and otherwise
        # hashes every value again and falls back to plain encoding.
        table = pa.concat_tables(parts).unify_dictionaries() if len(parts) > 1 else parts[0]
        w.write_table(table, row_group_size=256_000)

    def _written(self, key: str, part: pa.Table, opts: dict) -> bool:
        """Count the rows; write them with the key's held rows once there are FLUSH_ROWS (True)."""
        self.rows[key] = self.rows.get(key, 0) + part.num_rows
        if self._held.get(key, (opts, [], 0))[2] + part.num_rows < FLUSH_ROWS:
            return False
        self._held.setdefault(key, (opts, [], 0))
        self._flush(key, part)
        return True

    def _bound(self) -> None:
        """At most BUFFER_ROWS rows held (the largest file's written first); past BUFFER_ROWS
        rows kept in memory for them, the held rows of tables mostly written already are copied
        out once more, in one take, so memory stays within twice the rows held."""
        while self._held_rows > BUFFER_ROWS:
            self._flush(max(self._held, key=lambda k: self._held[k][2]))
        if self._copied_rows <= BUFFER_ROWS:
            return
        sparse = {i for i, (rows, live) in self._copies.items() if live * 2 < rows}
        for opts in {id(o): o for o, _, _ in self._held.values()}.values():
            where = [(key, j, t) for key, (o, parts, _) in self._held.items() if o is opts
                     for j, (t, i) in enumerate(parts) if i in sparse]
            if not where:
                continue
            copy, number = _owned(pa.concat_tables([t for _, _, t in where])), next(self._numbers)
            self._copies[number] = [copy.num_rows, copy.num_rows]
            self._copied_rows += copy.num_rows
            for (key, j, t), start in zip(where, itertools.accumulate((t.num_rows for _, _, t in where), initial=0),
                                          strict=False):
                self._held[key][1][j] = (copy.slice(start, t.num_rows), number)  # in place: line order kept
        for i in sparse:
            self._copied_rows -= self._copies.pop(i)[0]

    def add(self, events: pa.Table, quarantine: pa.Table) -> None:
        if quarantine.num_rows:
            key, qt = layout.quarantine_key(self.source_date, self.object_id), conform(quarantine, QUARANTINE_SCHEMA)
            if not self._written(key, qt, PARQUET_OPTS):
                self._hold([(key, qt)], PARQUET_OPTS)
        if events.num_rows:
            events = conform(events, STAGED_SCHEMA)
            keep = [(key, part) for (site, provider, day), part in partitions(events)
                    if not self._written(key := layout.event_key(site, provider, day, self.object_id), part,
                                         EVENT_PARQUET_OPTS)]
            if keep:  # slices of a sorted copy of the block, or the block itself (not ours to hold)
                self._hold(keep, EVENT_PARQUET_OPTS, 0 if keep[0][1] is events else events.num_rows)
        self._bound()

    def commit(self) -> dict[str, int]:
        """Close the files and put each in the store; returns {key: rows}."""
        for key in list(self._held):
            self._flush(key)
        for w in self._writers.values():
            w.close()
        for key in self._writers:
            self.store.put_file(key, os.path.join(self._tmp, key.replace("/", "__")))
        self.abort()
        return dict(self.rows)

    def abort(self) -> None:
        for w in self._writers.values():
            with contextlib.suppress(Exception):  # already failing; only cleaning up
                w.close()
        self._writers.clear()
        self._held.clear()
        self._copies.clear()
        shutil.rmtree(self._tmp, ignore_errors=True)
