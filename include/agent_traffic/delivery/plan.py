"""Plan deliveries: staged events -> deterministic chunks, written as a load package.

Per (destination, site, object version) every staged event gets exactly one outcome: not selected
(the destination's `select`), not eligible (the vendor cannot take it: an agent HitKeep does not
know, an event over the request size limit), too old (receive-time vendors, older than the
destination's max age), or a place in a chunk. The chosen events are serialized in line order and
cut by the vendor's limits, so a resumed run rebuilds byte-identical chunks. Chunk id = hash of
destination, site, object id, line span and body, so an ack never covers other bytes.

The plan is written once per object version and configuration (its fingerprint). When the
configuration changes (a new batch size, `send_older_events` switched on), the object is planned
again, but chunks already acknowledged are kept as they are and their lines are left out of the
new chunks: a delivered event is never sent again because a setting changed.

The chunks live in the ledger until acknowledged (dlt's load packages are the model), all of an
object's in one pack file, each at the offset its plan records: the keys, the records and the
tree are `ledger.py`'s.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import xxhash

from agent_traffic import layout
from agent_traffic.arrow_values import BOOL, from_numpy, instant, lean_memory_pool, scalar, to_numpy
from agent_traffic.config import Config, Destination, Site
from agent_traffic.delivery.ledger import Chunk, Ledger, ObjectPlan, chunk_parts, lease_unit
from agent_traffic.delivery.vendors import json_columns, vendor
from agent_traffic.ingest.discover import STAGED, read_manifests
from agent_traffic.ingest.storage import Store
from agent_traffic.redact import redact_url
from agent_traffic.staging.holds import held_objects, held_partitions
from agent_traffic.staging.identity import line_runs, lines_in

PLAN_VERSION = 4  # 3: chunks in one pack per object; 4: bodies hashed by XXH3-128
#: Objects planned at once. From local storage planning is CPU-bound, and a second thread cost more
#: CPU (0.29 s against 0.25 for 400,000 events) and memory (a sender's peak 177 MB against 147)
#: for the wall time it saved (0.08 s): on a busy worker the other core is another task's. Reads
#: from an object store wait on the network, which a second thread overlaps.
PLAN_THREADS_LOCAL, PLAN_THREADS_REMOTE = 1, 2
ROWS_PER_BATCH = 8_192  # rows serialized at a time: a window's JSON stays in cache and in reused pages
SEGMENT_ROWS = 131_072  # events whose fields are computed at once (`_Segment`)

NO = scalar(False, BOOL)  # a missing flag: not selected

SELECT_REASONS = {
    "ai": "not an AI agent",
    "ai_and_referred": "neither an AI agent nor referred by an AI assistant",
    "automated": "not automated traffic",
}


def select_mask(table: pa.Table, selection: str) -> pa.ChunkedArray | None:
    """Rows a destination receives: ai (default), ai_and_referred, automated (every bot), all.

    `referred_by` (the AI assistant a human visit came from) may be absent from older staged
    files: absent means no visit was referred.
    """
    if selection == "ai":
        return pc.fill_null(table["is_ai"], NO)
    if selection == "ai_and_referred":
        ai = pc.fill_null(table["is_ai"], NO)
        if "referred_by" not in table.column_names:
            return ai
        referred = pc.fill_null(pc.not_equal(table["referred_by"], scalar("")), NO)
        return pc.or_(ai, referred)
    if selection == "automated":
        return pc.fill_null(table["is_bot"], NO)
    return None


def not_selected_reason(selection: str) -> str:
    return SELECT_REASONS.get(selection, "")


def age_cutoff(dest: Destination, now: datetime) -> datetime | None:
    """Events before this are too old for the destination; None when age does not matter."""
    if not vendor(dest.vendor).stamps_receive_time or dest.send_older_events:
        return None
    return now - timedelta(hours=dest.max_age_hours)


#: The staged columns the planner reads for every vendor (order, age); with the selection's and
#: the vendor's own (`plan_columns`), the only ones decoded: the others (ids, classification
#: detail, what another vendor sends) are most of a staged file.
PLAN_COLUMNS = ("ts", "line_number")
#: The columns `select_mask` reads, per selection ("all" reads none)
SELECT_COLUMNS = {"ai": ("is_ai",), "ai_and_referred": ("is_ai", "referred_by"), "automated": ("is_bot",)}


def plan_columns(vendor_name: str, selection: str | None = None) -> list[str]:
    """The columns kept once events are selected; with `selection`, the columns read (its own too)."""
    v = vendor(vendor_name)
    chosen = SELECT_COLUMNS.get(selection, ()) if selection else ()
    return list(dict.fromkeys((*PLAN_COLUMNS, *chosen, *v.columns, *v.reads)))


def _none_selected(rg: pq.RowGroupMetaData, columns: dict[str, int], selection: str) -> bool:
    """True when a row group's statistics prove `select_mask` keeps none of its rows (a human
    traffic part, for `ai`), so it need not be read."""

    def never(name: str, value: Any) -> bool:
        """Every row of the column is null or `value` (absent: null everywhere)."""
        if name not in columns:
            return True
        st = rg.column(columns[name]).statistics
        if st is None:
            return False
        if st.null_count == rg.num_rows:
            return True
        return st.has_min_max and st.min == value and st.max == value

    if selection == "ai":
        return never("is_ai", False)
    if selection == "ai_and_referred":
        return never("is_ai", False) and never("referred_by", "")
    if selection == "automated":
        return never("is_bot", False)
    return False


def read_object_events(store: Store, keys: Sequence[str],
                       keep: Callable[[pa.Table], pa.Table] | None = None, *, columns: Sequence[str] | None = None,
                       selection: str | None = None, skipped: Callable[[int], None] | None = None,
                       dictionary: Sequence[str] = ()) -> pa.Table | None:
    """One object's staged events for a site: `columns` of them (those the files have), or every
    column. Up to `SEGMENT_ROWS` events come file by file (the files are its per-provider parts,
    each in line order: the planner picks the rows in line order as it writes them); more come
    in line order, sorted once, so the planner can work on them a segment at a time.

    `keep` filters each file as it is read, so only the rows a destination takes are held (for
    AI agents, a sixth of a typical object): planning two large objects at once had needed
    1.7 GB with every row held. With `selection`, row groups whose statistics show that it
    selects none of their rows are not read at all: their row count goes to `skipped`. The
    `dictionary` columns come as Arrow dictionaries (`Vendor.dictionary_columns`)."""
    tables = []
    for k in keys:
        with store.fs.open(store.path(k), "rb") as f:
            meta = pq.read_metadata(f)  # a file of an older schema may lack a dictionary column
            present = set(meta.schema.names)
            pf = pq.ParquetFile(f, metadata=meta, read_dictionary=[c for c in dictionary if c in present] or None)
            groups = list(range(pf.num_row_groups))
            if selection is not None and skipped is not None:
                paths = {pf.metadata.schema.column(i).path: i for i in range(pf.metadata.num_columns)}
                none = [i for i in groups if _none_selected(pf.metadata.row_group(i), paths, selection)]
                if none:
                    skipped(sum(pf.metadata.row_group(i).num_rows for i in none))
                    groups = sorted(set(groups) - set(none))
                    if not groups:
                        continue
            t = pf.read_row_groups(groups, columns=None if columns is None else [c for c in columns if c in present],
                                   use_threads=False)  # Arrow's thread pool costs CPU here, not time
        tables.append(keep(t) if keep is not None else t)
    if not tables:
        return None
    t = pa.concat_tables(tables, promote_options="default")
    return t if t.num_rows <= SEGMENT_ROWS else t.sort_by("line_number")


def build_chunks(
    table: pa.Table, site: Site, dest: Destination, object_id: str, not_eligible: Counter[str],
    *, start_index: int = 0,
) -> Iterator[Chunk]:
    """The chunks of `_cut_chunks`, each body its own bytes (for tools and tests: the planner packs
    the views as they are)."""
    for ch in _cut_chunks(table, site, dest, object_id, not_eligible, start_index=start_index):
        yield replace(ch, body=bytes(ch.body))


def _cut_chunks(
    table: pa.Table, site: Site, dest: Destination, object_id: str, not_eligible: Counter[str],
    *, start_index: int = 0,
) -> Iterator[Chunk]:
    """Serialize in line order and cut by the vendor's byte and event limits, one chunk at a time.

    An event that alone exceeds the vendor's request size cannot be sent at all: it is counted in
    `not_eligible` with the limit, never dropped silently and never a crash.

    The vendor's column expressions (no Python object per event) run over a segment of rows
    (`_Segment`); the events are serialized a window at a time in line order, each followed by
    the vendor's one-byte separator, so a chunk's events are one contiguous slice of the window's
    bytes. Cuts are greedy, as if events were added one by one: a chunk closes when the next
    event would pass the byte or the event limit. The last chunk of a window is held back and
    rebuilt with the next window, so the cuts do not depend on the window size. A chunk's body is
    a view of the window's bytes: hashed and packed from there.
    """
    v = vendor(dest.vendor)
    max_bytes, max_events = v.limits(dest)
    too_big = f"larger than {v.title}'s {max_bytes - 1:,}-byte request limit"
    sep = v.separator.decode()
    index, n = start_index, table.num_rows
    table, order = _vendor_rows(table, v.columns)
    pos, size = 0, ROWS_PER_BATCH
    seg = _Segment.of(table, order, 0, size, (v, site, dest, sep))
    while pos < n:
        if pos + size > seg.stop and seg.stop < n:  # the window runs past the segment: the next starts here
            seg = _Segment.of(table, order, pos, size, (v, site, dest, sep))
        window = seg.rows[pos - seg.start : pos + size - seg.start]  # rows of the segment's table, in line order
        last_window = pos + len(window) >= n
        lines = seg.write(window)
        ends = np.frombuffer(lines.buffers()[1], np.int32)[lines.offset : lines.offset + len(lines) + 1]
        ends = ends.astype(np.int64)
        data = lines.buffers()[2]
        sizes = np.diff(ends)
        fits = sizes <= max_bytes
        rows = np.flatnonzero(fits)  # window rows that can be sent, in line order
        cum = np.concatenate(([0], np.cumsum(sizes[rows])))
        line_numbers, ts_us = seg.lines[window], seg.ts_us[window]
        i, consumed = 0, len(window)
        while i < len(rows):
            j = min(int(np.searchsorted(cum, cum[i] + max_bytes, side="right")) - 1, i + max_events)
            if j == len(rows) and not last_window:  # may grow with the next window's rows
                consumed = int(rows[i])
                break
            picked = rows[i:j]
            body, ctype = v.body(_runs(data, ends, picked), len(picked))
            yield _chunk(dest, site, object_id, index, body, ctype, line_numbers[picked], ts_us[picked])
            index += 1
            i = j
        if consumed == 0:  # one chunk longer than the window: read a larger one
            size *= 2
            continue
        too_many = int((~fits[:consumed]).sum())
        if too_many:
            not_eligible[too_big] += too_many
        pos, size = pos + consumed, ROWS_PER_BATCH


def _vendor_rows(table: pa.Table, columns: Sequence[str]) -> tuple[pa.Table, np.ndarray | None]:
    """The vendor's columns, line numbers and `ts_us`, and the rows in line order; None for a large
    object, which comes in line order (sorted here if it does not: `read_object_events` sorts it)."""
    ts = table["ts"]
    table = table.select([c for c in dict.fromkeys((*columns, "line_number")) if c in table.column_names])
    table = table.append_column("ts_us", pc.cast(ts, pa.int64()))
    lines = to_numpy(table["line_number"])
    if table.num_rows <= SEGMENT_ROWS:
        return table, np.argsort(lines, kind="stable")
    if (lines[1:] >= lines[:-1]).all():
        return table, None
    return table.take(from_numpy(np.argsort(lines, kind="stable"))), None


@dataclass
class _Segment:
    """Positions [start, stop) of an object's events in line order, with the vendor's fields
    computed over them. An object of up to `SEGMENT_ROWS` events is one segment over its table as
    read, its rows picked in line order as they are written (no sort and gather of every column);
    a larger one is put in line order once and taken a slice at a time, so the fields' arrays (a
    nested object per event for Known Agents) take memory for a segment, not the whole object."""

    start: int
    stop: int
    rows: np.ndarray  # per position from `start`, its row in the segment's table
    write: Callable[[np.ndarray | None], pa.Array]
    lines: np.ndarray  # line numbers of the segment's table
    ts_us: np.ndarray

    @classmethod
    def of(cls, table: pa.Table, order: np.ndarray | None, start: int, window: int,
           how: tuple[Any, Site, Destination, str]) -> _Segment:
        """From position `start`; `order`: the table's rows in line order (None: it is in line order)."""
        v, site, dest, sep = how
        if order is not None:
            part, rows, stop = table, order, table.num_rows
        else:
            stop = min(table.num_rows, start + max(SEGMENT_ROWS, window))
            part, rows = table.slice(start, stop - start), np.arange(stop - start)
        write = json_columns.writer(v.fields(part, site, dest), part.num_rows, sep)
        return cls(start, stop, rows, write, to_numpy(part["line_number"]), to_numpy(part["ts_us"]))


