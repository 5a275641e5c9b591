"""The delivery ledger: every key and record under `_delivery/`, and where each event stands.

One `Ledger` per destination, site and date owns its folder, as dlt's load package storage owns
a package's jobs: no other module spells a ledger key or builds a ledger record. The tree:
```
_delivery/<destination>/site=<site>/date=<D>/    the ledger of one destination, site and date
    plans/<object_id>.json               the object's events for this destination: chunks (ids, event
                                         counts, line ranges, offsets in the pack) and the events not
                                         sent, counted per reason (`ObjectPlan`, written by plan.py)
    packs/<object_id>.<token>.pack       every chunk of the object (meta line + request body) in one
                                         file; removed once all are acknowledged or too old (`Chunk`)
    acks/<chunk_id>.json                 written after the vendor's 2xx, with the lines: delivered (`Ack`)
    dead/<chunk_id>.json                 the vendor's status and answer, attempts: failed (`DeadLetter`)
    too_old/<chunk_id>.json              past the vendor's age limit: not sent (`TooOld`)
    leases/<chunk or run>.<gen>.json     a worker is sending it: run, task, try, until when (`LeaseRecord`,
                                         taken and released by leases.py)
_delivery/<destination>/stopped/<run_id>.json   a 401/403/404 stopped the destination for that run (`Stopped`)
```
One pack per object, not a file per chunk: a small-batch vendor (Known Agents' 100 visits,
HitKeep's one event) has thousands of chunks per object, and a file created and removed per
request cost more than the request. Packs are written without fsync: a chunk's id hashes its
bytes, so delivery detects a missing or torn pack and plans its object again.

Plans, acks, dead letters and too-old marks are the only record of what happened to each event;
the run summary, the query views and the report all count outcomes from `ledger_rows`, so they
cannot disagree.
"""

from __future__ import annotations

import os
import re
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any, Protocol

import orjson

from agent_traffic.ingest.discover import STAGED, read_manifests
from agent_traffic.ingest.storage import Store
from agent_traffic.staging.holds import held_objects, held_partitions
from agent_traffic.staging.identity import LineRuns

ROOT = "_delivery"


class Outcome(StrEnum):
    """Where a staged event stands for one destination: exactly one of these.

    A planned chunk's events take the first that applies, in this order of precedence
    (`Outcome.of_chunk`): an ack makes them delivered, else a too-old mark too old, else a dead
    letter failed, else a data-quality hold held, else they are pending. Events never put in a
    chunk are counted by their plan: not selected, not eligible, too old, or delivered (lines
    acknowledged for an earlier version of the object).
    """

    DELIVERED = "delivered"
    TOO_OLD = "too_old"
    FAILED = "failed"
    HELD = "held"
    PENDING = "pending"
    NOT_SELECTED = "not_selected"
    NOT_ELIGIBLE = "not_eligible"

    @classmethod
    def of_chunk(cls, *, acked: bool, too_old: bool, dead: bool, held: bool) -> Outcome:
        if acked:
            return cls.DELIVERED
        if too_old:
            return cls.TOO_OLD
        if dead:
            return cls.FAILED
        return cls.HELD if held else cls.PENDING


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def as_utc(value: Any) -> datetime | None:
    """A timestamp from a ledger or run record (ISO text, epoch number or datetime), in UTC."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    try:
        t = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


class _Record:
    """A ledger record's JSON: its fields, shallow (`asdict` deep-copies line lists and chunk metas)."""

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]


