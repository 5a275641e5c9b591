"""
### agent_traffic_nightly

Reads one day of access logs from object storage, parses and classifies every request, stages
them as Parquet (site / provider / date), and delivers the selected events to each configured
destination in checkpointed chunks.

* **Schedule**: daily at 00:00 UTC; the data interval `[D 00:00, D+1 00:00)` is the day `D` to
  process. `catchup=False`: use `airflow backfill create` for history (each run, its day).
* **Manual runs**: the trigger form's date range wins; else the day of the logical date
  (`airflow dags trigger -l 2026-11-30`, the REST API's `logical_date`); else the last complete
  UTC day. A re-run of a date parses only new or changed objects, validates them, and sends
  every chunk of the dates that was never acknowledged (pending ones, and a new destination's
  history), whether or not anything new arrived.
* **State**: the run fails whenever a task failed or any event of its dates is left pending,
  held or failed; the `report` task's log says what is left and the command that sends it.
  Errors no retry fixes (config, missing key) fail at once. Failure e-mails go through the
  `agent_traffic_alerts` Connection (type smtp, extra `to`) when it exists.
* **Config**: the YAML file named by `AGENT_TRAFFIC_CONFIG` (default `config/agent-traffic.yaml`).
  Destination keys come from the Airflow Connection named in the config (`secret.airflow_conn_id`:
  its password is the key, and its host, when set, the vendor's base URL).
* **Pools**: `agent_traffic_<vendor>` (scrunch, hitkeep, knownagents) caps concurrent delivery
  tasks per vendor. A plan and a deliver task per vendor of the vendor table (`vendor_specs.py`),
  which also says how many of a vendor's delivery tasks run at once per DAG run: HitKeep limits
  requests per client IP and the client's limiter lives in the task's process, so one at a time.

Tasks pass keys and counts through XCom, never data; checkpoints live in the staging store.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import CronDataIntervalTimetable, Param, dag, get_current_context, task

from agent_traffic.vendor_specs import SPECS
from agent_traffic_airflow import (
    IP_RANGES,
    alert_on_failure,
    connection_base_url,
    fail_fast,
    failed_tasks,
    mapped_results,
    run_days,
    runtime,
    secret,
    task_states,
    with_base_url,
)

#: The vendors with a plan and a deliver task, as the vendor table lists them when the DAG is parsed.
VENDORS = tuple(SPECS)
MAX_PARSE_BATCHES = 64


@dag(
    dag_id="agent_traffic_nightly",
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=23),  # over before the next night's run is due
    on_failure_callback=alert_on_failure,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30), "owner": "agent-traffic",
                  "execution_timeout": timedelta(hours=1)},
    params={
        "date_from": Param(None, type=["null", "string"], format="date",
                           description="first day to process (empty: the logical date's day)"),
        "date_to": Param(None, type=["null", "string"], format="date",
                         description="last day, inclusive (empty: same as date_from)"),
        "sites": Param([], type="array", description="only these sites (empty: all)"),
        "destinations": Param([], type="array", description="only these destinations (empty: all)"),
        "dry_run": Param(False, type="boolean", description="write request bodies to the outbox, send nothing"),
        "reprocess": Param(False, type="boolean", description="parse objects again even if staged"),
        "retry_poisoned": Param(False, type="boolean",
                                description="parse objects again that failed 3 runs in a row (poisoned)"),
    },
    tags=["agent-traffic"],
    doc_md=__doc__,
)
def agent_traffic_nightly():
    @task(execution_timeout=timedelta(minutes=30))
    @fail_fast
    def discover(params: dict | None = None) -> list[list[dict]]:
        """List the sources for the dates; batch the new or changed objects for parsing."""
        from datetime import date

        from agent_traffic.run.steps import discover_days, parse_batches

        rt, days, p = runtime(), run_days(), params or {}
        d = discover_days(rt, [date.fromisoformat(x) for x in days], reprocess=bool(p.get("reprocess")),
                          retry_poisoned=bool(p.get("retry_poisoned")))
        print(f"{d.seen} object(s) for {days}: {len(d.objects)} to parse, {d.unchanged} unchanged")
        return [[ref.as_dict() for ref in b] for b in parse_batches(d.objects, MAX_PARSE_BATCHES)]

    @task(max_active_tis_per_dagrun=4, execution_timeout=timedelta(hours=2), inlets=[IP_RANGES],
          map_index_template="{{ objects_label }}")
    @fail_fast
    def parse_and_stage(batch: list[dict]) -> list[dict]:
        """Parse, classify and stage a batch of objects (each commits on its own)."""
        from agent_traffic.ingest.discover import ObjectRef
        from agent_traffic.run.steps import process_object

        first = batch[0]["url"].rsplit("/", 1)[-1]
        get_current_context()["objects_label"] = first + (f" +{len(batch) - 1}" if len(batch) > 1 else "")
        rt = runtime()
        out = []
        for o in batch:
            r = process_object(rt, ObjectRef.from_dict(o))
            print(f"{r.url}: {r.status} {r.stats} {r.reason or ''}")
            out.append(r.as_dict())
        return out

    # Runs when parsing mapped over nothing (no new object): pending chunks, a new destination's
    # history and fixed dead letters are still planned and sent.
    @task(trigger_rule="none_failed")
    @fail_fast
    def validate() -> dict:
        """Great Expectations suites on what was staged; a failed partition is held from delivery."""
        from agent_traffic.run.steps import validate_staged

        rt = runtime()
        staged = mapped_results("parse_and_stage", task_states())
        quality = validate_staged(rt, [o for batch in staged for o in batch])
        for day, q in quality.items():
            print(f"{day}: {q['statuses']}")
            for f in q["findings"]:
                print(f"  {f['severity'].upper()} {f['message']}")
        return quality

    def plan_task(vendor: str):
        @task(task_id=f"plan_{vendor}", execution_timeout=timedelta(minutes=30))
        @fail_fast
        def plan(validated: dict, params: dict | None = None) -> list[dict]:
            """Cut staged events into deterministic chunks; returns the unacknowledged groups."""
            from agent_traffic.run.steps import plan_days, plan_lines

            rt, p = runtime(), params or {}
            wanted = [d.name for _, d in rt.cfg.destinations() if d.vendor == vendor
                      and (not p.get("destinations") or d.name in p["destinations"])]
            if not wanted:
                return []
            result = plan_days(rt, run_days(), sites=p.get("sites") or (), destinations=wanted)
            print("\n".join(plan_lines(result)))
            return [g.as_dict() for g in result.groups]

        return plan

    def deliver_task(vendor: str):
        @task(task_id=f"deliver_{vendor}", pool=f"agent_traffic_{vendor}", retries=3,
              retry_exponential_backoff=2.0, max_active_tis_per_dagrun=SPECS[vendor].parallel_deliveries,
              execution_timeout=timedelta(hours=3), map_index_template="{{ group_label }}")
        @fail_fast
        def deliver(group: dict, params: dict | None = None) -> dict:
            """Send one chunk group; ack or dead-letter each chunk in the staging store."""
            from agent_traffic.delivery.deliver import deliver_group
            from agent_traffic.delivery.leases import LeaseOwner
            from agent_traffic.delivery.plan import ChunkGroup
            from agent_traffic.run.runtime import outbox_store

            ctx = get_current_context()
            ctx["group_label"] = f"{group['destination']} {group['site']} {group['date']}"
            rt = runtime()
            g = ChunkGroup.from_dict(group)
            dry = bool((params or {}).get("dry_run"))
            dest = rt.cfg.destination(g.destination)
            cfg = with_base_url(rt.cfg, dest.name, connection_base_url(dest))
            ti = ctx["ti"]
            owner = LeaseOwner(ti.run_id, f"{ti.task_id}[{ti.map_index}]", ti.try_number)
            r = deliver_group(cfg, rt.store, g, None if dry else secret(dest), run_id=rt.run_id,
                              dry_run=dry, outbox=outbox_store(rt) if dry else None, lease_owner=owner)
            print(r.line())
            return r.as_dict()

        return deliver

    @task(trigger_rule="all_done", retries=0, execution_timeout=timedelta(minutes=30))
    def report(params: dict | None = None) -> dict:
        """Write the run summary to the store and print it; fail the run unless everything of its
        dates is delivered (or has a counted reason not to be) and every task succeeded."""
        from agent_traffic.run.steps import finish_run, recorded_discovery
        from agent_traffic.run.summary import render

        rt, days, p, states = runtime(), run_days(), params or {}, task_states()
        summary = finish_run(
            rt, days, discovery=recorded_discovery(rt),
            objects=[o for batch in mapped_results("parse_and_stage", states) for o in batch],
            deliveries=[d for v in VENDORS for d in mapped_results(f"deliver_{v}", states)],
            quality=get_current_context()["ti"].xcom_pull(task_ids="validate") or {},
            dry_run=bool(p.get("dry_run")), sites=p.get("sites") or (), destinations=p.get("destinations") or (),
            resend_command=_resend_command(days, p),
            retry_poisoned_command=_trigger_command({"date_from": "{date}", "retry_poisoned": True}),
            failed_tasks=failed_tasks(states, ignore=("report", "write_report")))
        print(render(summary))
        if not summary["ok"]:
            raise RuntimeError("the run had problems: " + "; ".join(summary["problems"]))
        return {"ok": True, "run_id": rt.run_id}

    @task(trigger_rule="all_done", retries=1, execution_timeout=timedelta(minutes=30))
    def write_report() -> list[str]:
        """Write each date's HTML report to the staging store, whatever the run's outcome."""
        from agent_traffic.team.report import write_daily_report

        rt = runtime()
        keys = [write_daily_report(rt.store, day) for day in run_days()]
        print("\n".join(f"report: {rt.store.url(k)}" for k in keys))
        return keys

    staged = parse_and_stage.expand(batch=discover())
    validated = validate()
    staged >> validated
    sent = [deliver_task(v).expand(group=plan_task(v)(validated)) for v in VENDORS]
    # `report` and `write_report` are the leaves, side by side: a leaf with trigger_rule all_done
    # that succeeds would mark the run successful even when `report` failed it.
    [staged, validated, *sent] >> report()
    [staged, *sent] >> write_report()


def _resend_command(days: list[str], params: dict) -> str:
    """The trigger that sends what this run left: the same dates, sites and destinations."""
    return _trigger_command({"date_from": days[0], "date_to": days[-1],
                             **{k: params[k] for k in ("sites", "destinations") if params.get(k)}})


def _trigger_command(conf: dict) -> str:
    import json
    import shlex

    return shlex.join(["airflow", "dags", "trigger", "agent_traffic_nightly", "-c", json.dumps(conf)])


agent_traffic_nightly()