def _runs(data: pa.Buffer, ends: np.ndarray, rows: np.ndarray) -> bytes | memoryview:
    """The bytes of `rows` (ascending): a view of one slice when they are consecutive, as they
    nearly always are; else joined."""
    first, last = int(rows[0]), int(rows[-1])
    view = memoryview(data)
    if last - first + 1 == len(rows):
        return view[int(ends[first]) : int(ends[last + 1])]
    return b"".join(view[int(ends[r]) : int(ends[r + 1])] for r in rows)


def _chunk(dest: Destination, site: Site, object_id: str, index: int, body: bytes | memoryview, ctype: str,
           line_numbers: np.ndarray, ts_us: np.ndarray) -> Chunk:
    """A chunk and its id: a hash of where it belongs, its line span and its body."""
    first, last, count = int(line_numbers[0]), int(line_numbers[-1]), len(line_numbers)
    cid = chunk_id(dest.name, site.name, object_id, first, last, count, body)
    return Chunk(cid, index, object_id, count, first, last, int(ts_us.min()) / 1e6, ctype, body,
                 line_runs(line_numbers))


def chunk_id(dest: str, site: str, object_id: str, first: int, last: int, count: int, body: bytes | memoryview) -> str:
    """The body by XXH3-128 (a torn or damaged pack changes it; SHA-256 cost 0.6 ms a megabyte, a
    tenth of planning, and again in every delivery task reading a pack another process wrote)."""
    digest = xxhash.xxh3_128_hexdigest(body)
    key = f"{dest}|{site}|{object_id}|{first}|{last}|{count}|{digest}"
    return hashlib.sha256(key.encode()).hexdigest()[:24]