@dataclass(frozen=True)
class Chunk:
    """One request body and where its events came from: a pack's record."""

    chunk_id: str
    index: int
    object_id: str
    events: int
    first_line: int
    last_line: int
    oldest_ts: float  # Unix seconds of the oldest event: the age check at send time
    content_type: str
    body: bytes  # a memoryview of the planner's bytes while it packs the chunk (plan.py)
    lines: LineRuns = ()  # every line in the chunk; kept in the pack and its ack, not the plan

    def meta(self) -> dict[str, Any]:
        """Everything but the body and the line list (`asdict` would deep-copy both: it showed up
        in profiles of small-batch vendors, a meta per request)."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("body", "lines")}
        d["body_bytes"] = len(self.body)
        return d



def chunk_parts(chunk: Chunk) -> tuple[bytes, bytes]:
    """The chunk as a pack holds it, in two pieces written one after the other: its JSON meta
    line, then its body (not copied into one string: bodies are megabytes)."""
    return orjson.dumps({**chunk.meta(), "lines": chunk.lines}) + b"\n", chunk.body


def encode_chunk(chunk: Chunk) -> bytes:
    """The chunk as a pack holds it: a JSON meta line, then the body."""
    return b"".join(chunk_parts(chunk))


def decode_chunk(data: bytes) -> Chunk:
    head, _, body = data.partition(b"\n")
    return _chunk_of(head, body)


def _chunk_of(head: bytes, body: bytes) -> Chunk:
    """A chunk from its pack record's meta line (without its newline) and body."""
    meta = orjson.loads(head)
    meta.pop("body_bytes", None)
    lines = tuple((a, b) for a, b in meta.pop("lines", ()))
    return Chunk(body=body, lines=lines, **meta)


@dataclass
class ObjectPlan(_Record):
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

    @property
    def selected(self) -> int:
        return sum(c["events"] for c in self.chunks)

    @property
    def balanced(self) -> bool:
        """Every event has exactly one outcome."""
        return self.events_total == (self.selected + self.too_old + sum(self.not_selected.values())
                                     + sum(self.not_eligible.values()) + self.carried)


@dataclass(frozen=True)
class Ack(_Record):
    """The vendor accepted the chunk (2xx): its events are delivered, its lines never sent again."""

    chunk_id: str
    object_id: str
    index: int
    events: int
    first_line: int
    last_line: int
    lines: LineRuns
    status: int | None
    attempts: int
    acked_at: str
    run_id: str

    @classmethod
    def of(cls, ch: Chunk, status: int | None, attempts: int, run_id: str) -> Ack:
        return cls(ch.chunk_id, ch.object_id, ch.index, ch.events, ch.first_line, ch.last_line, ch.lines,
                   status, attempts, now_iso(), run_id)


@dataclass(frozen=True)
class DeadLetter(_Record):
    """The vendor rejected the chunk, or retries ran out: resent by a later run."""

    chunk_id: str
    object_id: str
    events: int
    status: int | None
    vendor_answer: str
    attempts: int
    outcome: str  # the retry decision (retry.Decision)
    failed_at: str
    run_id: str


@dataclass(frozen=True)
class TooOld(_Record):
    """The chunk's oldest event passed the destination's max age before it could be sent."""

    chunk_id: str
    object_id: str
    events: int
    oldest_event: str
    cutoff: str
    run_id: str
    expired_at: str


@dataclass(frozen=True)
class Stopped(_Record):
    """The destination answered 401/403/404: the run's other groups leave their chunks pending."""

    destination: str
    status: int | None
    vendor_answer: str
    run_id: str
    at: str


@dataclass(frozen=True)
class LeaseRecord:
    """A worker's claim on a lease unit (leases.py): who, and until when."""

    unit: str
    gen: int
    token: str
    run_id: str
    host: str
    pid: int
    owner: dict[str, Any]  # LeaseOwner.as_dict(), or empty
    claimed_at: str
    expires_at: str

    def encode(self) -> bytes:
        return orjson.dumps({
            "unit": self.unit, "gen": self.gen, "token": self.token, "run_id": self.run_id, "host": self.host,
            "pid": self.pid, **self.owner, "claimed_at": self.claimed_at, "expires_at": self.expires_at,
        })


ACK_SYNC_S = 0.5


class AckSync:
    """Acks written without an fsync each, made durable together at most `interval_s` later
    (a group commit, as Vector's disk buffer does)."""

    def __init__(self, store: Store, interval_s: float = ACK_SYNC_S) -> None:
        self.store, self.interval_s = store, interval_s
        self._pending: list[str] = []
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def put(self, key: str, record: dict[str, Any]) -> None:
        self.store.put_json(key, record, durable=False)
        with self._lock:
            self._pending.append(key)
            due = time.monotonic() - self._last >= self.interval_s
        if due:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            keys, self._pending, self._last = self._pending, [], time.monotonic()
        if keys:
            self.store.sync(keys)


class _Part(Protocol):
    destination: str
    site: str
    date: str


