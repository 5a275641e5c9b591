"""Send a group of planned chunks to a vendor; ack, dead-letter or expire each one.

An ack (with the chunk's line numbers) is written to the store only after the vendor's 2xx. A
crash between the 2xx and the ack resends that chunk on the next run: duplicates are bounded by
the requests in flight (`delivery.concurrency` per running task).
On local disk, acks are fsynced together every `ACK_SYNC_S` and when the task ends (`AckSync`, a
group commit, as Vector's disk buffer does): a killed process loses none of them (the operating
system holds them), and an operating-system crash or power cut can lose at most that last half
second of acks, whose chunks are then sent again: duplicates, never losses. One fsync per ack
cost more than the request it recorded for small-batch vendors.
401/403/404 stop the destination for the rest of the run (every further request would fail the
same way): the group stops, and a marker under `_delivery/<dest>/stopped/<run_id>.json` makes the
run's later groups (other mapped tasks included) leave their chunks pending, not failed. The next
run tries again. For vendors that stamp receive time, a chunk whose oldest event has become
older than the destination's max age while it waited (a failed key fixed days later) is not sent:
it is recorded as too old, like the events the planner already held back.

Workers running side by side (several command-line runs, or delivery tasks of overlapping Airflow
runs on different workers) never send one chunk at the same time: each takes a lease before
sending (`Leases`), and a chunk leased by a live worker on this machine is left to it and counted
as being sent elsewhere (`leased_elsewhere_events`), not lost; one leased on another host is
pending (that host may be dead). A retried Airflow task takes over its earlier try's leases
(`LeaseOwner`), so a lost worker costs a retry, not a lease's lifetime. A lease covers one chunk, or for small-request vendors a
run of `chunks_per_lease` consecutive chunks of one object (a lease file per 100-visit request
cost more than the request), sent one after another by the thread that holds it.
Chunks are read from their object's pack at the offset the plan records; a pack is removed when
every chunk of its plan is acknowledged or expired.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from agent_traffic.client import USER_AGENT, http_pool
from agent_traffic.config import Config, Destination
from agent_traffic.errors import SecretMissing
from agent_traffic.extract import STAGED, manifest_key
from agent_traffic.plan import (
    Chunk,
    ChunkGroup,
    PlanIndex,
    age_cutoff,
    chunk_intact,
    drop_pack_if_done,
    ledger_prefix,
    pack_key,
    plan_key,
    plan_object,
    read_chunk,
)
from agent_traffic.ratelimit import TokenBucket, limiter_for
from agent_traffic.redact import redact_url
from agent_traffic.retry import STOP, SUCCESS, send
from agent_traffic.secrets import Secret
from agent_traffic.storage import Store
from agent_traffic.vendors import vendor

log = logging.getLogger("agent_traffic")


@dataclass
class GroupResult:
    destination: str
    site: str
    date: str
    chunks_sent: int = 0
    chunks_already_acked: int = 0  # acked (or expired) by an earlier run or another worker
    chunks_leased_elsewhere: int = 0  # another live worker holds the lease: it sends them
    leased_elsewhere_events: int = 0  # ... and their events: pending here, not lost
    delivered_events: int = 0
    failed_events: int = 0
    pending_events: int = 0
    too_old_events: int = 0
    dry_run_events: int = 0
    requests: int = 0
    retries: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    possible_duplicates: int = 0
    throttled_s: float = 0.0
    failures: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d = self.__dict__.copy()
        d["retries"] = dict(self.retries)
        d["statuses"] = dict(self.statuses)
        d["throttled_s"] = round(self.throttled_s, 3)
        return d

    def line(self) -> str:
        """One log line: what this group did."""
        pending = self.pending_events + self.leased_elsewhere_events
        elsewhere = (f" ({self.leased_elsewhere_events} being sent by another worker)"
                     if self.leased_elsewhere_events else "")
        return (f"{self.destination} {self.site} {self.date}: {self.delivered_events} delivered, "
                f"{self.failed_events} failed, {pending} pending{elsewhere}, {self.too_old_events} too old, "
                f"{self.requests} request(s), {self.possible_duplicates} possible duplicate(s)"
                + (f", {self.dry_run_events} written to the outbox" if self.dry_run_events else ""))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


ACK_SYNC_S = 0.5


class AckSync:
    """Acks written without an fsync each, made durable together at most `interval_s` later."""

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


def lease_key(prefix: str, unit: str, gen: int) -> str:
    return f"{prefix}/leases/{unit}.{gen}.json"


@dataclass(frozen=True)
class LeaseOwner:
    """Who holds a lease beyond host and pid: the run, the task and its try. A scheduler that
    retries a task whose worker died (on any host) runs a later try of the same task, which takes
    over the earlier try's leases at once instead of waiting for them to expire."""

    run_id: str
    task: str
    attempt: int

    def as_dict(self) -> dict[str, Any]:
        return {"owner_run": self.run_id, "owner_task": self.task, "owner_try": self.attempt}

    def supersedes(self, lease: dict[str, Any]) -> bool:
        try:
            return (lease.get("owner_run") == self.run_id and lease.get("owner_task") == self.task
                    and int(lease.get("owner_try", self.attempt)) < self.attempt)
        except (TypeError, ValueError):
            return False