def chunk_intact(ch: Chunk, dest: str, site: str) -> bool:
    """The pack holds the bytes the chunk was planned with (its id hashes them): a torn or
    damaged pack is detected, so packs need no fsync."""
    return chunk_id(dest, site, ch.object_id, ch.first_line, ch.last_line, ch.events, ch.body) == ch.chunk_id


def _fingerprint(dest: Destination, manifest: dict[str, Any]) -> str:
    parts = [
        PLAN_VERSION,
        dest.vendor,
        dest.site_id,
        dest.select,
        dest.ip_policy,
        dest.max_batch_bytes,
        dest.max_batch_events,
        dest.max_age_hours,
        dest.send_older_events,
        dest.eligible_user_agents,
        dest.send_sdk_fields,
        sorted(manifest.get("files", {}).items()),
    ]
    return hashlib.sha256(orjson.dumps(parts, default=str)).hexdigest()[:16]


def _delivered_before(
    ledger: Ledger, previous: dict[str, Any] | None, acked: set[str]
) -> tuple[list[dict[str, Any]], set[int]]:
    """The previous plan's acknowledged chunks, and the lines they carried.

    An ack written before acks recorded their lines cannot be matched to rows: its chunk is not
    kept and its events are planned again (a resend, never a loss).
    """
    kept: list[dict[str, Any]] = []
    lines: set[int] = set()
    for c in (previous or {}).get("chunks", []):
        if c["chunk_id"] not in acked:
            continue
        ack = ledger.read_ack(c["chunk_id"]) or {}
        if not ack.get("lines"):
            continue
        kept.append({k: v for k, v in c.items() if k not in ("offset", "length")})  # not in the new pack
        lines.update(lines_in(ack["lines"]))
    return kept, lines


