"""
### agent_traffic_nightly

Reads one day of access logs from object storage, parses and classifies every request, stages
them as Parquet (site / provider / date), and delivers the selected events to each configured
destination in checkpointed chunks.

* **Schedule**: daily at 00:00 UTC; the data interval `[D 00:00, D+1 00:00)` is the day `D` to
  process. `catchup=False`: use `airflow backfill create` for history.
* **Manual runs**: the trigger form takes a date range, sites, destinations, dry run and
  reprocess. A re-run of a date parses only new or changed objects and sends only chunks that
  were never acknowledged.
* **Config**: the YAML file named by `AGENT_TRAFFIC_CONFIG` (default `config/agent-traffic.yaml`). Destination keys come from the
  Airflow Connection named in the config (`secret.airflow_conn_id`; its password is the key).
* **Pools**: `agent_traffic_<vendor>` (scrunch, hitkeep, knownagents) caps concurrent delivery
  tasks per vendor. HitKeep limits requests per client IP and the client's limiter lives in the
  task's process, so at most one HitKeep delivery task runs at a time per DAG run.

Tasks pass keys and counts through XCom, never data; checkpoints live in the staging store.
"""

from __future__ import annotations

import os
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from airflow.sdk import BaseHook, CronDataIntervalTimetable, Param, dag, get_current_context, task

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "config" / "agent-traffic.yaml"
VENDORS = ("scrunch", "hitkeep", "knownagents")
#: Mapped delivery tasks of one vendor running at once per DAG run (default 4).
MAX_ACTIVE_DELIVERIES = {"hitkeep": 1}
MAX_PARSE_BATCHES = 64


def _runtime():
    """The pipeline runtime for this task: config, object-store credentials, run id."""
    from agent_traffic.config import load_config
    from agent_traffic.pipeline import Runtime
    from agent_traffic.storage import StoreOptions

    ctx = get_current_context()
    cfg = load_config(os.environ.get("AGENT_TRAFFIC_CONFIG", str(DEFAULT_CONFIG)))
    options = StoreOptions.from_config(cfg.object_store)
    for conn in map(BaseHook.get_connection, cfg.object_store.airflow_conn_ids):  # S3, GCS, Azure
        options = options.with_connection(conn.conn_type, conn.login, conn.password, conn.extra_dejson)
    run_id = "".join(c if c.isalnum() or c in "-_." else "_" for c in ctx["run_id"])
    return Runtime(cfg, options, run_id)


def _secret(dest):
    """Airflow Connection first (its password), then the environment variable."""
    from agent_traffic.errors import SecretMissing
    from agent_traffic.secrets import Secret, env_resolver

    if dest.secret.airflow_conn_id:
        try:
            conn = BaseHook.get_connection(dest.secret.airflow_conn_id)
        except Exception as exc:  # noqa: BLE001 - the hook raises several types for "not found"
            if not dest.secret.env:
                raise SecretMissing(
                    f"destination {dest.name!r}: Airflow Connection {dest.secret.airflow_conn_id!r} "
                    f"not found ({type(exc).__name__}); create it with the API key as its password"
                ) from None
        else:
            if conn.password:
                return Secret(conn.password)
    return env_resolver()(dest)


def _days() -> list[str]:
    """The dates of this run: the trigger form's range, else the data interval's day."""
    from agent_traffic.pipeline import days_between

    ctx = get_current_context()
    params = ctx["params"]
    first = params.get("date_from")
    last = params.get("date_to") or first
    if first:
        return [d.isoformat() for d in days_between(date.fromisoformat(first), date.fromisoformat(last))]
    start = ctx.get("data_interval_start")
    if start is None:
        raise ValueError("this run has no data interval: set date_from in the trigger form")
    return [start.astimezone(UTC).date().isoformat()]


