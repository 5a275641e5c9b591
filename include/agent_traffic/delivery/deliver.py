"""Send a group of planned chunks to a vendor; ack, dead-letter or expire each one.

An ack (with the chunk's line numbers) is written to the store only after the vendor's 2xx. A
crash between the 2xx and the ack resends that chunk on the next run: duplicates are bounded by
the requests in flight (`delivery.concurrency` per running task).
On local disk, acks are fsynced together every `ACK_SYNC_S` and when the task ends
(`ledger.AckSync`, a group commit, as Vector's disk buffer does): a killed process loses none of them (the operating
system holds them), and an operating-system crash or power cut can lose at most that last half
second of acks, whose chunks are then sent again: duplicates, never losses. One fsync per ack
cost more than the request it recorded for small-batch vendors.
401/403/404 stop the destination for the rest of the run (every further request would fail the
same way): the group stops, and the destination's stop marker for the run (`Ledger.stop`) makes the
run's later groups (other mapped tasks included) leave their chunks pending, not failed. The next
run tries again. For vendors that stamp receive time, a chunk whose oldest event has become
older than the destination's max age while it waited (a failed key fixed days later) is not sent:
it is recorded as too old, like the events the planner already held back.

Workers running side by side (several command-line runs, or delivery tasks of overlapping Airflow
runs on different workers) never send one chunk at the same time: each takes a lease before
sending (leases.py). A lease covers one chunk, or for small-request vendors a run of
`chunks_per_lease` consecutive chunks of one object (a lease file per 100-visit request cost more
than the request), sent one after another by the thread that holds it.
Chunks are read from their object's pack at the offset the plan records; a pack is removed when
every chunk of its plan is acknowledged or expired.

`GroupSender` holds one group's state (its ledger, plan index, counts, stop flag, connection) and
sends it, one step a method; `retry.send` drives each request.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import urllib3

from agent_traffic import layout
from agent_traffic.config import Config, Destination
from agent_traffic.delivery.client import USER_AGENT, http_pool
from agent_traffic.delivery.leases import LeaseOwner, Leases
from agent_traffic.delivery.ledger import (
    Ack,
    Chunk,
    DeadLetter,
    Ledger,
    PlanIndex,
    Stopped,
    TooOld,
    now_iso,
)
from agent_traffic.delivery.plan import ChunkGroup, age_cutoff, chunk_intact, plan_object
from agent_traffic.delivery.ratelimit import TokenBucket, limiter_for
from agent_traffic.delivery.retry import Decision, SendResult, send
from agent_traffic.delivery.vendors import vendor
from agent_traffic.errors import SecretMissing
from agent_traffic.ingest.discover import STAGED
from agent_traffic.ingest.storage import Store
from agent_traffic.redact import redact_url
from agent_traffic.secrets import Secret

log = logging.getLogger("agent_traffic")

__all__ = ["GroupResult", "GroupSender", "deliver_group"]

#: Bodies smaller than this are hashed even from a pack this process wrote: hashing them costs
#: less than the `stat` that shows the pack unchanged (HitKeep's single events, Known Agents' 100).
TRUST_MIN_BYTES = 16 * 1024


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


def _limiter(dest: Destination) -> TokenBucket | None:
    """A vendor that limits each client (HitKeep): the bucket is per instance, shared by the process's threads."""
    if dest.spec.rate_limit is None:
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


@dataclass
class _Connection:
    """What sending needs beyond the group: the key, the URL, the pool, the limiter, the leases."""

    key: Secret
    url: str
    http: urllib3.PoolManager
    limiter: TokenBucket | None
    leases: Leases