def _carried_over(ledger: Ledger, carried: dict[str, Any] | None, acked: set[str]) -> np.ndarray:
    """Lines (ascending) of a new object version whose events the destination acknowledged for
    the version before it (or carried over into it), with the same identity (identity.py): sent
    already. Numpy, not sets: a grown 10M-line log carries 10M lines."""
    none = np.zeros(0, np.int64)
    if not carried or not carried.get("lines"):
        return none
    prev = ledger.read_plan(carried["from"])
    if prev is None:
        return none
    sent = list(prev.get("carried_lines") or ())
    for c in prev.get("chunks", []):
        if c["chunk_id"] in acked:
            sent += (ledger.read_ack(c["chunk_id"]) or {}).get("lines") or ()
    _drop_superseded(ledger, prev, acked)  # its unacknowledged chunks are planned anew
    return np.intersect1d(_lines_array(sent), _lines_array(carried["lines"]))


def _lines_array(ranges: Iterable[Sequence[int]]) -> np.ndarray:
    parts = [np.arange(a, b + 1, dtype=np.int64) for a, b in ranges]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def _drop_superseded(ledger: Ledger, previous: dict[str, Any] | None, acked: set[str]) -> None:
    """Remove a previous plan's pack and the records of its unacknowledged chunks: the new plan
    replaces them."""
    if previous and previous.get("pack"):
        ledger.delete_pack(previous["pack"])
    for c in (previous or {}).get("chunks", []):
        if c["chunk_id"] not in acked:
            ledger.forget(c["chunk_id"])


