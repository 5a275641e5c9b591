"""Plan deliveries: staged events -> deterministic chunks, written as a load package.

Per (destination, site, object version) the selected events are serialized in line order and cut
by the vendor's limits, so every run rebuilds byte-identical chunks; a late object adds chunks of
its own and never moves the boundaries of acknowledged ones. Chunk id = hash of destination, site,
object id, index and body, so changed content gets a new id and an ack never covers other bytes.

Chunk files live under the ledger until acknowledged (dlt's load packages are the model):
```
_delivery/<dest>/site=<site>/date=<D>/plans/<object_id>.json   what was selected and why not
_delivery/<dest>/site=<site>/date=<D>/chunks/<chunk_id>.chunk  meta line + request body
_delivery/<dest>/site=<site>/date=<D>/acks/<chunk_id>.json     written after the vendor's 2xx
_delivery/<dest>/site=<site>/date=<D>/dead/<chunk_id>.json     status, vendor body, attempts
```
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from agent_traffic.config import Config, Destination, Site
from agent_traffic.extract import STAGED, read_manifests
from agent_traffic.storage import Store
from agent_traffic.vendors import vendor

PLAN_VERSION = 1


def ledger_prefix(dest: str, site: str, day: str) -> str:
    return f"_delivery/{dest}/site={site}/date={day}"


@dataclass(frozen=True)
class Chunk:
    chunk_id: str
    index: int
    object_id: str
    events: int
    first_line: int
    last_line: int
    content_type: str
    body: bytes

    def meta(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("body")
        d["body_bytes"] = len(self.body)
        return d


def encode_chunk(chunk: Chunk) -> bytes:
    return orjson.dumps(chunk.meta()) + b"\n" + chunk.body


def decode_chunk(data: bytes) -> Chunk:
    head, _, body = data.partition(b"\n")
    meta = orjson.loads(head)
    meta.pop("body_bytes", None)
    return Chunk(body=body, **meta)


def select_mask(table: pa.Table, selection: str) -> pa.ChunkedArray | None:
    """Rows a destination receives: ai (default), automated (every bot), all."""
    if selection == "ai":
        return table["is_ai"]
    if selection == "automated":
        return table["is_bot"]
    return None


def not_selected_reason(selection: str) -> str:
    return {"ai": "not an AI agent", "automated": "not automated traffic"}.get(selection, "")


def read_object_events(store: Store, keys: Sequence[str]) -> pa.Table | None:
    tables = [pq.read_table(store.path(k), filesystem=store.fs) for k in keys]
    if not tables:
        return None
    t = pa.concat_tables(tables)
    return t.sort_by("line_number")


def build_chunks(table: pa.Table, site: Site, dest: Destination, object_id: str) -> list[Chunk]:
    """Serialize in line order and cut by the vendor's byte and event limits."""
    v = vendor(dest.vendor)
    max_bytes, max_events = v.limits(dest)
    rows = table.to_pylist()
    chunks: list[Chunk] = []
    cur: list[bytes] = []
    cur_lines: list[int] = []
    size = 0

    def flush() -> None:
        body, ctype = v.body(cur)
        digest = hashlib.sha256(body).hexdigest()
        idx = len(chunks)
        cid = hashlib.sha256(f"{dest.name}|{site.name}|{object_id}|{idx}|{digest}".encode()).hexdigest()[:24]
        chunks.append(Chunk(cid, idx, object_id, len(cur), cur_lines[0], cur_lines[-1], ctype, body))

    for row in rows:
        line = orjson.dumps(v.event(row, site, dest))
        if len(line) + 1 > max_bytes:
            raise ValueError(
                f"event at {row['source_object']} line {row['line_number']} serializes to "
                f"{len(line)} bytes, over {dest.vendor}'s {max_bytes}-byte limit"
            )
        if cur and (size + len(line) + 1 > max_bytes or len(cur) >= max_events):
            flush()
            cur, cur_lines, size = [], [], 0
        cur.append(line)
        cur_lines.append(row["line_number"])
        size += len(line) + 1
    if cur:
        flush()
    return chunks


@dataclass
class ObjectPlan:
    """What one object version contributes to one destination."""

    destination: str
    site: str
    date: str
    object_id: str
    source_object: str
    fingerprint: str
    events_total: int
    not_selected: dict[str, int]
    chunks: list[dict[str, Any]]  # chunk metas, in order

    @property
    def selected(self) -> int:
        return sum(c["events"] for c in self.chunks)


def _fingerprint(dest: Destination, manifest: dict[str, Any]) -> str:
    parts = [
        PLAN_VERSION,
        dest.vendor,
        dest.site_id,
        dest.select,
        dest.ip_policy,
        dest.max_batch_bytes,
        dest.max_batch_events,
        sorted(manifest.get("files", {}).items()),
    ]
    return hashlib.sha256(orjson.dumps(parts, default=str)).hexdigest()[:16]


