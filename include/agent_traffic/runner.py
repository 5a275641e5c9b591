"""Run the stages without a scheduler, in the DAG's order: the `agent-traffic run` command."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime
from typing import Any, TextIO

from agent_traffic.deliver import deliver_group
from agent_traffic.errors import SecretMissing
from agent_traffic.extract import planned_dates
from agent_traffic.pipeline import (
    Runtime,
    days_between,
    discover_objects,
    process_object,
    validate_staged,
)
from agent_traffic.plan import ChunkGroup, plan_deliveries
from agent_traffic.secrets import SecretResolver, env_resolver
from agent_traffic.storage import Store
from agent_traffic.summary import build_summary, ledger_status

#: Destinations delivered side by side by the command line (each with `delivery.concurrency`
#: requests in flight), so a rate-limited vendor does not hold up the others.
MAX_DESTINATIONS_AT_ONCE = 8


class Progress:
    """One line per unit of long work, with a rate: enough to see a backfill move."""

    def __init__(self, out: TextIO | None = sys.stderr) -> None:
        self.out = out
        self.t0 = time.monotonic()

    def __call__(self, msg: str) -> None:
        if self.out is not None:
            print(f"[{time.monotonic() - self.t0:7.1f}s] {msg}", file=self.out, flush=True)


def run(
    rt: Runtime,
    first: date,
    last: date,
    *,
    sites: Sequence[str] = (),
    destinations: Sequence[str] = (),
    dry_run: bool = False,
    reprocess: bool = False,
    outbox: Store | None = None,
    resolver: SecretResolver | None = None,
    progress: Callable[[str], None] | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Discover, parse, plan and deliver the dates; `now` decides what is too old (tests set it)."""
    progress = progress or Progress()
    for name in sites:
        rt.cfg.site(name)
    known = {d.name for _, d in rt.cfg.destinations()}
    unknown = sorted(set(destinations) - known)
    if unknown:
        from agent_traffic.errors import ConfigError

        raise ConfigError(f"unknown destination(s) {unknown}; the config has {sorted(known)}")
    days = days_between(first, last)
    ds = [d.isoformat() for d in days]
    disc = discover_objects(rt, days, reprocess=reprocess)
    rt.store.put_json(f"_runs/discovery/{rt.run_id}.json", disc.as_dict(ds))
    progress(f"discover: {disc.seen} object(s) for {ds[0]}..{ds[-1]}, {len(disc.objects)} to parse, "
             f"{disc.unchanged} unchanged" + (f", {disc.late} late on {', '.join(disc.lookback)}" if disc.late else ""))
    plan_ds = planned_dates(rt.cfg, days)  # late objects are staged, planned and reported under their own date
    objects = []
    total_bytes = sum(o.size for o in disc.objects)
    done_bytes = 0
    for i, ref in enumerate(disc.objects, 1):
        t = time.monotonic()
        res = process_object(rt, ref)
        done_bytes += ref.size
        objects.append(res.as_dict())
        s = res.stats
        rate = s.get("lines_read", 0) / max(time.monotonic() - t, 1e-6)
        progress(f"parse [{i}/{len(disc.objects)}] {ref.url}: {res.status}, {s.get('lines_read', 0):,} lines "
                 f"({rate:,.0f}/s), {s.get('quarantined', 0):,} quarantined"
                 + (f" - {res.reason}" if res.reason else "")
                 + f"  [{done_bytes * 100 // max(total_bytes, 1)}% of bytes]")
    quality = validate_staged(rt, objects)
    for day, q in quality.items():
        progress(f"validate {day}: " + ", ".join(f"{s} {v}" for s, v in q["statuses"].items())
                 + "".join(f"; {f['message']}" for f in q["findings"]))
    plan = plan_deliveries(rt.cfg, rt.store, plan_ds, sites=sites or None, destinations=destinations or None,
                           now=now)
    pending_events = sum(g.events for g in plan.groups)
    progress(f"plan: {len(plan.groups)} chunk group(s), {pending_events:,} event(s) not yet acknowledged")
    resolve = resolver or env_resolver()
    secret_errors: dict[str, str] = {}
    deliveries: list[dict[str, Any]] = []
    sent = 0
    done = 0
    lock = threading.Lock()
    t_deliver = time.monotonic()
    by_dest: dict[str, list[ChunkGroup]] = {}
    for group in plan.groups:
        by_dest.setdefault(group.destination, []).append(group)

    def deliver_destination(name: str, groups: list[ChunkGroup]) -> None:
        """One destination's groups in order, with its own key; destinations run side by side."""
        nonlocal sent, done
        secret = None
        try:
            if not dry_run:
                secret = resolve(_dest(rt, name))
            for group in groups:
                r = deliver_group(rt.cfg, rt.store, group, secret, run_id=rt.run_id, dry_run=dry_run,
                                  outbox=outbox, now=now)
                with lock:
                    deliveries.append(r.as_dict())
                    sent += r.delivered_events + r.dry_run_events
                    done += 1
                    rate = sent / max(time.monotonic() - t_deliver, 1e-6)
                    left = (pending_events - sent) / rate if rate else 0
                    progress(f"deliver [{done}/{len(plan.groups)}] {r.line()}; {sent:,}/{pending_events:,} "
                             f"events ({rate:,.0f}/s, ~{left:,.0f}s left)")
        except SecretMissing as exc:
            with lock:
                secret_errors[name] = str(exc)
            progress(f"deliver: {exc}")

    with ThreadPoolExecutor(max_workers=max(1, min(len(by_dest), MAX_DESTINATIONS_AT_ONCE))) as pool:
        for f in [pool.submit(deliver_destination, n, g) for n, g in by_dest.items()]:
            f.result()
    ledger = ledger_status(rt.cfg, rt.store, plan_ds, sites=sites or None, destinations=destinations or None)
    summary = build_summary(
        run_id=rt.run_id, cfg=rt.cfg, days=ds, discovery=disc.as_dict(ds),
        objects=objects, deliveries=deliveries, ledger=ledger, dry_run=dry_run, secret_errors=secret_errors,
        quality=quality,
    )
    if outbox is not None:
        summary["outbox"] = outbox.url(rt.run_id)
    rt.store.put_json(f"_runs/{rt.run_id}.json", summary)
    return summary


def _dest(rt: Runtime, name: str):
    return next(d for _, d in rt.cfg.destinations() if d.name == name)


def new_run_id(prefix: str = "cli") -> str:
    return f"{prefix}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%fZ')}"