@dataclass
class _Unsent:
    """Per staged file as it is read: leaves out events delivered before (acknowledged for an
    earlier version: never sent again), then those the destination does not select."""

    carry_lines: pa.Array | None
    done_lines: pa.Array | None
    select: str
    columns: list[str]  # kept once selected: the selection's own columns go, unless the vendor sends them
    counts: Counter[str] = field(default_factory=Counter)

    def keep(self, t: pa.Table) -> pa.Table:
        self.counts["read"] += t.num_rows
        if self.carry_lines is not None:
            same = pc.is_in(t["line_number"], value_set=self.carry_lines)
            self.counts["carried"] += pc.sum(same).as_py() or 0
            t = t.filter(pc.invert(same))
        if self.done_lines is not None:
            t = t.filter(pc.invert(pc.is_in(t["line_number"], value_set=self.done_lines)))
        self.counts["open"] += t.num_rows
        mask = select_mask(t, self.select)
        t = t if mask is None else t.filter(mask)
        return t.select([c for c in self.columns if c in t.column_names])

    def skipped(self, rows: int) -> None:
        """Row groups the destination selects none of, by their statistics: read and not selected."""
        self.counts["read"] += rows
        self.counts["open"] += rows

    @property
    def selection(self) -> str | None:
        """Skipping by statistics only when no earlier plan delivered lines: those are left out
        of `open`, which a skipped row group could not tell."""
        return self.select if self.done_lines is None and self.carry_lines is None else None


def _packed(chunks: Iterable[Chunk], acked: set[str], metas: list[dict[str, Any]]) -> Iterator[bytes | memoryview]:
    """The pack's bytes, in pieces written as they are: the chunks not acknowledged yet, each
    meta given its offset and length."""
    offset = 0
    for ch in chunks:
        meta = ch.meta()
        if ch.chunk_id not in acked:
            head, body = chunk_parts(ch)
            length = len(head) + len(body)
            meta.update(offset=offset, length=length)
            offset += length
            yield head
            yield body
        metas.append(meta)


@dataclass
class _Outcomes:
    """The plan's counts of events not put in a chunk, per reason."""

    not_selected: Counter[str] = field(default_factory=Counter)
    not_eligible: Counter[str] = field(default_factory=Counter)
    too_old: int = 0


def _left_out(table: pa.Table, dest: Destination, cutoff: datetime | None, out: _Outcomes) -> pa.Table:
    """The events the vendor can take and that are not too old; the others counted in `out`."""
    reasons = vendor(dest.vendor).ineligible(table, dest) if table.num_rows else None
    if reasons is not None:
        for item in pc.value_counts(pc.drop_null(reasons)).to_pylist():
            out.not_eligible[item["values"]] += item["counts"]
        table = table.filter(pc.is_null(reasons))
    if cutoff is not None and table.num_rows:
        old = pc.less(table["ts"], instant(cutoff, table.schema.field("ts").type))
        out.too_old = pc.sum(old).as_py() or 0
        table = table.filter(pc.invert(old))
    return table


def _write_pack(ledger: Ledger, table: pa.Table, site: Site, dest: Destination, oid: str, out: _Outcomes,
                metas: list[dict[str, Any]], acked: set[str]) -> str | None:
    """Cut the events into chunks after the kept ones; pack the unacknowledged ones. The pack's
    name, or None when every chunk is acknowledged already (or there is none)."""
    start = 1 + max((c["index"] for c in metas), default=-1)  # kept chunks keep their numbers
    parts = _packed(_cut_chunks(table, site, dest, oid, out.not_eligible, start_index=start), acked, metas)
    first = next(parts, None)
    if first is None:
        return None
    pack = ledger.new_pack(oid)
    ledger.write_pack(pack, itertools.chain((first,), parts))
    return pack