def lease_unit(meta: dict[str, Any], per_lease: int) -> str:
    """The lease a chunk is sent under: the chunk itself, or its run of `per_lease` chunks in its
    object (small-request vendors). Groups never split a run (plan.py), so two mapped tasks
    never want the same lease."""
    return meta["chunk_id"] if per_lease <= 1 else f"{meta['object_id']}.u{meta['index'] // per_lease}"


class _PacksWrittenHere:
    """Local packs this process wrote, as it left them (device, inode, size, mtime).

    A pack's hashes guard against an OS crash tearing it (packs are not fsynced); a crash ends
    this process too, so a pack it wrote and finds unchanged (any rewrite is a new file, or a new
    mtime) holds the bytes it wrote, and sending it need not hash every body again (a fifth of
    sending's CPU). Another process, or a changed file, still checks every chunk."""

    def __init__(self) -> None:
        self._stats: dict[str, tuple[int, int, int, int]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _stat(path: str) -> tuple[int, int, int, int] | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns

    def wrote(self, path: str) -> None:
        stat = self._stat(path)
        if stat is not None:
            with self._lock:
                self._stats[path] = stat

    def forget(self, path: str) -> None:
        with self._lock:
            self._stats.pop(path, None)

    def unchanged(self, path: str) -> bool:
        with self._lock:
            mine = self._stats.get(path)
        return mine is not None and self._stat(path) == mine


_PACKS_WRITTEN_HERE = _PacksWrittenHere()


class Ledger:
    """The ledger of one destination, site and date: its keys, and its records' writes and reads."""

    def __init__(self, store: Store, destination: str, site: str, day: str) -> None:
        self.store, self.destination, self.site, self.date = store, destination, site, day
        self.prefix = f"{ROOT}/{destination}/site={site}/date={day}"
        self._acks: AckSync | None = None
        self._acks_lock = threading.Lock()

    @classmethod
    def of(cls, store: Store, part: _Part) -> Ledger:
        """The ledger of a chunk group or an object plan (anything with destination, site, date)."""
        return cls(store, part.destination, part.site, part.date)

    def __repr__(self) -> str:
        return f"Ledger({self.prefix})"

    # keys
    def _key(self, kind: str, name: str) -> str:
        return f"{self.prefix}/{kind}/{name}"

    def plan_key(self, object_id: str) -> str:
        return self._key("plans", f"{object_id}.json")

    def pack_key(self, pack: str) -> str:
        return self._key("packs", pack)

    def lease_key(self, unit: str, gen: int) -> str:
        return self._key("leases", f"{unit}.{gen}.json")

    def stop_key(self, run_id: str) -> str:
        return f"{ROOT}/{self.destination}/stopped/{run_id}.json"

    # plans
    def read_plan(self, object_id: str) -> dict[str, Any] | None:
        return self.store.get_json_or_none(self.plan_key(object_id))

    def write_plan(self, plan: ObjectPlan, *, replace: bool) -> bool:
        """Write a plan; unless `replace`, only if the object has none (False: another worker's won)."""
        key = self.plan_key(plan.object_id)
        if replace:
            self.store.put_json(key, plan.as_dict())
            return True
        return self.store.create_json(key, plan.as_dict())

    def delete_plan(self, object_id: str) -> None:
        self.store.delete(self.plan_key(object_id))

    def plans(self) -> Iterator[dict[str, Any]]:
        for _key, plan in self.store.iter_json(self._key("plans", "")):
            yield plan

    # packs
    @staticmethod
    def new_pack(object_id: str) -> str:
        """A pack name new per planning: never one a reader uses."""
        return f"{object_id}.{uuid.uuid4().hex[:12]}.pack"

    def write_pack(self, pack: str, parts: Iterable[bytes | memoryview]) -> None:
        self.store.put_stream(self.pack_key(pack), parts, durable=False)
        if self.store.is_local:
            _PACKS_WRITTEN_HERE.wrote(self.store.path(self.pack_key(pack)))

    def pack_written_here(self, pack: str) -> bool:
        """This process wrote the pack and it is unchanged: its chunks hold the bytes planned
        (`_PacksWrittenHere`)."""
        return self.store.is_local and _PACKS_WRITTEN_HERE.unchanged(self.store.path(self.pack_key(pack)))

    def has_pack(self, pack: str) -> bool:
        return self.store.exists(self.pack_key(pack))

    def delete_pack(self, pack: str) -> None:
        self.store.delete(self.pack_key(pack))
        _PACKS_WRITTEN_HERE.forget(self.store.path(self.pack_key(pack)))

    def read_chunk(self, meta: dict[str, Any]) -> Chunk:
        """A planned chunk from its object's pack (FileNotFoundError, ValueError when it is not there)."""
        if not meta.get("pack"):
            raise FileNotFoundError(f"chunk {meta.get('chunk_id')} has no pack (acknowledged when it was planned)")
        start = int(meta["offset"])
        end = start + int(meta["length"])
        key = self.pack_key(meta["pack"])
        if "body_bytes" not in meta:
            return decode_chunk(self.store.get_range(key, start, end))
        # The meta line and the body read apart: splitting one read copied every body once more,
        # a megabyte of fresh pages per Scrunch request.
        split = end - int(meta["body_bytes"])
        if not start < split <= end:
            raise ValueError(f"chunk {meta.get('chunk_id')}: its plan's offsets do not hold its body")
        head = self.store.get_range(key, start, split)
        if not head.endswith(b"\n"):
            raise ValueError(f"chunk {meta.get('chunk_id')}: the pack does not hold it where its plan says (torn)")
        return _chunk_of(head[:-1], self.store.get_range(key, split, end))

    def find_chunk(self, chunk_id: str) -> Chunk:
        """A planned chunk by id (for tools and tests; delivery keeps a `PlanIndex`)."""
        meta = PlanIndex(self).meta(chunk_id)
        if meta is None:
            raise FileNotFoundError(f"no plan under {self.prefix} has chunk {chunk_id}")
        return self.read_chunk(meta)

    def drop_pack_if_done(self, plan: dict[str, Any], done: Callable[[str], bool]) -> bool:
        """Remove a plan's pack once every chunk in it is acknowledged or expired (dead letters keep
        it: a later run resends them). True if it was removed."""
        packed = [c["chunk_id"] for c in plan.get("chunks", []) if "offset" in c]
        if not plan.get("pack") or not all(done(c) for c in reversed(packed)):  # the last chunks finish last
            return False
        self.delete_pack(plan["pack"])
        return True

    # a chunk's records
    def acked(self, chunk_id: str) -> bool:
        return self.store.exists(self._key("acks", f"{chunk_id}.json"))

    def expired(self, chunk_id: str) -> bool:
        return self.store.exists(self._key("too_old", f"{chunk_id}.json"))

    def finished(self, chunk_id: str) -> bool:
        """Acknowledged or too old: never sent again."""
        return self.acked(chunk_id) or self.expired(chunk_id)

    def read_ack(self, chunk_id: str) -> dict[str, Any] | None:
        return self.store.get_json_or_none(self._key("acks", f"{chunk_id}.json"))

    def read_dead_letter(self, chunk_id: str) -> dict[str, Any] | None:
        return self.store.get_json_or_none(self._key("dead", f"{chunk_id}.json"))

    def ack(self, record: Ack) -> None:
        """Record a 2xx (fsynced with the others at most `ACK_SYNC_S` later, or at `flush_acks`)."""
        with self._acks_lock:
            if self._acks is None:
                self._acks = AckSync(self.store)
        self._acks.put(self._key("acks", f"{record.chunk_id}.json"), record.as_dict())
        self.store.delete(self._key("dead", f"{record.chunk_id}.json"))

    def flush_acks(self) -> None:
        if self._acks is not None:
            self._acks.flush()

    def dead_letter(self, record: DeadLetter) -> None:
        self.store.put_json(self._key("dead", f"{record.chunk_id}.json"), record.as_dict())

    def mark_too_old(self, record: TooOld) -> None:
        self.store.put_json(self._key("too_old", f"{record.chunk_id}.json"), record.as_dict())
        self.store.delete(self._key("dead", f"{record.chunk_id}.json"))

    def forget(self, chunk_id: str) -> None:
        """Drop a superseded chunk's dead letter and too-old mark: a new plan replaces it."""
        for kind in ("dead", "too_old"):
            self.store.delete(self._key(kind, f"{chunk_id}.json"))

    def _ids(self, kind: str) -> list[str]:
        names = (key.rsplit("/", 1)[-1] for key in self.store.list(self._key(kind, "")))
        return [n[: -len(".json")] for n in names if n.endswith(".json")]

    def acked_ids(self) -> list[str]:
        return self._ids("acks")

    def too_old_ids(self) -> list[str]:
        return self._ids("too_old")

    # the destination's stop marker, for the run
    def stopped(self, run_id: str) -> bool:
        return self.store.exists(self.stop_key(run_id))

    def stop(self, record: Stopped) -> None:
        self.store.put_json(self.stop_key(record.run_id), record.as_dict())

    # leases (leases.py decides who holds one)
    def create_lease(self, record: LeaseRecord) -> bool:
        """Atomic create (lost in an OS crash = not held): False when that generation exists."""
        return self.store.create_exclusive(self.lease_key(record.unit, record.gen), record.encode(), durable=False)

    def read_lease(self, unit: str, gen: int) -> Any:
        """The lease's JSON (FileNotFoundError when released; orjson.JSONDecodeError when torn)."""
        return self.store.get_json(self.lease_key(unit, gen))

    def renew_lease(self, record: LeaseRecord) -> None:
        self.store.put_bytes(self.lease_key(record.unit, record.gen), record.encode(), durable=False)

    def delete_lease(self, unit: str, gen: int) -> None:
        self.store.delete(self.lease_key(unit, gen))


class PlanIndex:
    """Chunk id -> its plan's chunk meta (object, index, pack, offset, length), read from the
    date's plans on first use and again after a re-plan. `of` keeps it for the process's next
    delivery groups of the same date (a backfill delivers dozens): a stale entry costs only a
    refresh, because a chunk read through it must still match its id's hash."""

    _cache: dict[tuple[str, str], PlanIndex] = {}
    _cache_lock = threading.Lock()
    CACHED = 8  # dates x destinations x sites; a few suffice for a run that goes date by date

    @classmethod
    def of(cls, ledger: Ledger) -> PlanIndex:
        key = (ledger.store.root_url, ledger.prefix)
        with cls._cache_lock:
            index = cls._cache.pop(key, None) or cls(ledger)
            cls._cache[key] = index  # most recent last
            while len(cls._cache) > cls.CACHED:
                cls._cache.pop(next(iter(cls._cache)))
        return index

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._metas: dict[str, dict[str, Any]] | None = None
        self._plans: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def refresh(self) -> None:
        metas: dict[str, dict[str, Any]] = {}
        plans: dict[str, dict[str, Any]] = {}
        for plan in self.ledger.plans():
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
        """The lease unit (`lease_unit`); a chunk no plan lists is its own."""
        meta = self.meta(cid) if per_lease > 1 else None
        return cid if meta is None else lease_unit(meta, per_lease)

    def plans_of(self, cids: Sequence[str]) -> list[dict[str, Any]]:
        oids = {m["object_id"] for c in cids if (m := self.meta(c)) is not None}
        return [self._plans[o] for o in sorted(oids) if o in self._plans]


# Reading every ledger back (the run summary, the query views, the report)

_LEDGER_KEY = re.compile(
    rf"^{ROOT}/([^/]+)/site=([^/]+)/date=(\d{{4}}-\d{{2}}-\d{{2}})/(plans|acks|dead|too_old)/([^/]+)\.json$")


@dataclass
class Contents:
    """One ledger's plans and the chunk ids of its acks, dead letters and too-old marks."""

    ledger: Ledger
    plans: list[dict[str, Any]] = field(default_factory=list)
    acks: set[str] = field(default_factory=set)
    dead: set[str] = field(default_factory=set)
    too_old: set[str] = field(default_factory=set)

    def outcome(self, cid: str, held: bool) -> Outcome:
        return Outcome.of_chunk(acked=cid in self.acks, too_old=cid in self.too_old, dead=cid in self.dead,
                                held=held)


def _subdirs(store: Store, prefix: str) -> list[str]:
    try:
        entries = store.fs.ls(store.path(prefix), detail=True)
    except FileNotFoundError:
        return []
    return sorted(e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "directory")


def _ledger_keys(store: Store, days: list[str] | None) -> list[str]:
    if days is None:
        return store.list(f"{ROOT}/")
    return [k for dest in _subdirs(store, ROOT) for site in _subdirs(store, f"{ROOT}/{dest}")
            for d in days for k in store.list(f"{ROOT}/{dest}/{site}/date={d}/")]


def read_ledgers(store: Store, days: list[str] | None) -> list[Contents]:
    """Every ledger of the dates (all dates: None) with its records, in (destination, site, date) order."""
    parts: dict[tuple[str, str, str], Contents] = {}
    for key in _ledger_keys(store, days):
        m = _LEDGER_KEY.match(key)
        if not m:
            continue
        dest, site, day, kind, name = m.groups()
        p = parts.get((dest, site, day))
        if p is None:
            p = parts[(dest, site, day)] = Contents(Ledger(store, dest, site, day))
        if kind == "plans":
            p.plans.append(store.get_json(key))
        else:
            getattr(p, kind).add(name)
    return [parts[k] for k in sorted(parts)]


def ledger_rows(store: Store, days: list[str] | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(deliveries, dead letters) read back from the ledger: plans, acks, dead letters, too-old marks.

    The one rule for outcomes (the run summary aggregates these rows): only plans of object
    versions staged now count; a planned chunk's outcome is `Outcome.of_chunk`; events a
    destination does not take are counted per reason (not_selected, not_eligible, too_old).
    """
    current: dict[str, set[str]] = {}
    held: dict[str, dict[str, str]] = {}  # date -> object id -> why its source is held
    deliveries: list[dict[str, Any]] = []
    dead_letters: list[dict[str, Any]] = []
    for p in read_ledgers(store, days):
        lg = p.ledger
        day = lg.date
        if day not in current:
            current[day] = {oid for oid, m in read_manifests(store, day).items() if m.get("status") == STAGED}
            held[day] = held_objects(store, day)
        base = {"destination": lg.destination, "site": lg.site, "date": date.fromisoformat(day)}
        verdict = held_partitions(store, day, [lg.site]).get(lg.site)
        site_hold = "; ".join(verdict.get("failures", [])) or "data quality failed" if verdict else None
        for plan in sorted(p.plans, key=lambda x: x.get("object_id", "")):
            if plan.get("object_id") not in current[day]:
                continue  # a replaced object version: its successor's plan counts instead
            hold = site_hold or held[day].get(plan.get("object_id"))
            deliveries += _plan_rows(p, plan, base, hold, dead_letters)
    return deliveries, dead_letters


def _plan_rows(p: Contents, plan: dict[str, Any], base: dict[str, Any], hold: str | None,
               dead_letters: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One plan's rows: events and chunks per (outcome, reason); its dead letters go to `dead_letters`."""
    tally: dict[tuple[Outcome, str | None], list[int]] = defaultdict(lambda: [0, 0])
    for c in plan.get("chunks", []):
        outcome = p.outcome(c["chunk_id"], held=hold is not None)
        reason = {Outcome.TOO_OLD: plan.get("too_old_before"), Outcome.HELD: hold}.get(outcome)
        if outcome is Outcome.FAILED:
            rec = p.ledger.read_dead_letter(c["chunk_id"]) or {}
            status = rec.get("status")
            reason = f"HTTP {status}" if status else str(rec.get("outcome") or "no answer")
            dead_letters.append({
                **base, "chunk_id": c["chunk_id"], "object_id": plan.get("object_id"), "events": c["events"],
                "http_status": status, "outcome": rec.get("outcome"), "attempts": rec.get("attempts"),
                "vendor_answer": rec.get("vendor_answer"), "failed_at": as_utc(rec.get("failed_at")),
                "run_id": rec.get("run_id"),
            })
        tally[(outcome, reason)][0] += c["events"]
        tally[(outcome, reason)][1] += 1
    for kind in (Outcome.NOT_SELECTED, Outcome.NOT_ELIGIBLE):
        for reason, n in (plan.get(kind) or {}).items():
            tally[(kind, reason)][0] += n
    if plan.get("carried"):  # acknowledged for an earlier version of the object (plan.py)
        tally[(Outcome.DELIVERED, None)][0] += plan["carried"]
    if plan.get("too_old"):
        tally[(Outcome.TOO_OLD, plan.get("too_old_before"))][0] += plan["too_old"]
    obj = {**base, "object_id": plan.get("object_id"), "source_object": plan.get("source_object")}
    return [{**obj, "outcome": outcome, "reason": reason, "events": events, "chunks": chunks}
            for (outcome, reason), (events, chunks) in tally.items()]
