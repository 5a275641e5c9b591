"""Leases: workers running side by side never send one chunk at the same time.

Each worker takes a lease on a unit (a chunk, or for small-request vendors a run of
`chunks_per_lease` consecutive chunks of one object) before sending it. A chunk leased by a live
worker on this machine is left to it and counted as being sent elsewhere
(`leased_elsewhere_events`), not lost; one leased on another host is pending (that host may be
dead). A retried Airflow task takes over its earlier try's leases (`LeaseOwner`), so a lost worker
costs a retry, not a lease's lifetime. The lease files are the ledger's (`Ledger.lease_key`).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from agent_traffic.delivery.ledger import LeaseRecord, Ledger


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

    Before sending unit `c` a worker creates `leases/<c>.<gen>.json` in the ledger with the store's
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

    def __init__(self, ledger: Ledger, run_id: str, ttl_s: float, longest_send_s: float | None = None,
                 owner: LeaseOwner | None = None) -> None:
        self.ledger = ledger
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

    def _record(self, unit: str, gen: int, token: str, now: datetime) -> LeaseRecord:
        return LeaseRecord(unit, gen, token, self.run_id, self.host, self.pid,
                           self.owner.as_dict() if self.owner else {}, now.isoformat(timespec="seconds"),
                           (now + self.ttl).isoformat(timespec="seconds"))

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

    def _hold(self, unit: str, gen: int, token: str, now: datetime) -> bool:
        with self._lock:
            self._held[unit] = (gen, token, now + self.ttl)
        return True

    def claim(self, unit: str) -> bool:
        """True if this worker now owns the unit; False if a live worker does."""
        gen = 0
        for _ in range(self.MAX_TRIES):
            now = datetime.now(UTC)
            token = uuid.uuid4().hex
            if self.ledger.create_lease(self._record(unit, gen, token, now)):
                return self._hold(unit, gen, token, now)
            try:
                lease = self.ledger.read_lease(unit, gen)
            except FileNotFoundError:
                continue  # released between our create and our read: try this generation again
            except orjson.JSONDecodeError:
                lease = None
            if isinstance(lease, dict) and lease.get("token") == token:
                # ours: a conditional PUT retried after a lost answer finds its own first write
                return self._hold(unit, gen, token, now)
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
        self.ledger.renew_lease(self._record(unit, gen, token, now))
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
                self.ledger.delete_lease(unit, g)