def plan_object(
    store: Store, site: Site, dest: Destination, manifest: dict[str, Any], *, now: datetime | None = None,
    acked: set[str] | None = None,
) -> ObjectPlan:
    """Plan (or re-read the plan of) one object for one destination; packs the unacked chunks.

    `acked`: the destination's acknowledged chunk ids for the date, when the caller has them.
    """
    now = now or datetime.now(UTC)
    lean_memory_pool()  # as parsing: in a delivery-only process, mimalloc's first pages cost planning a third more CPU
    oid = manifest["object_id"]
    ledger = Ledger(store, dest.name, site.name, manifest["date"])
    fp = _fingerprint(dest, manifest)
    existing = ledger.read_plan(oid)
    if existing and existing.get("fingerprint") == fp:
        return ObjectPlan(**existing)
    acked = set(ledger.acked_ids()) if acked is None else acked
    metas, delivered = _delivered_before(ledger, existing, acked)
    _drop_superseded(ledger, existing, acked)
    carry = _carried_over(ledger, manifest.get("carried"), acked)
    unsent = _Unsent(from_numpy(carry) if len(carry) else None,
                     from_numpy(np.array(sorted(delivered), np.int64)) if delivered else None, dest.select,
                     plan_columns(dest.vendor))
    keys = [k for k in manifest.get("files", {}) if k.startswith(layout.events_prefix(site.name))]
    table = read_object_events(store, keys, unsent.keep, columns=plan_columns(dest.vendor, dest.select),
                               selection=unsent.selection, skipped=unsent.skipped,
                               dictionary=vendor(dest.vendor).dictionary_columns)
    out = _Outcomes()
    cutoff = age_cutoff(dest, now)
    pack: str | None = None
    unselected = unsent.counts["open"] - (table.num_rows if table is not None else 0)
    if unselected:  # filtered out per file, or in row groups never read
        out.not_selected[not_selected_reason(dest.select)] += unselected
    if table is not None and unsent.counts["read"]:
        table = _left_out(table, dest, cutoff, out)
        pack = _write_pack(ledger, table, site, dest, oid, out, metas, acked)
    plan = ObjectPlan(
        destination=dest.name, site=site.name, date=manifest["date"], object_id=oid,
        source_object=redact_url(manifest["url"]), fingerprint=fp, events_total=unsent.counts["read"],
        not_selected=dict(out.not_selected), chunks=metas, not_eligible=dict(out.not_eligible),
        too_old=out.too_old, too_old_before=cutoff.isoformat(timespec="seconds") if cutoff else None,
        planned_at=now.isoformat(timespec="seconds"), pack=pack, carried=unsent.counts["carried"],
        carried_lines=[list(r) for r in line_runs(carry)],
    )
    return _commit(ledger, plan, replace=existing is not None)


def _commit(ledger: Ledger, plan: ObjectPlan, *, replace: bool) -> ObjectPlan:
    """Write the plan: it replaces the object's plan when a setting changed; else it is the first,
    unless another worker planned this object meanwhile (runs side by side). Then that plan is the
    one everyone reads, so ours and its pack go (a pack no plan names would never be removed)."""
    if ledger.write_plan(plan, replace=replace):
        return plan
    if plan.pack is not None:
        ledger.delete_pack(plan.pack)
    theirs = ledger.read_plan(plan.object_id)
    if theirs is None:
        raise FileNotFoundError(f"{ledger.plan_key(plan.object_id)}: created by another worker, then removed")
    return ObjectPlan(**theirs)


@dataclass(frozen=True)
class ChunkGroup:
    """One mapped delivery task's work: chunk ids of one destination, site and date."""

    destination: str
    vendor: str
    site: str
    date: str
    chunk_ids: tuple[str, ...]
    events: int

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["chunk_ids"] = list(self.chunk_ids)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ChunkGroup:
        return cls(**{**d, "chunk_ids": tuple(d["chunk_ids"])})