def _process_gone(pid: int) -> bool:
    """True only when no process has this id on this machine (a permission error means one does)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


class Leases:
    """One worker's claims on lease units (a chunk, or a run of an object's chunks), so parallel
    workers never send the same chunk at once.

    Before sending unit `c` a worker creates `<ledger>/leases/<c>.<gen>.json` with the store's
    atomic create (O_EXCL-like locally, `If-None-Match` on S3): of two workers racing, one wins.
    The loser reads the lease: while it has not expired, the chunk is the holder's; once it has
    (the holder died), the next generation `<c>.<gen+1>.json` is claimed, by one worker again.
    Each claim carries a random token, so a claim whose conditional PUT was retried after a lost
    answer (and failed, having succeeded the first time) recognises its own lease.
    A lease taken on this machine by a process that no longer exists has expired at once, so a
    killed command-line run is resumed without waiting out the lease. The lease lasts
    `delivery.lease_s` (longer than any send with its retries), and a holder sending a unit's
    chunks one after another renews it (`keep`) before the next send could outlast it, so a live
    holder never loses its unit; expiry compares wall clocks, so workers' clocks must agree to
    well within that. Released (deleted) once the unit's chunks are acked, dead-lettered or
    expired; a lease left behind by a crash only delays them until it expires.
    """

    MAX_TRIES = 50  # claims lost to workers that released between our create and our read

    def __init__(self, store: Store, prefix: str, run_id: str, ttl_s: float, longest_send_s: float | None = None,
                 owner: LeaseOwner | None = None) -> None:
        self.store = store
        self.prefix = prefix
        self.run_id = run_id
        self.owner = owner
        self.ttl = timedelta(seconds=ttl_s)
        send = ttl_s / 2 if longest_send_s is None else min(longest_send_s, ttl_s)
        self.renew_within = timedelta(seconds=send + (ttl_s - send) / 2)  # renewed with half the slack left
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self._held: dict[str, tuple[int, str, datetime]] = {}  # unit -> (gen, token, expires)
        self._held_elsewhere: dict[str, bool] = {}  # unit -> its live holder runs on this machine
        self._lock = threading.Lock()

    def _body(self, unit: str, gen: int, token: str, now: datetime) -> bytes:
        return orjson.dumps({
            "unit": unit, "gen": gen, "token": token, "run_id": self.run_id, "host": self.host,
            "pid": self.pid, **(self.owner.as_dict() if self.owner else {}),
            "claimed_at": now.isoformat(timespec="seconds"),
            "expires_at": (now + self.ttl).isoformat(timespec="seconds"),
        })

    def _expired(self, lease: dict[str, Any] | None, now: datetime) -> bool:
        """Unreadable counts as expired: atomic creates never leave one, and a chunk must not stay stuck."""
        try:
            expires = datetime.fromisoformat(lease["expires_at"])  # type: ignore[index]
            host, pid = lease["host"], int(lease["pid"])  # type: ignore[index]
        except (TypeError, KeyError, ValueError):
            return True
        if expires <= now:
            return True
        if self.owner is not None and self.owner.supersedes(lease):  # type: ignore[arg-type]
            return True  # an earlier try of this very task, on whichever host: it is over
        return host == self.host and pid != self.pid and _process_gone(pid)

    def held_here(self, unit: str) -> bool:
        """After a lost claim: the unit's holder is a live process on this machine (it sends the
        unit), not one elsewhere whose life this worker cannot check."""
        with self._lock:
            return self._held_elsewhere.get(unit, False)

    def claim(self, unit: str) -> bool:
        """True if this worker now owns the unit; False if a live worker does."""
        gen = 0
        for _ in range(self.MAX_TRIES):
            key = lease_key(self.prefix, unit, gen)
            now = datetime.now(UTC)
            token = uuid.uuid4().hex
            body = self._body(unit, gen, token, now)
            if self.store.create_exclusive(key, body, durable=False):  # lost in an OS crash = not held
                with self._lock:
                    self._held[unit] = (gen, token, now + self.ttl)
                return True
            try:
                lease = self.store.get_json(key)
            except FileNotFoundError:
                continue  # released between our create and our read: try this generation again
            except orjson.JSONDecodeError:
                lease = None
            if isinstance(lease, dict) and lease.get("token") == token:
                # ours: a conditional PUT retried after a lost answer finds its own first write
                with self._lock:
                    self._held[unit] = (gen, token, now + self.ttl)
                return True
            if not self._expired(lease, now):
                with self._lock:
                    self._held_elsewhere[unit] = isinstance(lease, dict) and lease.get("host") == self.host
                return False
            gen += 1
        return False

    def keep(self, unit: str) -> None:
        """Before the next send of a held unit: renew the lease if that send could outlast it
        (rare: only after slow sends or long retries, so a lease costs no write per chunk)."""
        with self._lock:
            held = self._held.get(unit)
        now = datetime.now(UTC)
        if held is None or now + self.renew_within < held[2]:
            return
        gen, token, _ = held
        self.store.put_bytes(lease_key(self.prefix, unit, gen), self._body(unit, gen, token, now), durable=False)
        with self._lock:
            self._held[unit] = (gen, token, now + self.ttl)

    def release(self, unit: str) -> None:
        """Delete our lease and the expired ones below it (best effort: an expired lease is harmless)."""
        with self._lock:
            held = self._held.pop(unit, None)
        if held is None:
            return
        for g in range(held[0], -1, -1):
            with contextlib.suppress(OSError):
                self.store.delete(lease_key(self.prefix, unit, g))


def _limiter(dest: Destination) -> TokenBucket | None:
    """HitKeep limits each client; the bucket is per instance, shared by the process's threads."""
    if dest.vendor != "hitkeep":
        return None
    return limiter_for(dest.endpoint_base, dest.rate_limit_per_s, dest.rate_limit_burst)


