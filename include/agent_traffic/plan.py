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

The chunks live under the ledger until acknowledged (dlt's load packages are the model), all of
an object's in one pack file, each at the offset its plan records:
```
_delivery/<dest>/site=<site>/date=<D>/plans/<object_id>.json    outcomes, chunk list, pack offsets
_delivery/<dest>/site=<site>/date=<D>/packs/<object_id>.<token>.pack  chunks: meta line + request body
_delivery/<dest>/site=<site>/date=<D>/acks/<chunk_id>.json      after the vendor's 2xx (with lines)
_delivery/<dest>/site=<site>/date=<D>/dead/<chunk_id>.json      status, vendor body, attempts
_delivery/<dest>/site=<site>/date=<D>/too_old/<chunk_id>.json   expired before it could be sent
_delivery/<dest>/site=<site>/date=<D>/leases/<unit>.<gen>.json  a worker is sending it (deliver.py)
```
One pack per object, not a file per chunk: a small-batch vendor (Known Agents' 100 visits, HitKeep's
one event) has thousands of chunks per object, and a file created and removed per request cost
more than the request (on S3 two requests more per request; on local disk, inode allocation). A
pack is removed once every chunk of its plan is acknowledged or expired. Packs are written
without fsync: a chunk's id hashes its bytes, so delivery detects a missing or torn pack and
plans its object again (`deliver.py`).
"""

from __future__ import annotations

import hashlib
import itertools
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from agent_traffic.config import Config, Destination, Site
from agent_traffic.extract import STAGED, read_manifests
from agent_traffic.holds import held_objects
from agent_traffic.redact import redact_url
from agent_traffic.storage import Store
from agent_traffic.validate import held_partitions
from agent_traffic.vendors import vendor

PLAN_VERSION = 3  # 3: chunks in one pack per object
PLAN_THREADS = 2  # objects planned at once: two cores' worth, and two objects' events in memory
ROWS_PER_BATCH = 65_536  # rows serialized at a time: bounds the memory of a large object's JSON

Ranges = tuple[tuple[int, int], ...]


def ledger_prefix(dest: str, site: str, day: str) -> str:
    return f"_delivery/{dest}/site={site}/date={day}"


def pack_key(prefix: str, pack: str) -> str:
    return f"{prefix}/packs/{pack}"


def plan_key(prefix: str, object_id: str) -> str:
    return f"{prefix}/plans/{object_id}.json"


def lease_unit(meta: dict[str, Any], per_lease: int) -> str:
    """The lease a chunk is sent under: the chunk itself, or its run of `per_lease` chunks in its
    object (small-request vendors). Groups never split a run (`_group`), so two mapped tasks
    never want the same lease."""
    return meta["chunk_id"] if per_lease <= 1 else f"{meta['object_id']}.u{meta['index'] // per_lease}"


def read_chunk(store: Store, prefix: str, meta: dict[str, Any]) -> Chunk:
    """A planned chunk from its object's pack (FileNotFoundError, ValueError when it is not there)."""
    if not meta.get("pack"):
        raise FileNotFoundError(f"chunk {meta.get('chunk_id')} has no pack (acknowledged when it was planned)")
    start = int(meta["offset"])
    return decode_chunk(store.get_range(pack_key(prefix, meta["pack"]), start, start + int(meta["length"])))


def line_ranges(lines: Iterable[int] | np.ndarray) -> Ranges:
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


def lines_in(ranges: Iterable[Sequence[int]]) -> Iterator[int]:
    for a, b in ranges:
        yield from range(a, b + 1)


@dataclass(frozen=True)
class Chunk:
    chunk_id: str
    index: int
    object_id: str
    events: int
    first_line: int
    last_line: int
    oldest_ts: float  # Unix seconds of the oldest event: the age check at send time
    content_type: str
    body: bytes
    lines: Ranges = ()  # every line in the chunk; kept in the pack and its ack, not the plan

    def meta(self) -> dict[str, Any]:
        """Everything but the body and the line list (`asdict` would deep-copy both: it showed up
        in profiles of small-batch vendors, a meta per request)."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("body", "lines")}
        d["body_bytes"] = len(self.body)
        return d


def encode_chunk(chunk: Chunk) -> bytes:
    return orjson.dumps({**chunk.meta(), "lines": chunk.lines}) + b"\n" + chunk.body


def decode_chunk(data: bytes) -> Chunk:
    head, _, body = data.partition(b"\n")
    meta = orjson.loads(head)
    meta.pop("body_bytes", None)
    lines = tuple((a, b) for a, b in meta.pop("lines", ()))
    return Chunk(body=body, lines=lines, **meta)


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
        return pc.fill_null(table["is_ai"], False)
    if selection == "ai_and_referred":
        ai = pc.fill_null(table["is_ai"], False)
        if "referred_by" not in table.column_names:
            return ai
        referred = pc.fill_null(pc.not_equal(table["referred_by"], ""), False)
        return pc.or_(ai, referred)
    if selection == "automated":
        return pc.fill_null(table["is_bot"], False)
    return None


def not_selected_reason(selection: str) -> str:
    return SELECT_REASONS.get(selection, "")


def age_cutoff(dest: Destination, now: datetime) -> datetime | None:
    """Events before this are too old for the destination; None when age does not matter."""
    if not vendor(dest.vendor).stamps_receive_time or dest.send_older_events:
        return None
    return now - timedelta(hours=dest.max_age_hours)


#: The staged columns the planner reads for every vendor (order, age, selection); with the
#: vendor's own (`plan_columns`), the only ones decoded: the others (ids, classification detail,
#: what another vendor sends) are most of a staged file.
PLAN_COLUMNS = ("ts", "line_number", "is_ai", "is_bot", "referred_by")


def plan_columns(vendor_name: str) -> list[str]:
    v = vendor(vendor_name)
    return list(dict.fromkeys((*PLAN_COLUMNS, *v.columns, *v.reads)))


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
                       selection: str | None = None, skipped: Callable[[int], None] | None = None) -> pa.Table | None:
    """One object's staged events for a site, in line order (the files are its per-provider parts):
    `columns` of them (those the files have), or every column.

    `keep` filters each file as it is read, so only the rows a destination takes are held (for
    AI agents, a sixth of a typical object): planning two large objects at once had needed
    1.7 GB with every row held. With `selection`, row groups whose statistics show that it
    selects none of their rows are not read at all: their row count goes to `skipped`."""
    tables = []
    for k in keys:
        with store.fs.open(store.path(k), "rb") as f:
            pf = pq.ParquetFile(f)
            present = set(pf.schema_arrow.names)
            groups = list(range(pf.num_row_groups))
            if selection is not None and skipped is not None:
                columns = {pf.metadata.schema.column(i).path: i for i in range(pf.metadata.num_columns)}
                none = [i for i in groups if _none_selected(pf.metadata.row_group(i), columns, selection)]
                if none:
                    skipped(sum(pf.metadata.row_group(i).num_rows for i in none))
                    groups = sorted(set(groups) - set(none))
                    if not groups:
                        continue
            t = pf.read_row_groups(groups, columns=None if columns is None else [c for c in columns if c in present])
        tables.append(keep(t) if keep is not None else t)
    if not tables:
        return None
    t = pa.concat_tables(tables, promote_options="default")
    return t.sort_by("line_number")


def build_chunks(
    table: pa.Table, site: Site, dest: Destination, object_id: str, not_eligible: Counter[str],
    *, start_index: int = 0,
) -> Iterator[Chunk]:
    """Serialize in line order and cut by the vendor's byte and event limits, one chunk at a time.

    An event that alone exceeds the vendor's request size cannot be sent at all: it is counted in
    `not_eligible` with the limit, never dropped silently and never a crash.

    The events are serialized a window of rows at a time by the vendor's column expressions (no
    Python object per event), each followed by the vendor's one-byte separator, so a chunk's
    events are one contiguous slice of the window's bytes. Cuts are greedy, as if events were
    added one by one: a chunk closes when the next event would pass the byte limit or the event
    limit. The last chunk of a window is held back and rebuilt with the next window, so the cuts
    do not depend on the window size.
    """
    v = vendor(dest.vendor)
    max_bytes, max_events = v.limits(dest)
    too_big = f"larger than {v.title}'s {max_bytes - 1:,}-byte request limit"
    sep = v.separator.decode()
    index = start_index
    ts = table["ts"]
    table = table.select([c for c in dict.fromkeys((*v.columns, "line_number")) if c in table.column_names])
    table = table.append_column("ts_us", pc.cast(ts, pa.int64()))
    pos, n, size = 0, table.num_rows, ROWS_PER_BATCH
    while pos < n:
        window = table.slice(pos, size)
        last_window = pos + window.num_rows >= n
        lines = v.lines(window, site, dest, end=sep)
        ends = np.frombuffer(lines.buffers()[1], np.int32)[lines.offset : lines.offset + len(lines) + 1]
        ends = ends.astype(np.int64)
        data = lines.buffers()[2]
        sizes = np.diff(ends)
        fits = sizes <= max_bytes
        rows = np.flatnonzero(fits)  # window rows that can be sent, in line order
        cum = np.concatenate(([0], np.cumsum(sizes[rows])))
        line_numbers = window["line_number"].to_numpy()
        ts_us = window["ts_us"].to_numpy()
        i, consumed = 0, window.num_rows
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


def _runs(data: pa.Buffer, ends: np.ndarray, rows: np.ndarray) -> bytes:
    """The bytes of `rows` (ascending): one slice when they are consecutive, as they nearly always are."""
    first, last = int(rows[0]), int(rows[-1])
    if last - first + 1 == len(rows):
        return data[int(ends[first]) : int(ends[last + 1])].to_pybytes()
    return b"".join(data[int(ends[r]) : int(ends[r + 1])].to_pybytes() for r in rows)


def _chunk(dest: Destination, site: Site, object_id: str, index: int, body: bytes, ctype: str,
           line_numbers: np.ndarray, ts_us: np.ndarray) -> Chunk:
    """A chunk and its id: a hash of where it belongs, its line span and its body."""
    first, last, count = int(line_numbers[0]), int(line_numbers[-1]), len(line_numbers)
    cid = chunk_id(dest.name, site.name, object_id, first, last, count, body)
    return Chunk(cid, index, object_id, count, first, last, int(ts_us.min()) / 1e6, ctype, body,
                 line_ranges(line_numbers))


def chunk_id(dest: str, site: str, object_id: str, first: int, last: int, count: int, body: bytes) -> str:
    digest = hashlib.sha256(body).hexdigest()
    key = f"{dest}|{site}|{object_id}|{first}|{last}|{count}|{digest}"
    return hashlib.sha256(key.encode()).hexdigest()[:24]


def chunk_intact(ch: Chunk, dest: str, site: str) -> bool:
    """The pack holds the bytes the chunk was planned with (its id hashes them): a torn or
    damaged pack is detected, so packs need no fsync."""
    return chunk_id(dest, site, ch.object_id, ch.first_line, ch.last_line, ch.events, ch.body) == ch.chunk_id


@dataclass
class ObjectPlan:
    """What one object version contributes to one destination: an outcome for every event."""

    destination: str
    site: str
    date: str
    object_id: str
    source_object: str
    fingerprint: str
    events_total: int
    not_selected: dict[str, int]
    chunks: list[dict[str, Any]]  # chunk metas, in order (kept acknowledged ones first); packed ones with offset, length
    not_eligible: dict[str, int] = field(default_factory=dict)
    too_old: int = 0
    too_old_before: str | None = None  # the cutoff used, ISO 8601
    planned_at: str | None = None
    pack: str | None = None  # the pack file holding the chunks not yet acknowledged when planned
    carried: int = 0  # events acknowledged for an earlier version of the object, with the same identity
    carried_lines: list[list[int]] = field(default_factory=list)  # their lines (ranges), for the next version

    def as_dict(self) -> dict[str, Any]:
        """The plan record (shallow: `asdict` deep-copied every chunk meta, thousands for small batches)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def selected(self) -> int:
        return sum(c["events"] for c in self.chunks)

    @property
    def balanced(self) -> bool:
        """Every event has exactly one outcome."""
        return self.events_total == (self.selected + self.too_old + sum(self.not_selected.values())
                                     + sum(self.not_eligible.values()) + self.carried)


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
    store: Store, prefix: str, previous: dict[str, Any] | None, acked: set[str]
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
        ack = store.get_json_or_none(f"{prefix}/acks/{c['chunk_id']}.json") or {}
        if not ack.get("lines"):
            continue
        kept.append({k: v for k, v in c.items() if k not in ("offset", "length")})  # not in the new pack
        lines.update(lines_in(ack["lines"]))
    return kept, lines