class GroupSender:
    """One mapped task's chunks of one destination, site and date, and what became of them.

    Threads share this object: counts change under `_lock`, re-plans happen under `_replan_lock`,
    and `stop` is set when the destination answers 401/403/404.
    """

    def __init__(self, cfg: Config, store: Store, group: ChunkGroup, *, run_id: str, dry_run: bool = False,
                 sleep: Callable[[float], None] = time.sleep, rng: random.Random | None = None,
                 now: datetime | None = None) -> None:
        self.cfg, self.store, self.group, self.run_id, self.dry_run = cfg, store, group, run_id, dry_run
        self.sleep, self.rng, self.now = sleep, rng, now
        self.dest = cfg.destination(group.destination)
        self.vendor = vendor(self.dest.vendor)
        self.ledger = Ledger.of(store, group)
        self.res = GroupResult(group.destination, group.site, group.date)
        self.cutoff = age_cutoff(self.dest, now or datetime.now(UTC))
        self.index = PlanIndex.of(self.ledger)
        self.finished: set[str] = set()  # acked or expired by this group: its packs may go
        self.replanned: set[str] = set()  # bytes unusable and not in the rebuilt plan: counted pending
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._replan_lock = threading.Lock()
        self._conn: _Connection | None = None

    # loading the group
    def todo(self) -> list[str]:
        """The group's chunks not finished yet (a retried task finds some of its chunks done already)."""
        todo = []
        for cid in self.group.chunk_ids:
            if self.ledger.acked(cid):
                self.res.chunks_already_acked += 1
            elif not self.ledger.expired(cid):
                todo.append(cid)
        return todo

    def _read(self, cid: str) -> Chunk | None:
        """The chunk from its pack if it holds the bytes it was planned with (its id hashes them;
        a pack this process wrote and finds unchanged holds them: `Ledger.pack_written_here`)."""
        meta = self.index.meta(cid)
        if meta is None:
            return None
        try:
            ch = self.ledger.read_chunk(meta)
        except (FileNotFoundError, ValueError, TypeError, KeyError):
            return None  # missing, or torn by a crash: packs are written without fsync
        if ch.chunk_id != cid or len(ch.body) != meta.get("body_bytes", len(ch.body)):
            return None
        trusted = len(ch.body) >= TRUST_MIN_BYTES and self.ledger.pack_written_here(meta["pack"])
        return ch if trusted or chunk_intact(ch, self.dest.name, self.group.site) else None

    def load(self, cid: str) -> Chunk | None:
        """The chunk, or None when it was finished meanwhile or cannot be rebuilt as planned (then
        counted pending: the next run's plan has its events)."""
        ch = self._read(cid)
        if ch is not None or self.ledger.finished(cid):
            return ch
        with self._replan_lock:
            self.index.refresh()  # another thread or worker may have planned this object again meanwhile
            ch = self._read(cid)
            return ch if ch is not None else self.replan(cid)

    def replan(self, cid: str) -> Chunk | None:
        """Plan the chunk's object again: its chunks are rebuilt byte for byte from the staged
        events (acked ones kept, never resent). If the rebuilt plan differs (a receive-time
        vendor's age cutoff moved), the chunk's events are pending in new chunks."""
        meta = self.index.meta(cid)
        if meta is not None:
            self._plan_again(cid, meta)
            self.index.refresh()
        ch = self._read(cid)
        if ch is None and not self.ledger.finished(cid):
            self.replanned.add(cid)
            with self._lock:
                self.res.pending_events += meta["events"] if meta else 0
        return ch

    def _plan_again(self, cid: str, meta: dict[str, Any]) -> None:
        oid = meta["object_id"]
        current = self.ledger.read_plan(oid)
        if current is not None and current.get("pack") != meta.get("pack"):
            return  # healed meanwhile by another thread or worker
        log.warning("%s %s %s: chunk %s is missing or damaged; planning object %s again",
                    self.dest.name, self.group.site, self.group.date, cid, oid)
        if meta.get("pack"):
            self.ledger.delete_pack(meta["pack"])  # damaged: the new plan writes a new one
        self.ledger.delete_plan(oid)
        manifest = self.store.get_json_or_none(layout.manifest_key(self.group.date, oid))
        if manifest is not None and manifest.get("status") == STAGED:
            plan_object(self.store, self.cfg.site(self.group.site), self.dest, manifest, now=self.now)

    def _finished_elsewhere(self, cid: str) -> None:
        """`load` found nothing to send: acked or expired meanwhile (a replanned chunk is counted pending)."""
        with self._lock:
            self.res.chunks_already_acked += cid not in self.replanned

    # expiring
    def expire(self, ch: Chunk) -> bool:
        """Too old to send now: record it, so it is counted and never sent unless the user opts in."""
        if self.cutoff is None or ch.oldest_ts >= self.cutoff.timestamp():
            return False
        if not self.dry_run:
            self.ledger.mark_too_old(TooOld(
                ch.chunk_id, ch.object_id, ch.events,
                datetime.fromtimestamp(ch.oldest_ts, UTC).isoformat(timespec="seconds"),
                self.cutoff.isoformat(timespec="seconds"), self.run_id, now_iso()))
        with self._lock:
            self.res.too_old_events += ch.events
            self.finished.add(ch.chunk_id)
        return True

    # a dry run
    def write_outbox(self, todo: list[str], box: Store) -> GroupResult:
        """The exact request bodies and their requests (headers omitted) into the outbox, nothing sent."""
        url = redact_url(self.vendor.url(self.dest))
        for cid in todo:
            ch = self.load(cid)
            if ch is None:
                self._finished_elsewhere(cid)
                continue
            if self.expire(ch):
                continue
            ext = "ndjson" if ch.content_type.endswith("ndjson") else "json"
            box.put_bytes(layout.outbox_key(self.run_id, self.dest.name, self.group.date, f"{ch.chunk_id}.{ext}"),
                          ch.body)
            box.put_json(layout.outbox_key(self.run_id, self.dest.name, self.group.date, f"{ch.chunk_id}.request.json"),
                         {"method": "POST", "url": url, "content_type": ch.content_type,
                          "events": ch.events, "auth": "(header omitted)"})
            self.res.dry_run_events += ch.events
        return self.res

    # sending
    def send_all(self, todo: list[str], secret: Secret, lease_owner: LeaseOwner | None = None) -> GroupResult:
        """Send the chunks a lease unit at a time, `delivery.concurrency` units at once; then finish."""
        key = _clean_key(self.dest, secret)
        if self.ledger.stopped(self.run_id):
            self.stop.set()  # an earlier group of this run was told the key, grant or site id is wrong
        url = self.vendor.url(self.dest)
        d = self.cfg.delivery
        self._conn = _Connection(key, url, http_pool(url, d.concurrency), _limiter(self.dest),
                                 Leases(self.ledger, self.run_id, d.lease_s, d.longest_send_s, lease_owner))
        try:
            with ThreadPoolExecutor(max_workers=d.concurrency) as pool:
                list(pool.map(self.send_unit, self.units(todo).items()))
        finally:
            self.ledger.flush_acks()
            self._conn.http.clear()
        return self.finish()

    def units(self, todo: list[str]) -> dict[str, list[str]]:
        """The chunks by lease unit, in order."""
        if any(self.index.meta(cid) is None for cid in todo):
            self.index.refresh()  # planned since this process last read the plans: same lease runs as other workers
        units: dict[str, list[str]] = {}
        for cid in todo:
            units.setdefault(self.index.unit(cid, self.vendor.chunks_per_lease), []).append(cid)
        return units

    def send_unit(self, unit: tuple[str, list[str]]) -> None:
        """Send a lease unit's chunks in order, under one lease."""
        name, cids = unit
        assert self._conn is not None
        leases = self._conn.leases
        if self.stop.is_set():
            return self._skip_all(cids, leased=False)
        if not leases.claim(name):
            return self._skip_all(cids, leased=leases.held_here(name))
        try:
            for cid in cids:
                if self.stop.is_set():
                    self._skip(cid, leased=False)
                    continue
                leases.keep(name)
                self._send_one(cid)
        finally:
            leases.release(name)

    def _send_one(self, cid: str) -> None:
        if self.ledger.finished(cid):  # finished by another worker between our first look and our claim
            with self._lock:
                self.res.chunks_already_acked += 1
                self.finished.add(cid)
            return
        ch = self.load(cid)
        if ch is None:
            self._finished_elsewhere(cid)
        elif not self.expire(ch):
            self.send_chunk(ch)

    def _skip_all(self, cids: list[str], leased: bool) -> None:
        for cid in cids:
            self._skip(cid, leased)

    def _skip(self, cid: str, leased: bool) -> None:
        """Not sent by this worker: pending (the destination stopped, or another worker has it).
        Only a live holder on this machine counts as sending it: one elsewhere may be dead."""
        ch = self.load(cid)
        if ch is None:
            return self._finished_elsewhere(cid)
        with self._lock:
            if leased:
                self.res.chunks_leased_elsewhere += 1
                self.res.leased_elsewhere_events += ch.events
            else:
                self.res.pending_events += ch.events

    def send_chunk(self, ch: Chunk) -> None:
        """Send a chunk this worker holds the lease on; ack or dead-letter it."""
        c = self._conn
        assert c is not None
        headers = {"User-Agent": USER_AGENT, "Content-Type": ch.content_type, **self.vendor.auth_headers(c.key)}
        r = send(c.http, c.url, ch.body, headers, self.cfg.delivery, self.vendor.success, sleep=self.sleep,
                 rng=self.rng, should_stop=self.stop.is_set,
                 before_attempt=c.limiter.acquire if c.limiter else None)
        with self._lock:
            self.res.requests += r.attempts
            self.res.retries.update(r.retries_by_cause)
            self.res.possible_duplicates += r.possible_duplicates
            self.res.throttled_s += r.throttled_s
            self.res.statuses[str(r.status) if r.status else "error"] += 1
        if r.outcome is Decision.SUCCESS:
            self._acked(ch, r)
        else:
            self._failed(ch, r)

    def _acked(self, ch: Chunk, r: SendResult) -> None:
        self.ledger.ack(Ack.of(ch, r.status, r.attempts, self.run_id))
        with self._lock:
            self.res.chunks_sent += 1
            self.res.delivered_events += ch.events
            self.finished.add(ch.chunk_id)

    def _failed(self, ch: Chunk, r: SendResult) -> None:
        """A dead letter with the vendor's answer; on 401/403/404 the destination stops for the run."""
        if r.outcome is Decision.STOP and not self.stop.is_set():
            self.stop.set()
            self.ledger.stop(Stopped(self.dest.name, r.status, r.body, self.run_id, now_iso()))
        dead = DeadLetter(ch.chunk_id, ch.object_id, ch.events, r.status, r.body, r.attempts, r.outcome.value,
                          now_iso(), self.run_id)
        self.ledger.dead_letter(dead)
        with self._lock:
            self.res.failed_events += ch.events
            self.res.failures.append(dead.as_dict())

    # finishing
    def finish(self) -> GroupResult:
        """Remove the packs this group emptied."""
        for plan in self.index.plans_of(self.group.chunk_ids):
            self.ledger.drop_pack_if_done(plan, lambda c: c in self.finished or self.ledger.finished(c))
        return self.res


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
    """Send one group (or with `dry_run`, write its requests to the outbox); see `GroupSender`."""
    sender = GroupSender(cfg, store, group, run_id=run_id, dry_run=dry_run, sleep=sleep, rng=rng, now=now)
    todo = sender.todo()
    if dry_run:
        return sender.write_outbox(todo, outbox or store)
    if secret is None:
        raise ValueError("a secret is needed unless dry_run")
    return sender.send_all(todo, secret, lease_owner)
