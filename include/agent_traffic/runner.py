"""Run the stages without a scheduler, in the DAG's order: the `agent-traffic run` command."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from typing import Any, TextIO

from agent_traffic.deliver import deliver_group
from agent_traffic.errors import SecretMissing
from agent_traffic.pipeline import Runtime, days_between, discover_objects, process_object
from agent_traffic.plan import plan_deliveries
from agent_traffic.secrets import Secret, SecretResolver, env_resolver
from agent_traffic.storage import Store
from agent_traffic.summary import build_summary, ledger_status


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
) -> dict[str, Any]:
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
             f"{disc.unchanged} unchanged")
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
    plan = plan_deliveries(rt.cfg, rt.store, ds, sites=sites or None, destinations=destinations or None)
    pending_events = sum(g.events for g in plan.groups)
    progress(f"plan: {len(plan.groups)} chunk group(s), {pending_events:,} event(s) not yet acknowledged")
    resolve = resolver or env_resolver()
    secrets: dict[str, Secret] = {}
    secret_errors: dict[str, str] = {}
    deliveries = []
    sent = 0
    t_deliver = time.monotonic()
    for i, group in enumerate(plan.groups, 1):
        secret = None
        if not dry_run:
            if group.destination in secret_errors:
                continue
            if group.destination not in secrets:
                try:
                    secrets[group.destination] = resolve(_dest(rt, group.destination))
                except SecretMissing as exc:
                    secret_errors[group.destination] = str(exc)
                    progress(f"deliver: {exc}")
                    continue
            secret = secrets[group.destination]
        r = deliver_group(rt.cfg, rt.store, group, secret, run_id=rt.run_id, dry_run=dry_run,
                          outbox=outbox)
        deliveries.append(r.as_dict())
        sent += r.delivered_events + r.dry_run_events
        rate = sent / max(time.monotonic() - t_deliver, 1e-6)
        left = (pending_events - sent) / rate if rate else 0
        progress(f"deliver [{i}/{len(plan.groups)}] {group.destination} {group.site} {group.date}: "
                 f"{r.delivered_events + r.dry_run_events:,} sent, {r.failed_events:,} failed, "
                 f"{r.pending_events:,} pending; {sent:,}/{pending_events:,} events ({rate:,.0f}/s, "
                 f"~{left:,.0f}s left)")
    ledger = ledger_status(rt.cfg, rt.store, ds, sites=sites or None, destinations=destinations or None)
    summary = build_summary(
        run_id=rt.run_id, cfg=rt.cfg, days=ds, discovery=disc.as_dict(ds),
        objects=objects, deliveries=deliveries, ledger=ledger, dry_run=dry_run, secret_errors=secret_errors,
    )
    if outbox is not None:
        summary["outbox"] = outbox.url(rt.run_id)
    rt.store.put_json(f"_runs/{rt.run_id}.json", summary)
    return summary


def _dest(rt: Runtime, name: str):
    return next(d for _, d in rt.cfg.destinations() if d.name == name)


def new_run_id(prefix: str = "cli") -> str:
    return f"{prefix}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%fZ')}"