def _carried_over(store: Store, prefix: str, carried: dict[str, Any] | None, acked: set[str]) -> np.ndarray:
    """Lines (ascending) of a new object version whose events the destination acknowledged for
    the version before it (or carried over into it), with the same identity (identity.py): sent
    already. Numpy, not sets: a grown 10M-line log carries 10M lines."""
    none = np.zeros(0, np.int64)
    if not carried or not carried.get("lines"):
        return none
    prev = store.get_json_or_none(plan_key(prefix, carried["from"]))
    if prev is None:
        return none
    sent = list(prev.get("carried_lines") or ())
    for c in prev.get("chunks", []):
        if c["chunk_id"] in acked:
            sent += (store.get_json_or_none(f"{prefix}/acks/{c['chunk_id']}.json") or {}).get("lines") or ()
    _drop_superseded(store, prefix, prev, acked)  # its unacknowledged chunks are planned anew
    return np.intersect1d(_lines_array(sent), _lines_array(carried["lines"]))


def _lines_array(ranges: Iterable[Sequence[int]]) -> np.ndarray:
    parts = [np.arange(a, b + 1, dtype=np.int64) for a, b in ranges]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def _drop_superseded(store: Store, prefix: str, previous: dict[str, Any] | None, acked: set[str]) -> None:
    """Remove a previous plan's pack and the records of its unacknowledged chunks: the new plan
    replaces them (`chunks/` files are the layout before packs)."""
    if previous and previous.get("pack"):
        store.delete(pack_key(prefix, previous["pack"]))
    for c in (previous or {}).get("chunks", []):
        cid = c["chunk_id"]
        if cid not in acked:
            for kind, ext in (("chunks", "chunk"), ("dead", "json"), ("too_old", "json")):
                store.delete(f"{prefix}/{kind}/{cid}.{ext}")