@dataclass
class PlanResult:
    plans: list[ObjectPlan]
    groups: list[ChunkGroup]
    held: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # (day, site) -> failures

    def as_dict(self) -> dict[str, Any]:
        return {"groups": [g.as_dict() for g in self.groups]}


def plan_deliveries(
    cfg: Config,
    store: Store,
    days: Sequence[str],
    *,
    sites: Sequence[str] | None = None,
    destinations: Sequence[str] | None = None,
    now: datetime | None = None,
) -> PlanResult:
    """Plan every staged object of the dates for every selected destination.

    Returns groups of chunks still to send: neither acknowledged nor expired (dead-lettered ones
    included, so a re-run resends them once the user fixed the cause), sized for mapped tasks.
    `now` decides what is too old for receive-time vendors (injectable for tests).
    """
    now = now or datetime.now(UTC)
    plans: list[ObjectPlan] = []
    pending: dict[tuple[str, str, str], list[tuple[str, int, str]]] = {}  # (chunk id, events, lease unit)
    held: dict[tuple[str, str], list[str]] = {}
    with ThreadPoolExecutor(PLAN_THREADS_LOCAL if store.is_local else PLAN_THREADS_REMOTE) as pool:
        for day in days:
            manifests = [m for m in read_manifests(store, day).values() if m.get("status") == STAGED]
            manifests.sort(key=lambda m: (m["url"], m["object_id"]))
            held_objs = held_objects(store, day)  # a source's objects held by data quality: not planned
            if held_objs:
                manifests = [m for m in manifests if m["object_id"] not in held_objs]
            failed_quality = held_partitions(store, day, [s.name for s in cfg.sites])
            for site, dest in cfg.destinations():
                if sites and site.name not in sites:
                    continue
                if destinations and dest.name not in destinations:
                    continue
                if site.name in failed_quality:  # the data-quality suites failed: send nothing
                    held[(day, site.name)] = failed_quality[site.name].get("failures", [])
                    continue
                ledger = Ledger(store, dest.name, site.name, day)
                acked = set(ledger.acked_ids())  # listed once per destination and date
                these = list(pool.map(partial(plan_object, store, site, dest, now=now, acked=acked), manifests))
                plans += these
                done = acked | set(ledger.too_old_ids())
                for p in these:  # a run killed after its last ack left the pack behind
                    ledger.drop_pack_if_done(p.as_dict(), done.__contains__)
                per_lease = vendor(dest.vendor).chunks_per_lease
                pending.setdefault((dest.name, site.name, day), []).extend(
                    (c["chunk_id"], c["events"], lease_unit(c, per_lease))
                    for p in these for c in p.chunks if c["chunk_id"] not in done
                )
    groups = _group(cfg, pending)
    return PlanResult(plans, groups, held)


def _group(cfg: Config, pending: dict[tuple[str, str, str], list[tuple[str, int, str]]]) -> list[ChunkGroup]:
    """Cut pending chunks into groups; grow the group size so no vendor exceeds max_groups.

    A group is `delivery.chunks_per_group` chunks times the vendor's `group_scale`: a task's worth
    of requests, whatever their size (20 Scrunch megabyte batches, 500 HitKeep single events),
    rounded up to the end of a lease unit, so mapped tasks running side by side never want the
    same lease (the second would leave its chunks pending).
    """
    vendors = {d.name: d.vendor for _, d in cfg.destinations()}
    scale = {name: vendor(v).group_scale for name, v in vendors.items()}

    def most_groups(per: int) -> int:
        n: Counter[str] = Counter()
        for (dest, _, _), ids in pending.items():
            n[vendors[dest]] += -(-len(ids) // (per * scale[dest]))
        return max(n.values(), default=0)

    per = cfg.delivery.chunks_per_group
    while most_groups(per) > cfg.delivery.max_groups:
        per *= 2
    groups = []
    for (dest, site, day), ids in sorted(pending.items()):
        size = per * scale[dest]
        starts = [0] if ids else []  # a group closes at `size` chunks, or at the end of the lease unit it reached
        for i in range(1, len(ids)):
            if i - starts[-1] >= size and ids[i][2] != ids[i - 1][2]:
                starts.append(i)
        for a, b in itertools.pairwise([*starts, len(ids)]):
            part = ids[a:b]
            groups.append(ChunkGroup(dest, vendors[dest], site, day, tuple(c for c, _, _ in part),
                                     sum(n for _, n, _ in part)))
    return groups