def _clean_key(dest: Destination, secret: Secret) -> Secret:
    """A key pasted with a trailing newline is the same key; one with control characters inside
    would make the HTTP library quote it back in an exception, so it is refused (unquoted)."""
    value = secret.reveal().strip()
    if not value or any(ord(c) < 0x21 or ord(c) == 0x7F for c in value):
        raise SecretMissing(
            f"destination {dest.name!r}: the API key is empty or contains spaces or control characters; "
            "store the key exactly as the vendor shows it"
        )
    return Secret(value)


def deliver_group(
    cfg: Config,
    store: Store,
    group: ChunkGroup,
    secret: Secret | None,
    *,
    run_id: str,
    dry_run: bool = False,
    outbox: Store | None = None,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
    now: datetime | None = None,
    lease_owner: LeaseOwner | None = None,
) -> GroupResult:
    dest = cfg.destination(group.destination)
    v = vendor(dest.vendor)
    prefix = ledger_prefix(group.destination, group.site, group.date)
    res = GroupResult(group.destination, group.site, group.date)
    todo: list[str] = []
    for cid in group.chunk_ids:  # a retried task finds some of its chunks done already
        if store.exists(f"{prefix}/acks/{cid}.json"):
            res.chunks_already_acked += 1
        elif not store.exists(f"{prefix}/too_old/{cid}.json"):
            todo.append(cid)
    cutoff = age_cutoff(dest, now or datetime.now(UTC))
    lock = threading.Lock()
    stop_marker = f"_delivery/{dest.name}/stopped/{run_id}.json"
    index = PlanIndex.of(store, prefix)
    finished: set[str] = set()  # acked or expired by this group: its packs may go

    def done(cid: str) -> bool:
        """Acked or expired meanwhile, by another worker (or a run that overlapped this one)."""
        return store.exists(f"{prefix}/acks/{cid}.json") or store.exists(f"{prefix}/too_old/{cid}.json")

    replanned: set[str] = set()  # chunks whose bytes were unusable and are not in the rebuilt plan
    replan_lock = threading.Lock()

    def read(cid: str) -> Chunk | None:
        """The chunk from its pack if it holds the bytes it was planned with (its id hashes them)."""
        meta = index.meta(cid)
        if meta is None:
            return None
        try:
            ch = read_chunk(store, prefix, meta)
        except (FileNotFoundError, ValueError, TypeError, KeyError):
            return None  # missing, or torn by a crash: packs are written without fsync
        return ch if ch.chunk_id == cid and chunk_intact(ch, dest.name, group.site) else None

    def load(cid: str) -> Chunk | None:
        """The chunk, or None when it was finished meanwhile or cannot be rebuilt as planned (then
        counted pending: the next run's plan has its events)."""
        ch = read(cid)
        if ch is not None or done(cid):
            return ch
        with replan_lock:
            index.refresh()  # another thread or worker may have planned this object again meanwhile
            ch = read(cid)
            if ch is None:
                ch = replan(cid)
        return ch

    def replan(cid: str) -> Chunk | None:
        """Plan the chunk's object again: its chunks are rebuilt byte for byte from the staged
        events (acked ones kept, never resent). If the rebuilt plan differs (a receive-time
        vendor's age cutoff moved), the chunk's events are pending in new chunks."""
        meta = index.meta(cid)
        events = meta["events"] if meta else 0
        if meta is not None:
            oid = meta["object_id"]
            current = store.get_json_or_none(plan_key(prefix, oid))
            if current is None or current.get("pack") == meta.get("pack"):  # nobody healed it meanwhile
                log.warning("%s %s %s: chunk %s is missing or damaged; planning object %s again",
                            dest.name, group.site, group.date, cid, oid)
                if meta.get("pack"):
                    store.delete(pack_key(prefix, meta["pack"]))  # damaged: the new plan writes a new one
                store.delete(plan_key(prefix, oid))
                manifest = store.get_json_or_none(manifest_key(group.date, oid))
                if manifest is not None and manifest.get("status") == STAGED:
                    plan_object(store, cfg.site(group.site), dest, manifest, now=now)
            index.refresh()
        ch = read(cid)
        if ch is None and not done(cid):
            replanned.add(cid)
            with lock:
                res.pending_events += events
        return ch

    def finished_elsewhere(cid: str) -> None:
        """`load` found nothing to send: acked or expired meanwhile (a replanned chunk is counted pending)."""
        with lock:
            res.chunks_already_acked += cid not in replanned

    def expire(ch: Chunk) -> bool:
        """Too old to send now: record it, so it is counted and never sent unless the user opts in."""
        if cutoff is None or ch.oldest_ts >= cutoff.timestamp():
            return False
        if not dry_run:
            store.put_json(f"{prefix}/too_old/{ch.chunk_id}.json", {
                "chunk_id": ch.chunk_id, "object_id": ch.object_id, "events": ch.events,
                "oldest_event": datetime.fromtimestamp(ch.oldest_ts, UTC).isoformat(timespec="seconds"),
                "cutoff": cutoff.isoformat(timespec="seconds"), "run_id": run_id, "expired_at": _now(),
            })
            store.delete(f"{prefix}/dead/{ch.chunk_id}.json")
        with lock:
            res.too_old_events += ch.events
            finished.add(ch.chunk_id)
        return True

    if dry_run:
        box = outbox or store
        for cid in todo:
            ch = load(cid)
            if ch is None:
                finished_elsewhere(cid)
                continue
            if expire(ch):
                continue
            ext = "ndjson" if ch.content_type.endswith("ndjson") else "json"
            box.put_bytes(f"{run_id}/{dest.name}/{group.date}/{ch.chunk_id}.{ext}", ch.body)
            box.put_json(
                f"{run_id}/{dest.name}/{group.date}/{ch.chunk_id}.request.json",
                {"method": "POST", "url": redact_url(v.url(dest)), "content_type": ch.content_type,
                 "events": ch.events, "auth": "(header omitted)"},
            )
            res.dry_run_events += ch.events
        return res
    if secret is None:
        raise ValueError("a secret is needed unless dry_run")
    key = _clean_key(dest, secret)
    stop = threading.Event()
    if store.exists(stop_marker):
        stop.set()  # an earlier group of this run was told the key, grant or site id is wrong
    limiter = _limiter(dest)
    url = v.url(dest)
    http = http_pool(url, cfg.delivery.concurrency)
    leases = Leases(store, prefix, run_id, cfg.delivery.lease_s, cfg.delivery.longest_send_s, lease_owner)
    acks = AckSync(store)

    def skip(cid: str, leased: bool) -> None:
        """Not sent by this worker: pending (the destination stopped, or another worker has it).
        Only a live holder on this machine counts as sending it: one elsewhere may be dead."""
        ch = load(cid)
        if ch is None:
            return finished_elsewhere(cid)
        with lock:
            if leased:
                res.chunks_leased_elsewhere += 1
                res.leased_elsewhere_events += ch.events
            else:
                res.pending_events += ch.events

    def one(unit: tuple[str, list[str]]) -> None:
        """Send a lease unit's chunks in order, under one lease."""
        name, cids = unit
        if stop.is_set():
            for cid in cids:
                skip(cid, leased=False)
            return
        if not leases.claim(name):
            here = leases.held_here(name)
            for cid in cids:
                skip(cid, leased=here)
            return
        try:
            for cid in cids:
                if stop.is_set():
                    skip(cid, leased=False)
                    continue
                leases.keep(name)
                if done(cid):  # finished by another worker between our first look and our claim
                    with lock:
                        res.chunks_already_acked += 1
                        finished.add(cid)
                    continue
                ch = load(cid)
                if ch is None:
                    finished_elsewhere(cid)
                    continue
                send_chunk(ch)
        finally:
            leases.release(name)

    def send_chunk(ch: Chunk) -> None:
        """Send a chunk this worker holds the lease on; ack, dead-letter or expire it."""
        if expire(ch):
            return
        headers = {"User-Agent": USER_AGENT, "Content-Type": ch.content_type, **v.auth_headers(key)}
        r = send(http, url, ch.body, headers, cfg.delivery, v.success, sleep=sleep, rng=rng,
                 should_stop=stop.is_set, before_attempt=limiter.acquire if limiter else None)
        with lock:
            res.requests += r.attempts
            res.retries.update(r.retries_by_cause)
            res.possible_duplicates += r.possible_duplicates
            res.throttled_s += r.throttled_s
            res.statuses[str(r.status) if r.status else "error"] += 1
        if r.outcome == SUCCESS:
            acks.put(f"{prefix}/acks/{ch.chunk_id}.json", {
                "chunk_id": ch.chunk_id, "object_id": ch.object_id, "index": ch.index,
                "events": ch.events, "first_line": ch.first_line, "last_line": ch.last_line,
                "lines": ch.lines, "status": r.status, "attempts": r.attempts, "acked_at": _now(),
                "run_id": run_id,
            })
            store.delete(f"{prefix}/dead/{ch.chunk_id}.json")
            with lock:
                res.chunks_sent += 1
                res.delivered_events += ch.events
                finished.add(ch.chunk_id)
            return
        if r.outcome == STOP and not stop.is_set():
            stop.set()
            store.put_json(stop_marker, {"destination": dest.name, "status": r.status,
                                         "vendor_answer": r.body, "run_id": run_id, "at": _now()})
        failure = {
            "chunk_id": ch.chunk_id, "object_id": ch.object_id, "events": ch.events,
            "status": r.status, "vendor_answer": r.body, "attempts": r.attempts,
            "outcome": r.outcome, "failed_at": _now(), "run_id": run_id,
        }
        store.put_json(f"{prefix}/dead/{ch.chunk_id}.json", failure)
        with lock:
            res.failed_events += ch.events
            res.failures.append(failure)

    if any(index.meta(cid) is None for cid in todo):
        index.refresh()  # planned since this process last read the plans: same lease runs as other workers
    units: dict[str, list[str]] = {}
    for cid in todo:
        units.setdefault(index.unit(cid, v.chunks_per_lease), []).append(cid)
    try:
        with ThreadPoolExecutor(max_workers=cfg.delivery.concurrency) as pool:
            list(pool.map(one, units.items()))
    finally:
        acks.flush()
        http.clear()
    for plan in index.plans_of(group.chunk_ids):  # the packs this group emptied
        drop_pack_if_done(store, prefix, plan, lambda c: c in finished or done(c))
    return res