def drop_pack_if_done(store: Store, prefix: str, plan: dict[str, Any], done: Callable[[str], bool]) -> bool:
    """Remove a plan's pack once every chunk in it is acknowledged or expired (dead letters keep
    it: a later run resends them). True if it was removed."""
    packed = [c["chunk_id"] for c in plan.get("chunks", []) if "offset" in c]
    if not plan.get("pack") or not all(done(c) for c in reversed(packed)):  # the last chunks finish last
        return False
    store.delete(pack_key(prefix, plan["pack"]))
    return True


def plan_object(
    store: Store, site: Site, dest: Destination, manifest: dict[str, Any], *, now: datetime | None = None,
    acked: set[str] | None = None,
) -> ObjectPlan:
    """Plan (or re-read the plan of) one object for one destination; packs the unacked chunks.

    `acked`: the destination's acknowledged chunk ids for the date, when the caller has them.
    """
    now = now or datetime.now(UTC)
    day = manifest["date"]
    oid = manifest["object_id"]
    prefix = ledger_prefix(dest.name, site.name, day)
    fp = _fingerprint(dest, manifest)
    existing = store.get_json_or_none(plan_key(prefix, oid))
    if existing and existing.get("fingerprint") == fp:
        return ObjectPlan(**existing)
    v = vendor(dest.vendor)
    acked = set(acked_ids(store, prefix)) if acked is None else acked
    kept, delivered = _delivered_before(store, prefix, existing, acked)
    _drop_superseded(store, prefix, existing, acked)
    carry = _carried_over(store, prefix, manifest.get("carried"), acked)
    carry_lines = pa.array(carry) if len(carry) else None
    keys = [k for k in manifest.get("files", {}) if k.startswith(f"events/site={site.name}/")]
    counts = Counter[str]()
    done_lines = pa.array(sorted(delivered), pa.int64()) if delivered else None

    def keep(t: pa.Table) -> pa.Table:
        """Per staged file: leave out events delivered before, then those the destination does not select."""
        counts["read"] += t.num_rows
        if carry_lines is not None:  # acknowledged for an earlier version: never sent again
            same = pc.is_in(t["line_number"], value_set=carry_lines)
            counts["carried"] += pc.sum(same).as_py() or 0
            t = t.filter(pc.invert(same))
        if done_lines is not None:
            t = t.filter(pc.invert(pc.is_in(t["line_number"], value_set=done_lines)))
        counts["open"] += t.num_rows
        mask = select_mask(t, dest.select)
        return t if mask is None else t.filter(mask)

    def skipped(rows: int) -> None:
        """Row groups the destination selects none of, by their statistics: read and not selected."""
        counts["read"] += rows
        counts["open"] += rows

    # Skipping by statistics only when no earlier plan delivered lines: those are left out of
    # `open`, which a skipped row group could not tell.
    table = read_object_events(store, keys, keep, columns=plan_columns(dest.vendor),
                               selection=dest.select if done_lines is None and carry_lines is None else None,
                               skipped=skipped)
    total = counts["read"]
    not_selected: Counter[str] = Counter()
    not_eligible: Counter[str] = Counter()
    too_old = 0
    cutoff = age_cutoff(dest, now)
    metas = list(kept)
    pack: str | None = None
    unselected = counts["open"] - (table.num_rows if table is not None else 0)
    if unselected:  # filtered out per file, or in row groups never read
        not_selected[not_selected_reason(dest.select)] += unselected
    if table is not None and total:
        reasons = v.ineligible(table, dest) if table.num_rows else None
        if reasons is not None:
            for item in pc.value_counts(pc.drop_null(reasons)).to_pylist():
                not_eligible[item["values"]] += item["counts"]
            table = table.filter(pc.is_null(reasons))
        if cutoff is not None and table.num_rows:
            old = pc.less(table["ts"], pa.scalar(cutoff, table.schema.field("ts").type))
            too_old = pc.sum(old).as_py() or 0
            table = table.filter(pc.invert(old))
        start = 1 + max((c["index"] for c in kept), default=-1)  # kept chunks keep their numbers
        pack = f"{oid}.{uuid.uuid4().hex[:12]}.pack"  # new per planning: never one a reader uses
        offset = 0

        def packed() -> Iterator[bytes]:
            nonlocal offset
            for ch in build_chunks(table, site, dest, oid, not_eligible, start_index=start):
                meta = ch.meta()
                if ch.chunk_id not in acked:
                    data = encode_chunk(ch)
                    meta.update(offset=offset, length=len(data))
                    offset += len(data)
                    yield data
                metas.append(meta)

        parts = packed()
        first = next(parts, None)
        if first is None:  # every chunk acknowledged already (or none): no pack
            pack = None
        else:
            store.put_stream(pack_key(prefix, pack), itertools.chain((first,), parts), durable=False)
    plan = ObjectPlan(
        destination=dest.name,
        site=site.name,
        date=day,
        object_id=oid,
        source_object=redact_url(manifest["url"]),
        fingerprint=fp,
        events_total=total,
        not_selected=dict(not_selected),
        chunks=metas,
        not_eligible=dict(not_eligible),
        too_old=too_old,
        too_old_before=cutoff.isoformat(timespec="seconds") if cutoff else None,
        planned_at=now.isoformat(timespec="seconds"),
        pack=pack,
        carried=counts["carried"],
        carried_lines=[list(r) for r in line_ranges(carry)],
    )
    key = plan_key(prefix, oid)
    if existing is not None:  # a setting changed: this plan replaces that one
        store.put_json(key, plan.as_dict())
        return plan
    if store.create_json(key, plan.as_dict()):
        return plan
    # Another worker planned this object meanwhile (runs side by side): its plan is the one
    # everyone reads, so ours and its pack go (a pack no plan names would never be removed).
    if pack is not None:
        store.delete(pack_key(prefix, pack))
    return ObjectPlan(**store.get_json(key))