def plan_object(
    store: Store, site: Site, dest: Destination, manifest: dict[str, Any]
) -> ObjectPlan:
    """Plan (or re-read the plan of) one object for one destination; writes unacked chunk files."""
    day = manifest["date"]
    oid = manifest["object_id"]
    prefix = ledger_prefix(dest.name, site.name, day)
    fp = _fingerprint(dest, manifest)
    existing = store.get_json_or_none(f"{prefix}/plans/{oid}.json")
    if existing and existing.get("fingerprint") == fp:
        return ObjectPlan(**existing)
    keys = [k for k in manifest.get("files", {}) if k.startswith(f"events/site={site.name}/")]
    table = read_object_events(store, keys)
    total = table.num_rows if table is not None else 0
    not_selected: Counter[str] = Counter()
    chunks: list[Chunk] = []
    if table is not None and total:
        mask = select_mask(table, dest.select)
        if mask is not None:
            picked = table.filter(mask)
            if total - picked.num_rows:
                not_selected[not_selected_reason(dest.select)] += total - picked.num_rows
            table = picked
        chunks = build_chunks(table, site, dest, oid)
    acked = set(acked_ids(store, prefix))
    for ch in chunks:
        if ch.chunk_id not in acked:
            store.put_bytes(f"{prefix}/chunks/{ch.chunk_id}.chunk", encode_chunk(ch))
    plan = ObjectPlan(
        destination=dest.name,
        site=site.name,
        date=day,
        object_id=oid,
        source_object=manifest["url"],
        fingerprint=fp,
        events_total=total,
        not_selected=dict(not_selected),
        chunks=[c.meta() for c in chunks],
    )
    store.put_json(f"{prefix}/plans/{oid}.json", asdict(plan))
    return plan


def _ids(store: Store, prefix: str, kind: str, ext: str) -> Iterator[str]:
    for key in store.list(f"{prefix}/{kind}/"):
        name = key.rsplit("/", 1)[-1]
        if name.endswith(ext):
            yield name[: -len(ext)]


def acked_ids(store: Store, prefix: str) -> list[str]:
    return list(_ids(store, prefix, "acks", ".json"))


def dead_ids(store: Store, prefix: str) -> list[str]:
    return list(_ids(store, prefix, "dead", ".json"))


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

    def as_dict(self) -> dict[str, Any]:
        return {"groups": [g.as_dict() for g in self.groups]}


def plan_deliveries(
    cfg: Config,
    store: Store,
    days: Sequence[str],
    *,
    sites: Sequence[str] | None = None,
    destinations: Sequence[str] | None = None,
) -> PlanResult:
    """Plan every staged object of the dates for every selected destination.

    Returns groups of unacknowledged chunks (including dead-lettered ones, so a re-run resends
    them once the user fixed the cause), sized for mapped delivery tasks.
    """
    plans: list[ObjectPlan] = []
    pending: dict[tuple[str, str, str], list[tuple[str, int]]] = {}
    for day in days:
        manifests = [m for m in read_manifests(store, day).values() if m.get("status") == STAGED]
        manifests.sort(key=lambda m: (m["url"], m["object_id"]))
        for site, dest in cfg.destinations():
            if sites and site.name not in sites:
                continue
            if destinations and dest.name not in destinations:
                continue
            prefix = ledger_prefix(dest.name, site.name, day)
            acked = set(acked_ids(store, prefix))
            todo = pending.setdefault((dest.name, site.name, day), [])
            for m in manifests:
                plan = plan_object(store, site, dest, m)
                plans.append(plan)
                todo.extend((c["chunk_id"], c["events"]) for c in plan.chunks if c["chunk_id"] not in acked)
    groups = _group(cfg, pending)
    return PlanResult(plans, groups)


def _group(cfg: Config, pending: dict[tuple[str, str, str], list[tuple[str, int]]]) -> list[ChunkGroup]:
    """Cut pending chunks into groups; grow the group size so no vendor exceeds max_groups."""
    vendors = {d.name: d.vendor for _, d in cfg.destinations()}

    def most_groups(per: int) -> int:
        n: Counter[str] = Counter()
        for (dest, _, _), ids in pending.items():
            n[vendors[dest]] += -(-len(ids) // per)
        return max(n.values(), default=0)

    per = cfg.delivery.chunks_per_group
    while most_groups(per) > cfg.delivery.max_groups:
        per *= 2
    groups = []
    for (dest, site, day), ids in sorted(pending.items()):
        for i in range(0, len(ids), per):
            part = ids[i : i + per]
            groups.append(
                ChunkGroup(dest, vendors[dest], site, day, tuple(c for c, _ in part), sum(n for _, n in part))
            )
    return groups
