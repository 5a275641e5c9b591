"""Write one object version's classified events as Hive-partitioned Parquet (site/provider/date).

Rows stream into one local Parquet writer per partition while the object is read (a partition's
rows held until there are `FLUSH_ROWS`, at most `BUFFER_ROWS` in all), so memory stays bounded;
nothing reaches the store until `commit()`, after the whole object decompressed and parsed
cleanly. File names embed the object id, so re-staging a version overwrites its own files
and never adds duplicates.
"""

from __future__ import annotations

import contextlib
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
from agent_traffic.ingest.storage import Store
from agent_traffic.schema import QUARANTINE_SCHEMA, STAGED_SCHEMA, conform

EPOCH = date(1970, 1, 1)
PARQUET_OPTS = {"compression": "zstd", "compression_level": 1}  # level 3: 25% slower to write, same size
#: Columns of free text, near unique per row: a row group's min/max of them prunes no read (the
#: planner prunes on is_ai, is_bot and referred_by; queries filter on time, status, agent...).
NO_STATISTICS = ("event_id", "url", "path", "query", "referer", "user_agent", "client_ip")
#: Event files: no Arrow schema inside (readers see plain strings, not STAGED_SCHEMA's dictionaries),
#: no dictionary for columns that are unique per row, where it only costs time and bytes, and no
#: statistics of free text. Values go to the encoders in one batch per row group (FLUSH_ROWS and
#: more), not Parquet's default 1,024: each batch costs a call per column and encoder (the same bytes).
EVENT_PARQUET_OPTS = PARQUET_OPTS | {
    "write_batch_size": 65_536,
    "store_schema": False,
    "use_dictionary": [n for n in STAGED_SCHEMA.names if n not in ("event_id", "ts", "line_number", "bytes")],
    "write_statistics": [n for n in STAGED_SCHEMA.names if n not in NO_STATISTICS],
}


def partitions(events: pa.Table) -> Iterator[tuple[tuple[str, str, str], pa.Table]]:
    """(site, provider, UTC day) and its rows, in line order within each, partitions in the order
    of their first row. One integer key per row from the columns' dictionary indices (no text made
    per row), one stable sort, each partition taken out by its slice of the order (not one filter
    pass per partition). A block of one partition is yielded as is; any other partition owns its
    buffers, so holding it never keeps the block alive."""
    site, sites = _codes(events["site"])
    provider, providers = _codes(events["provider"])
    day = pc.cast(pc.cast(events["ts"], pa.date32()), pa.int32()).to_numpy()
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
    events = events.combine_chunks()  # once: a take from chunks concatenates them on every call
    start = 0
    for name, n in zip(names, counts.tolist(), strict=True):
        yield name, events.take(order[start:start + n])
        start += n


def _codes(values: pa.ChunkedArray) -> tuple[np.ndarray, list[str]]:
    """Each row's index into the column's distinct values, and those values (no null in them)."""
    enc = pc.dictionary_encode(values).combine_chunks()  # a dictionary column is used as it is
    return enc.indices.to_numpy(), enc.dictionary.to_pylist()


def _owned(table: pa.Table) -> pa.Table:
    """A copy that shares no buffer with `table`; dictionaries cut to the values these rows use."""
    table = table.take(pa.array(np.arange(table.num_rows)))
    for i, f in enumerate(table.schema):
        if pa.types.is_dictionary(f.type):
            table = table.set_column(i, f, pc.dictionary_encode(table.column(i).cast(f.type.value_type)))
    return table


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
        self._held: dict[str, tuple[dict, list[pa.Table], int]] = {}  # key -> writer options, rows not yet written
        self._held_rows = 0
        self.rows: dict[str, int] = {}

    def _write(self, key: str, table: pa.Table, opts: dict, *, owned: bool = False) -> None:
        """Hold `table` (conformed: its schema is the file's; `owned`: it shares no buffer with a
        larger block) for its file; write the file's held rows once there are enough of them."""
        _, parts, n = self._held.get(key, (opts, [], 0))
        parts.append(table)
        self._held[key] = (opts, parts, n + table.num_rows)
        self._held_rows += table.num_rows
        self.rows[key] = self.rows.get(key, 0) + table.num_rows
        if n + table.num_rows >= FLUSH_ROWS:
            self._flush(key)
            return
        # Held: copied out of its block, or a few rows of a rare partition would keep every
        # block they came from alive, and memory would grow with the object.
        if not owned:
            parts[-1] = _owned(table)
        while self._held_rows > BUFFER_ROWS:
            self._flush(max(self._held, key=lambda k: self._held[k][2]))

    def _flush(self, key: str) -> None:
        opts, parts, n = self._held.pop(key)
        self._held_rows -= n
        w = self._writers.get(key)
        if w is None:
            path = os.path.join(self._tmp, key.replace("/", "__"))
            w = self._writers[key] = pq.ParquetWriter(path, parts[0].schema, **opts)
        # One dictionary for the parts (they come from different blocks): Parquet writes a
        # dictionary column by its indices only while its dictionary stays the same, and otherwise
        # hashes every value again and falls back to plain encoding.
        table = pa.concat_tables(parts).unify_dictionaries() if len(parts) > 1 else parts[0]
        w.write_table(table, row_group_size=256_000)

    def add(self, events: pa.Table, quarantine: pa.Table) -> None:
        if quarantine.num_rows:
            qt = conform(quarantine, QUARANTINE_SCHEMA)
            self._write(layout.quarantine_key(self.source_date, self.object_id), qt, PARQUET_OPTS)
        if not events.num_rows:
            return
        events = conform(events, STAGED_SCHEMA)
        for (site, provider, day), part in partitions(events):
            self._write(layout.event_key(site, provider, day, self.object_id), part, EVENT_PARQUET_OPTS,
                        owned=part is not events)

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
        shutil.rmtree(self._tmp, ignore_errors=True)
