"""The run's steps as task-sized functions, called in the same order by the nightly DAG's tasks
and by `agent-traffic run`: discover and record what was found, split it for parsing, parse,
classify and stage each object, validate each date, plan the dates, and finish the run with its
summary. Each conductor only adds its own wiring (XCom and task logs, or threads and progress
lines), so both runs of a date write the same records.

Arguments and results are plain JSON-able values (keys, ids, counts), never data, so Airflow can
pass them through XCom and map over them.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from agent_traffic import layout
from agent_traffic.annotate.annotator import Annotator
from agent_traffic.config import Config, OtherHostSite, Source
from agent_traffic.errors import AgentTrafficError, ConfigError
from agent_traffic.formats import LogFormat, detect_format
from agent_traffic.ingest.decompress import SNIFF_BYTES, decompressed_blocks, peek
from agent_traffic.ingest.discover import (
    FAILED,
    POISON_AFTER,
    POISONED,
    STAGED,
    Discovery,
    ObjectRef,
    discover,
    planned_dates,
)
from agent_traffic.ingest.parse import (
    BLANK,
    ParseContext,
    ParsedBlock,
    ParseStats,
    blank_lines,
    in_background,
    parse_blocks,
    sample_lines,
    sample_match,
)
from agent_traffic.ingest.storage import Store, filesystem
from agent_traffic.redact import redact_url
from agent_traffic.run.runtime import Runtime
from agent_traffic.staging.holds import source_holds
from agent_traffic.staging.identity import unchanged_lines
from agent_traffic.staging.stage import ObjectStager

if TYPE_CHECKING:
    from agent_traffic.delivery.plan import PlanResult


log = logging.getLogger("agent_traffic")


def days_between(first: date, last: date) -> list[date]:
    if last < first:
        raise ConfigError(f"the date range ends ({last}) before it starts ({first})")
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def run_days(date_from: str | None, date_to: str | None, logical_date: datetime | None,
             run_after: datetime) -> list[date]:
    """The days a scheduled, manual or backfill run of the nightly DAG processes.

    The trigger form's range wins; else the UTC day of the run's logical date (a scheduled or
    backfill run's is the start of its day; `airflow dags trigger -l D` and the REST API's
    `logical_date` name the day to process); else, for a manual run without a logical date, the
    last complete UTC day before it was triggered. Airflow's own data interval is not used: for
    a manual run it comes from the trigger time (command line) or from the day before the logical
    date (REST API), never the day the user named.
    """
    if date_from:
        return days_between(date.fromisoformat(date_from), date.fromisoformat(date_to or date_from))
    if logical_date is not None:
        return [logical_date.astimezone(UTC).date()]
    return [run_after.astimezone(UTC).date() - timedelta(days=1)]


# ---------------------------------------------------------------------------------------------
# discover


def discover_objects(
    rt: Runtime, days: Sequence[date], *, sources: Iterable[str] | None = None, reprocess: bool = False,
    retry_poisoned: bool = False,
) -> Discovery:
    return discover(rt.cfg, rt.store, days, rt.options, sources=sources, reprocess=reprocess,
                    retry_poisoned=retry_poisoned)


# ---------------------------------------------------------------------------------------------
# parse + classify + stage, one object


def classify_table(annotator: Annotator, events: pa.Table) -> pa.Table:
    """Classify, verify and enrich: each distinct key answered once, spread back to the rows by index."""
    return annotator.annotate(events)


@dataclass
class ObjectResult:
    object_id: str
    url: str
    source: str
    date: str
    status: str  # staged | failed | poisoned
    format: str | None = None
    format_reason: str | None = None
    compression: str | None = None
    reason: str | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    ai_by_provider: dict[str, int] = field(default_factory=dict)
    files: dict[str, int] = field(default_factory=dict)
    failures: int = 0  # runs in a row this version failed in
    carried: dict[str, Any] | None = None  # lines unchanged from the previous version (identity.py)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _site_context(cfg: Config, source_site: str | None) -> tuple[str | None, str | None, str, dict[str, str]]:
    if source_site:
        s = cfg.site(source_site)
        return s.name, s.domain, s.scheme, {}
    hosts = {h.lower(): s.name for s in cfg.sites for h in s.all_hostnames}
    return None, None, "https", hosts


def process_object(rt: Runtime, ref: ObjectRef) -> ObjectResult:
    """Parse, classify and stage one object version; commit its files, then its manifest."""
    cfg = rt.cfg
    src = next(s for s in cfg.sources if s.name == ref.source)
    res = ObjectResult(ref.object_id, ref.url, ref.source, ref.date, FAILED)
    stager = ObjectStager(rt.store, ref.object_id, ref.date)
    stats = ParseStats()
    ai: dict[str, int] = {}
    try:
        fs, path = filesystem(ref.url, rt.options)
        with fs.open(path, "rb") as f:
            res.compression, blocks = decompressed_blocks(f)
            first, blocks = peek(blocks, SNIFF_BYTES)
            # read to its end within the sniffed bytes, and blank: a quiet hour, not an unknown format
            blank = blank_lines(first) if src.format == "auto" and len(first) < SNIFF_BYTES else None
            if blank is not None:
                stats.lines_read = blank
                if blank:
                    stats.skipped[BLANK] = blank
                res.format_reason = ("nothing to parse: the object is empty" if not blank else
                                     f"nothing to parse: the object holds only {blank} blank line(s)")
            else:
                fmt, why = _choose_format(rt, src, first)
                res.format, res.format_reason = fmt.id, why
                _stage_blocks(rt, src, ref, fmt, blocks, stager, stats, ai)
        files = stager.commit()
    except Exception as exc:  # noqa: BLE001 - whatever one object raises fails that object, never the run
        stager.abort()
        res.reason = f"{type(exc).__name__}: {exc}" if not isinstance(exc, AgentTrafficError) else str(exc)
        res.stats = stats.as_dict()
        before = rt.store.get_json_or_none(layout.manifest_key(ref.date, ref.object_id)) or {}
        res.failures = 1 + (before.get("failures") or 1 if before.get("status") in (FAILED, POISONED) else 0)
        if res.failures >= POISON_AFTER:
            res.status = POISONED
        rt.store.put_json(layout.manifest_key(ref.date, ref.object_id), _manifest(ref, res, {}))
        log.warning("object %s failed (%d run(s) in a row): %s (%s)", redact_url(ref.url), res.failures, res.reason,
                    "poisoned: skipped until it changes" if res.status == POISONED else "the next run retries it")
        return res
    res.status, res.stats, res.files, res.ai_by_provider = STAGED, stats.as_dict(), files, ai
    if ref.previous:
        res.carried = unchanged_lines(rt.store, ref.date, ref.previous, files)
        _drop_version(rt.store, ref.date, ref.previous, keep=set(files))
    rt.store.put_json(layout.manifest_key(ref.date, ref.object_id), _manifest(ref, res, files))
    return res


def _stage_blocks(rt: Runtime, src: Source, ref: ObjectRef, fmt: LogFormat, blocks: Iterable[bytes],
                  stager: ObjectStager, stats: ParseStats, ai: dict[str, int]) -> None:
    """Parse, classify and hand to the stager every block of the object; counts go to `stats`, AI
    events per provider to `ai`."""
    cfg = rt.cfg
    site, host, scheme, host_sites = _site_context(cfg, src.site)
    if site is None and not fmt.yields_host:
        raise ConfigError(
            f"source {src.name!r}: format {fmt.id!r} has no host field, so set `site:` "
            "on the source to say which site these logs belong to"
        )
    if src.trusted_proxies and "forwarded_for" not in fmt.fields:
        raise ConfigError(
            f"source {src.name!r} names trusted_proxies, but format {fmt.id!r} has no X-Forwarded-For field, so "
            "every client address would be a proxy's: log $http_x_forwarded_for (format nginx_main), or remove "
            "trusted_proxies"
        )
    other = src.other_hosts
    ctx = ParseContext(ref.object_id, redact_url(ref.url), fmt, site, host, scheme, host_sites,
                       cfg.parse.max_line_bytes, src.trusted_proxies,
                       other_hosts="skip" if other == "skip" else "quarantine",
                       other_site=other.site if isinstance(other, OtherHostSite) else None)

    def classified(parsed: Generator[ParsedBlock, None, None]) -> Iterator[tuple[ParsedBlock, pa.Table]]:
        try:
            for block in parsed:
                yield block, (classify_table(rt.annotator, block.events) if block.events.num_rows else block.events)
        finally:
            parsed.close()  # stops the parsing thread when this one stops

    # A thread each: reading, parsing block n+2, classifying block n+1, and writing block n (this
    # one), so classifying never waits on writing (docs/performance.md).
    parsed = in_background(parse_blocks(blocks, ctx, cfg.parse.block_bytes, cfg.parse.block_lines))
    for block, events in in_background(classified(parsed)):
        stats.add(block.stats)
        if events.num_rows:
            for p, n in _count_ai(events).items():
                ai[p] = ai.get(p, 0) + n
        stager.add(events, block.quarantine)  # quarantine rows even when no event parsed


def _choose_format(rt: Runtime, src: Source, head: bytes) -> tuple[LogFormat, str]:
    """The source's format (checked against the object's first lines), or the detected one."""
    if src.format == "auto":
        return detect_format(sample_lines(head), rt.formats)
    if src.format not in rt.formats:
        raise ConfigError(f"unknown format {src.format!r}; known: {sorted(rt.formats)} or 'auto'")
    fmt = rt.formats[src.format]
    if src.columns is not None:
        fmt = fmt.with_columns(src.columns, f"source {src.name!r} columns")
    lines, matching = sample_match(head, fmt)
    if lines and not matching:
        try:
            guess = f"they look like {detect_format(sample_lines(head), rt.formats)[0].id!r}"
        except ConfigError:
            guess = "no known format matches them"
        raise ConfigError(f"none of the first {lines} line(s) match format {fmt.id!r} set on source "
                          f"{src.name!r}; {guess}: set `format:` to the right one, or auto")
    return fmt, f"set on the source; {matching} of the first {lines} non-blank lines match"


def _count_ai(events: pa.Table) -> dict[str, int]:
    ai = events.select(["provider", "is_ai"]).filter(events["is_ai"])  # not the wide rows
    if not ai.num_rows:
        return {}
    # value_counts, not group_by: Acero's import loads pandas (arrow_values.py)
    return {r["values"]: r["counts"] for r in pc.value_counts(ai["provider"]).to_pylist() if r["values"] is not None}


def _manifest(ref: ObjectRef, res: ObjectResult, files: dict[str, int]) -> dict[str, Any]:
    return {
        **ref.as_dict(),
        "status": res.status,
        "format": res.format,
        "format_reason": res.format_reason,
        "compression": res.compression,
        "reason": res.reason,
        "stats": res.stats,
        "ai_by_provider": res.ai_by_provider,
        "files": files,
        "failures": res.failures,
        "carried": res.carried,
        "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _drop_version(store: Store, day: str, old_id: str, keep: set[str]) -> None:
    """A new version of an object replaces the old one: remove the old files and manifest."""
    old = store.get_json_or_none(layout.manifest_key(day, old_id))
    for key in (old or {}).get("files", {}):
        if key not in keep:
            store.delete(key)
    store.delete(layout.manifest_key(day, old_id))


# ---------------------------------------------------------------------------------------------
# validate


def validate_staged(rt: Runtime, objects: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Run the data-quality suites for every date this run staged objects in (see validate.py).

    Returns {date: result}; a failed partition is held by the planner.
    """
    from agent_traffic.staging.validate import build_docs, validate_date

    days = sorted({o["date"] for o in objects if o["status"] == STAGED})
    if not days:
        return {}
    validator = rt.validator
    out = {}
    for day in days:
        res = validate_date(rt.cfg, rt.store, day, objects, run_id=rt.run_id, validator=validator)
        out[day] = res.as_dict() | {"docs": build_docs(validator, rt.store, day)}
    return out


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
    # imported here, not in a parse task's imports
    from agent_traffic.delivery.plan import plan_deliveries

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
    # imported here, not in a parse task's imports
    from agent_traffic.run.summary import build_summary, ledger_status

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

