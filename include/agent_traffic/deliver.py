"""Send a group of planned chunks to a vendor; ack, dead-letter or expire each one.

An ack (with the chunk's line numbers) is written to the store only after the vendor's 2xx, then
the chunk file is removed. A crash between the 2xx and the ack resends that chunk on the next run:
duplicates are bounded by the requests in flight (`delivery.concurrency` per running task).
401/403/404 stop the destination for the rest of the run (every further request would fail the
same way): the group stops, and a marker under `_delivery/<dest>/stopped/<run_id>.json` makes the
run's later groups (other mapped tasks included) leave their chunks pending, not failed. The next
run tries again. For vendors that stamp receive time, a chunk whose oldest event has become
older than the destination's max age while it waited (a failed key fixed days later) is not sent:
it is recorded as too old, like the events the planner already held back.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from agent_traffic.config import Config, Destination
from agent_traffic.errors import SecretMissing
from agent_traffic.plan import Chunk, ChunkGroup, age_cutoff, decode_chunk, ledger_prefix
from agent_traffic.ratelimit import TokenBucket, limiter_for
from agent_traffic.retry import STOP, SUCCESS, send
from agent_traffic.secrets import Secret
from agent_traffic.storage import Store
from agent_traffic.vendors import vendor


@dataclass
class GroupResult:
    destination: str
    site: str
    date: str
    chunks_sent: int = 0
    chunks_already_acked: int = 0
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
        return (f"{self.destination} {self.site} {self.date}: {self.delivered_events} delivered, "
                f"{self.failed_events} failed, {self.pending_events} pending, {self.too_old_events} too old, "
                f"{self.requests} request(s), {self.possible_duplicates} possible duplicate(s)"
                + (f", {self.dry_run_events} written to the outbox" if self.dry_run_events else ""))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _session(concurrency: int) -> requests.Session:
    """One connection pool per task, as large as the requests it runs at once."""
    s = requests.Session()
    adapter = HTTPAdapter(pool_connections=1, pool_maxsize=concurrency, max_retries=0)
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    s.headers["User-Agent"] = "agent-traffic/0.1 (+https://github.com/agent-traffic)"
    return s


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
) -> GroupResult:
    dest = _destination(cfg, group.destination)
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

    def load(cid: str) -> Chunk:
        try:
            return decode_chunk(store.get_bytes(f"{prefix}/chunks/{cid}.chunk"))
        except FileNotFoundError:
            raise FileNotFoundError(
                f"chunk {cid} of {dest.name} {group.site} {group.date} is planned but its file is gone; "
                f"delete {store.url(prefix)}/plans/ to plan that date again"
            ) from None

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
            store.delete(f"{prefix}/chunks/{ch.chunk_id}.chunk")
        with lock:
            res.too_old_events += ch.events
        return True

    if dry_run:
        box = outbox or store
        for cid in todo:
            ch = load(cid)
            if expire(ch):
                continue
            ext = "ndjson" if ch.content_type.endswith("ndjson") else "json"
            box.put_bytes(f"{run_id}/{dest.name}/{group.date}/{ch.chunk_id}.{ext}", ch.body)
            box.put_json(
                f"{run_id}/{dest.name}/{group.date}/{ch.chunk_id}.request.json",
                {"method": "POST", "url": v.url(dest), "content_type": ch.content_type,
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
    session = _session(cfg.delivery.concurrency)
    limiter = _limiter(dest)
    url = v.url(dest)

    def scrub(text: str) -> str:
        """A vendor that echoes the request back must not put the key into the dead letter."""
        return text.replace(key.reveal(), "***")

    def one(cid: str) -> None:
        ch = load(cid)
        if stop.is_set():
            with lock:
                res.pending_events += ch.events
            return
        if expire(ch):
            return
        headers = {"Content-Type": ch.content_type, **v.auth_headers(key)}
        r = send(session, url, ch.body, headers, cfg.delivery, v.success, sleep=sleep, rng=rng,
                 should_stop=stop.is_set, before_attempt=limiter.acquire if limiter else None)
        with lock:
            res.requests += r.attempts
            res.retries.update(r.retries_by_cause)
            res.possible_duplicates += r.possible_duplicates
            res.throttled_s += r.throttled_s
            res.statuses[str(r.status) if r.status else "error"] += 1
        if r.outcome == SUCCESS:
            store.put_json(f"{prefix}/acks/{ch.chunk_id}.json", {
                "chunk_id": ch.chunk_id, "object_id": ch.object_id, "index": ch.index,
                "events": ch.events, "first_line": ch.first_line, "last_line": ch.last_line,
                "lines": ch.lines, "status": r.status, "attempts": r.attempts, "acked_at": _now(),
                "run_id": run_id,
            })
            store.delete(f"{prefix}/dead/{ch.chunk_id}.json")
            store.delete(f"{prefix}/chunks/{ch.chunk_id}.chunk")
            with lock:
                res.chunks_sent += 1
                res.delivered_events += ch.events
            return
        if r.outcome == STOP and not stop.is_set():
            stop.set()
            store.put_json(stop_marker, {"destination": dest.name, "status": r.status,
                                         "vendor_answer": scrub(r.body), "run_id": run_id, "at": _now()})
        failure = {
            "chunk_id": ch.chunk_id, "object_id": ch.object_id, "events": ch.events,
            "status": r.status, "vendor_answer": scrub(r.body), "attempts": r.attempts,
            "outcome": r.outcome, "failed_at": _now(), "run_id": run_id,
        }
        store.put_json(f"{prefix}/dead/{ch.chunk_id}.json", failure)
        with lock:
            res.failed_events += ch.events
            res.failures.append(failure)

    try:
        with ThreadPoolExecutor(max_workers=cfg.delivery.concurrency) as pool:
            list(pool.map(one, todo))
    finally:
        session.close()
    return res


def _destination(cfg: Config, name: str) -> Destination:
    for _, d in cfg.destinations():
        if d.name == name:
            return d
    raise KeyError(f"destination {name!r} is not in the config")
