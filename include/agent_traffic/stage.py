"""Write one object version's classified events as Hive-partitioned Parquet (site/provider/date).

Rows stream into one local Parquet writer per partition while the object is read, so memory stays
bounded; nothing reaches the store until `commit()`, after the whole object decompressed and
parsed cleanly. File names embed the object id, so re-staging a version overwrites its own files
and never adds duplicates.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from agent_traffic.schema import EVENT_SCHEMA, QUARANTINE_SCHEMA, conform
from agent_traffic.storage import Store

PARQUET_OPTS = {"compression": "zstd", "compression_level": 3}


def event_key(site: str, provider: str, day: str, object_id: str) -> str:
    return f"events/site={site}/provider={provider}/date={day}/part-{object_id}.parquet"


def quarantine_key(day: str, object_id: str) -> str:
    return f"quarantine/date={day}/part-{object_id}.parquet"


class ObjectStager:
    """Collects one object's output in local files; `commit()` puts them in the store."""

    def __init__(self, store: Store, object_id: str, source_date: str) -> None:
        self.store = store
        self.object_id = object_id
        self.source_date = source_date
        self._tmp = tempfile.mkdtemp(prefix=f"stage-{object_id}-")
        self._writers: dict[str, pq.ParquetWriter] = {}
        self.rows: dict[str, int] = {}

    def _write(self, key: str, table: pa.Table, schema: pa.Schema) -> None:
        w = self._writers.get(key)
        if w is None:
            path = os.path.join(self._tmp, key.replace("/", "__"))
            w = self._writers[key] = pq.ParquetWriter(path, schema, **PARQUET_OPTS)
        w.write_table(table, row_group_size=256_000)
        self.rows[key] = self.rows.get(key, 0) + table.num_rows

    def add(self, events: pa.Table, quarantine: pa.Table) -> None:
        if quarantine.num_rows:
            qt = conform(quarantine, QUARANTINE_SCHEMA)
            self._write(quarantine_key(self.source_date, self.object_id), qt, QUARANTINE_SCHEMA)
        if not events.num_rows:
            return
        events = conform(events, EVENT_SCHEMA)
        days = pc.strftime(events["ts"], format="%Y-%m-%d")
        keyed = events.append_column("_day", days)
        groups = keyed.group_by(["site", "provider", "_day"]).aggregate([]).to_pylist()
        for g in groups:
            mask = pc.and_(
                pc.and_(pc.equal(keyed["site"], g["site"]), pc.equal(keyed["provider"], g["provider"])),
                pc.equal(keyed["_day"], g["_day"]),
            )
            part = events.filter(mask)
            self._write(event_key(g["site"], g["provider"], g["_day"], self.object_id), part, EVENT_SCHEMA)

    def commit(self) -> dict[str, int]:
        """Close the files and put each in the store; returns {key: rows}."""
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
        shutil.rmtree(self._tmp, ignore_errors=True)