@dag(
    dag_id="agent_traffic_nightly",
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30), "owner": "agent-traffic"},
    params={
        "date_from": Param(None, type=["null", "string"], format="date",
                           description="first day to process (empty: the run's data interval)"),
        "date_to": Param(None, type=["null", "string"], format="date",
                         description="last day, inclusive (empty: same as date_from)"),
        "sites": Param([], type="array", description="only these sites (empty: all)"),
        "destinations": Param([], type="array", description="only these destinations (empty: all)"),
        "dry_run": Param(False, type="boolean", description="write request bodies to the outbox, send nothing"),
        "reprocess": Param(False, type="boolean", description="parse objects again even if staged"),
    },
    tags=["agent-traffic"],
    doc_md=__doc__,
)
def agent_traffic_nightly():
    @task
    def discover(params: dict | None = None) -> list[list[dict]]:
        """List the sources for the dates; batch the new or changed objects for parsing."""
        from agent_traffic.pipeline import discover_objects

        rt = _runtime()
        days = _days()
        d = discover_objects(rt, [date.fromisoformat(x) for x in days],
                             reprocess=bool((params or {}).get("reprocess")))
        rt.store.put_json(f"_runs/discovery/{rt.run_id}.json", d.as_dict(days))
        n = min(MAX_PARSE_BATCHES, len(d.objects)) or 1
        batches: list[list[dict]] = [[] for _ in range(n)]
        loads = [0] * n
        for ref in sorted(d.objects, key=lambda r: -r.size):  # largest first onto the lightest batch
            i = loads.index(min(loads))
            batches[i].append(ref.as_dict())
            loads[i] += ref.size
        print(f"{d.seen} object(s) for {days}: {len(d.objects)} to parse, {d.unchanged} unchanged")
        return [b for b in batches if b]

    @task(max_active_tis_per_dagrun=4)
    def parse_and_stage(batch: list[dict]) -> list[dict]:
        """Parse, classify and stage a batch of objects (each commits on its own)."""
        from agent_traffic.extract import ObjectRef
        from agent_traffic.pipeline import process_object

        rt = _runtime()
        out = []
        for o in batch:
            r = process_object(rt, ObjectRef.from_dict(o))
            print(f"{r.url}: {r.status} {r.stats} {r.reason or ''}")
            out.append(r.as_dict())
        return out

    @task
    def validate(staged: list) -> dict:
        """Great Expectations suites on what was staged; a failed partition is held from delivery."""
        from agent_traffic.pipeline import validate_staged

        rt = _runtime()
        quality = validate_staged(rt, [o for batch in (staged or []) if batch for o in batch])
        for day, q in quality.items():
            print(f"{day}: {q['statuses']}")
            for f in q["findings"]:
                print(f"  {f['severity'].upper()} {f['message']}")
        return quality

    def plan_task(vendor: str):
        @task(task_id=f"plan_{vendor}")
        def plan(validated: dict, params: dict | None = None) -> list[dict]:
            """Cut staged events into deterministic chunks; returns the unacknowledged groups."""
            from agent_traffic.extract import planned_dates
            from agent_traffic.plan import plan_deliveries

            rt = _runtime()
            p = params or {}
            wanted = [d.name for _, d in rt.cfg.destinations() if d.vendor == vendor
                      and (not p.get("destinations") or d.name in p["destinations"])]
            if not wanted:
                return []
            # with the sources' lookback dates: late objects are staged under their own date
            result = plan_deliveries(rt.cfg, rt.store, planned_dates(rt.cfg, _days()),
                                     sites=p.get("sites") or None, destinations=wanted)
            from collections import Counter

            per: dict[tuple[str, str, str], Counter] = {}
            for pl in result.plans:
                c = per.setdefault((pl.destination, pl.site, pl.date), Counter())
                c.update({"staged": pl.events_total, "in chunks": pl.selected, "too old": pl.too_old,
                          **pl.not_selected, **pl.not_eligible})
            for (dest, site, day), c in sorted(per.items()):
                print(f"{dest} {site} {day}: " + ", ".join(f"{k} {n}" for k, n in c.items() if n))
            print(f"{len(result.groups)} group(s), {sum(g.events for g in result.groups)} events to send")
            return [g.as_dict() for g in result.groups]

        return plan

    def deliver_task(vendor: str):
        @task(task_id=f"deliver_{vendor}", pool=f"agent_traffic_{vendor}", retries=3,
              retry_exponential_backoff=2.0, max_active_tis_per_dagrun=MAX_ACTIVE_DELIVERIES.get(vendor, 4))
        def deliver(group: dict, params: dict | None = None) -> dict:
            """Send one chunk group; ack or dead-letter each chunk in the staging store."""
            from agent_traffic.deliver import deliver_group
            from agent_traffic.plan import ChunkGroup

            rt = _runtime()
            g = ChunkGroup.from_dict(group)
            dry = bool((params or {}).get("dry_run"))
            dest = next(d for _, d in rt.cfg.destinations() if d.name == g.destination)
            secret = None if dry else _secret(dest)
            r = deliver_group(rt.cfg, rt.store, g, secret, run_id=rt.run_id, dry_run=dry,
                              outbox=_outbox(rt) if dry else None)
            print(r.line())
            return r.as_dict()

        return deliver

    @task(trigger_rule="all_done", retries=0)
    def report(staged: list, quality: dict, *delivered: list, params: dict | None = None) -> dict:
        """Write the run summary to the store, print the table; fail the run if anything failed."""
        from agent_traffic.extract import planned_dates
        from agent_traffic.summary import build_summary, ledger_status, render

        rt = _runtime()
        p = params or {}
        days = _days()
        disc = rt.store.get_json_or_none(f"_runs/discovery/{rt.run_id}.json") or {}
        objects = [o for batch in (staged or []) if batch for o in batch]
        deliveries = [d for results in delivered for d in (results or []) if d]
        ledger = ledger_status(rt.cfg, rt.store, planned_dates(rt.cfg, days), sites=p.get("sites") or None,
                               destinations=p.get("destinations") or None)
        summary = build_summary(run_id=rt.run_id, cfg=rt.cfg, days=days, discovery=disc,
                                objects=objects, deliveries=deliveries, ledger=ledger,
                                dry_run=bool(p.get("dry_run")), quality=quality or {})
        rt.store.put_json(f"_runs/{rt.run_id}.json", summary)
        print(render(summary))
        if not summary["ok"]:
            raise RuntimeError("the run had problems: " + "; ".join(summary["problems"]))
        return {"ok": True, "run_id": rt.run_id}

    @task(trigger_rule="all_done", retries=1)
    def write_report() -> list[str]:
        """Write each date's HTML report to the staging store, whatever the run's outcome."""
        from agent_traffic.report import write_daily_report

        rt = _runtime()
        keys = [write_daily_report(rt.store, day) for day in _days()]
        print("\n".join(f"report: {rt.store.url(k)}" for k in keys))
        return keys

    staged = parse_and_stage.expand(batch=discover())
    validated = validate(staged)
    sent = [deliver_task(v).expand(group=plan_task(v)(validated)) for v in VENDORS]
    report(staged, validated, *sent)
    # Beside `report`, not after it: a leaf with trigger_rule all_done that succeeds would mark
    # the run successful even when `report` failed it.
    [staged, *sent] >> write_report()


def _outbox(rt):
    from agent_traffic.storage import Store

    return Store(rt.store.url("_outbox"), rt.options)


agent_traffic_nightly()