def _ids(store: Store, prefix: str, kind: str, ext: str) -> Iterator[str]:
    for key in store.list(f"{prefix}/{kind}/"):
        name = key.rsplit("/", 1)[-1]
        if name.endswith(ext):
            yield name[: -len(ext)]


def acked_ids(store: Store, prefix: str) -> list[str]:
    return list(_ids(store, prefix, "acks", ".json"))


def too_old_ids(store: Store, prefix: str) -> list[str]:
    return list(_ids(store, prefix, "too_old", ".json"))


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
    with ThreadPoolExecutor(PLAN_THREADS) as pool:  # objects side by side: Arrow kernels and file writes release the GIL
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
                prefix = ledger_prefix(dest.name, site.name, day)
                acked = set(acked_ids(store, prefix))  # listed once per destination and date
                these = list(pool.map(partial(plan_object, store, site, dest, now=now, acked=acked), manifests))
                plans += these
                done = acked | set(too_old_ids(store, prefix))
                for p in these:  # a run killed after its last ack left the pack behind
                    drop_pack_if_done(store, prefix, p.as_dict(), done.__contains__)
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


class PlanIndex:
    """Chunk id -> its plan's chunk meta (object, index, pack, offset, length), read from the
    date's plans on first use and again after a re-plan. `of` keeps it for the process's next
    delivery groups of the same date (a backfill delivers dozens): a stale entry costs only a
    refresh, because a chunk read through it must still match its id's hash."""

    _cache: dict[tuple[str, str], PlanIndex] = {}
    _cache_lock = threading.Lock()
    CACHED = 8  # dates x destinations x sites; a few suffice for a run that goes date by date

    @classmethod
    def of(cls, store: Store, prefix: str) -> PlanIndex:
        key = (store.root_url, prefix)
        with cls._cache_lock:
            index = cls._cache.pop(key, None) or cls(store, prefix)
            cls._cache[key] = index  # most recent last
            while len(cls._cache) > cls.CACHED:
                cls._cache.pop(next(iter(cls._cache)))
        return index

    def __init__(self, store: Store, prefix: str) -> None:
        self.store, self.prefix = store, prefix
        self._metas: dict[str, dict[str, Any]] | None = None
        self._plans: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def refresh(self) -> None:
        metas: dict[str, dict[str, Any]] = {}
        plans: dict[str, dict[str, Any]] = {}
        for _key, plan in self.store.iter_json(f"{self.prefix}/plans/"):
            plans[plan["object_id"]] = plan
            for c in plan.get("chunks", []):
                metas[c["chunk_id"]] = {**c, "pack": plan.get("pack")}
        with self._lock:
            self._metas, self._plans = metas, plans

    def meta(self, cid: str) -> dict[str, Any] | None:
        if self._metas is None:
            self.refresh()
        assert self._metas is not None
        return self._metas.get(cid)

    def unit(self, cid: str, per_lease: int) -> str:
        """The lease unit (`plan.lease_unit`); a chunk no plan lists is its own."""
        meta = self.meta(cid) if per_lease > 1 else None
        return cid if meta is None else lease_unit(meta, per_lease)

    def plans_of(self, cids: Sequence[str]) -> list[dict[str, Any]]:
        oids = {m["object_id"] for c in cids if (m := self.meta(c)) is not None}
        return [self._plans[o] for o in sorted(oids) if o in self._plans]


def find_chunk(store: Store, prefix: str, chunk_id: str) -> Chunk:
    """A planned chunk by id (for tools and tests; delivery keeps a `PlanIndex`)."""
    meta = PlanIndex(store, prefix).meta(chunk_id)
    if meta is None:
        raise FileNotFoundError(f"no plan under {prefix} has chunk {chunk_id}")
    return read_chunk(store, prefix, meta)
