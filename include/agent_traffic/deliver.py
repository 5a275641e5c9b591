"""Send a group of planned chunks to a vendor; ack or dead-letter each one.

An ack is written to the store only after the vendor's 2xx, then the chunk file is removed. A
crash between the 2xx and the ack resends that chunk on the next run: duplicates are bounded by
the requests in flight (`delivery.concurrency` per running task). 401/403 stops the group (every
further request would fail the same way); the chunks left are pending, not failed.
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
from agent_traffic.plan import Chunk, ChunkGroup, acked_ids, decode_chunk, ledger_prefix
from agent_traffic.retry import AUTH, SUCCESS, send
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
    dry_run_events: int = 0
    requests: int = 0
    retries: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    possible_duplicates: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d = self.__dict__.copy()
        d["retries"] = dict(self.retries)
        d["statuses"] = dict(self.statuses)
        return d


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _session(concurrency: int) -> requests.Session:
    s = requests.Session()
    adapter = HTTPAdapter(pool_connections=1, pool_maxsize=concurrency, max_retries=0)
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    s.headers["User-Agent"] = "agent-traffic/0.1 (+https://github.com/agent-traffic)"
    return s


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
) -> GroupResult:
    dest = _destination(cfg, group.destination)
    v = vendor(dest.vendor)
    prefix = ledger_prefix(group.destination, group.site, group.date)
    res = GroupResult(group.destination, group.site, group.date)
    acked = set(acked_ids(store, prefix))
    todo: list[Chunk] = []
    for cid in group.chunk_ids:
        if cid in acked:
            res.chunks_already_acked += 1
            continue
        todo.append(decode_chunk(store.get_bytes(f"{prefix}/chunks/{cid}.chunk")))
    if dry_run:
        box = outbox or store
        for ch in todo:
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
    lock = threading.Lock()
    stop = threading.Event()
    session = _session(cfg.delivery.concurrency)
    url = v.url(dest)

    def one(ch: Chunk) -> None:
        if stop.is_set():
            with lock:
                res.pending_events += ch.events
            return
        headers = {"Content-Type": ch.content_type, **v.auth_headers(secret)}
        r = send(session, url, ch.body, headers, cfg.delivery, v.success, sleep=sleep,
                 rng=rng, should_stop=stop.is_set)
        with lock:
            res.requests += r.attempts
            res.retries.update(r.retries_by_cause)
            res.possible_duplicates += r.possible_duplicates
            res.statuses[str(r.status) if r.status else "error"] += 1
        if r.outcome == SUCCESS:
            store.put_json(f"{prefix}/acks/{ch.chunk_id}.json", {
                "chunk_id": ch.chunk_id, "object_id": ch.object_id, "index": ch.index,
                "events": ch.events, "first_line": ch.first_line, "last_line": ch.last_line,
                "status": r.status, "attempts": r.attempts, "acked_at": _now(), "run_id": run_id,
            })
            store.delete(f"{prefix}/dead/{ch.chunk_id}.json")
            store.delete(f"{prefix}/chunks/{ch.chunk_id}.chunk")
            with lock:
                res.chunks_sent += 1
                res.delivered_events += ch.events
            return
        if r.outcome == AUTH:
            stop.set()
        failure = {
            "chunk_id": ch.chunk_id, "object_id": ch.object_id, "events": ch.events,
            "status": r.status, "vendor_answer": r.body, "attempts": r.attempts,
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
