"""The run's steps around the stages, called in the same order by the nightly DAG's tasks and by
`agent-traffic run`: discover and record what was found, split it for parsing, plan the dates,
and finish the run with its summary. Each conductor only adds its own wiring (XCom and task
logs, or threads and progress lines), so both runs of a date write the same records."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

from agent_traffic import layout
from agent_traffic.extract import Discovery, ObjectRef, planned_dates
from agent_traffic.holds import source_holds
from agent_traffic.pipeline import Runtime, discover_objects
from agent_traffic.plan import PlanResult, plan_deliveries
from agent_traffic.storage import Store
from agent_traffic.summary import build_summary, ledger_status


def discover_days(rt: Runtime, days: Sequence[date], *, reprocess: bool = False,
                  retry_poisoned: bool = False) -> Discovery:
    """Discover the days' objects and record what was seen: the run's summary reports it, and
    the objects listed are the run's manifest."""
    disc = discover_objects(rt, days, reprocess=reprocess, retry_poisoned=retry_poisoned)
    rt.store.put_json(layout.discovery_key(rt.run_id), disc.as_dict([d.isoformat() for d in days]))
    return disc


def recorded_discovery(rt: Runtime) -> dict[str, Any]:
    """What this run's discovery recorded (empty when it never ran)."""
    return rt.store.get_json_or_none(layout.discovery_key(rt.run_id)) or {}


def parse_batches(objects: Sequence[ObjectRef], most: int) -> list[list[ObjectRef]]:
    """At most `most` batches of about equal bytes: the largest object first onto the lightest batch."""
    n = min(most, len(objects)) or 1
    batches: list[list[ObjectRef]] = [[] for _ in range(n)]
    loads = [0] * n
    for ref in sorted(objects, key=lambda r: -r.size):
        i = loads.index(min(loads))
        batches[i].append(ref)
        loads[i] += ref.size
    return [b for b in batches if b]


def plan_days(rt: Runtime, days: Sequence[str], *, sites: Sequence[str] = (), destinations: Sequence[str] = (),
              now: datetime | None = None, planned: set[str] | None = None) -> PlanResult:
    """Plan the days and their lookback dates (late objects are staged under their own date).

    `planned`: dates an earlier day of the same run planned already; they are left out, and the
    dates planned now are added to it (a backfill plans each date once)."""
    dates = [d for d in planned_dates(rt.cfg, days) if planned is None or d not in planned]
    if planned is not None:
        planned.update(dates)
    return plan_deliveries(rt.cfg, rt.store, dates, sites=sites or None, destinations=destinations or None, now=now)


def plan_lines(result: PlanResult) -> list[str]:
    """What a plan holds, one line per destination, site and date, then what is left to send."""
    per: dict[tuple[str, str, str], Counter[str]] = {}
    for pl in result.plans:
        c = per.setdefault((pl.destination, pl.site, pl.date), Counter())
        c.update({"staged": pl.events_total, "in chunks": pl.selected, "too old": pl.too_old,
                  **pl.not_selected, **pl.not_eligible})
    lines = [f"{dest} {site} {day}: " + ", ".join(f"{k} {n}" for k, n in c.items() if n)
             for (dest, site, day), c in sorted(per.items())]
    return [*lines, f"{len(result.groups)} group(s), {sum(g.events for g in result.groups)} events to send"]


def outbox_store(rt: Runtime) -> Store:
    """Where a dry run writes its request bodies when no outbox is named: beside the staging."""
    return Store(rt.store.url(layout.OUTBOX), rt.options)


def finish_run(
    rt: Runtime,
    days: Sequence[str],
    *,
    discovery: dict[str, Any],
    objects: Sequence[dict[str, Any]],
    deliveries: Sequence[dict[str, Any]],
    quality: dict[str, Any],
    dry_run: bool,
    sites: Sequence[str] = (),
    destinations: Sequence[str] = (),
    resend_command: str | None = None,
    retry_poisoned_command: str | None = None,
    failed_tasks: Sequence[str] = (),
    secret_errors: dict[str, str] | None = None,
    outbox: Store | None = None,
) -> dict[str, Any]:
    """Build the run's summary over its dates and their lookback dates (the ledger, the holds,
    what was parsed and sent) and store it; its `ok` and `problems` say whether the run is done."""
    dates = planned_dates(rt.cfg, days)
    ledger = ledger_status(rt.cfg, rt.store, dates, sites=sites or None, destinations=destinations or None)
    summary = build_summary(
        run_id=rt.run_id, cfg=rt.cfg, days=days, discovery=discovery, objects=objects, deliveries=deliveries,
        ledger=ledger, dry_run=dry_run, secret_errors=secret_errors, quality=quality, resend_command=resend_command,
        failed_tasks=failed_tasks, holds={d: source_holds(rt.store, d) for d in dates}, config_path=rt.config_path,
        retry_poisoned_command=retry_poisoned_command,
    )
    if outbox is not None:
        summary["outbox"] = outbox.url(layout.outbox_run_dir(rt.run_id))
    rt.store.put_json(layout.run_key(rt.run_id), summary)
    return summary

