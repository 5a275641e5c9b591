"""What data quality holds back from delivery: one source's objects of a day (the smallest unit
it may stop), or a site's whole date.

Bad rows never hold good rows: a row that fails an expectation is quarantined with its reason and
the rest is delivered. Delivery is held only on a systemic sign about a source (most of its lines
not matching its format, no event out of objects that had lines, many rows failing), and then only
that source's objects of that day: other sources and other sites are sent as usual.

A partition whose suites failed (validate.py's verdict `Quality.FAIL` in its status record) holds
the whole site and date: `held_partitions`.

A source hold is one record per source and date, `_holds/date=<D>/source=<S>.json`:
`held` (object id -> url) is what the planner leaves out; `released` is what a user let through
after a look (`agent-traffic release --source S --date D`), never held again for the same reasons.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from agent_traffic import layout
from agent_traffic.ingest.storage import Store


class Quality(StrEnum):
    """A partition's verdict, and a failed expectation's severity (WARN or FAIL); str-valued, so
    stored records say "pass", "warn" or "fail"."""

    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"


def held_partitions(store: Store, day: str, sites: Iterable[str]) -> dict[str, dict[str, Any]]:
    """site -> status record, for the partitions of a date whose suites failed (nothing is sent for them)."""
    out = {}
    for site in sites:
        rec = store.get_json_or_none(layout.quality_status_key(day, site))
        if rec and rec.get("status") == Quality.FAIL:
            out[site] = rec
    return out


def release_command(config_path: str | None, source: str, day: str) -> str:
    return f"agent-traffic release --config {config_path or '<config.yaml>'} --source {source} --date {day}"


def source_holds(store: Store, day: str) -> dict[str, dict[str, Any]]:
    """source -> its hold record for a date (those with held objects, and released ones)."""
    return {rec["source"]: rec for _, rec in store.iter_json(layout.holds_prefix(day))}


def held_objects(store: Store, day: str) -> dict[str, str]:
    """object id -> why it is held, for the objects of a date the planner must leave out."""
    return {oid: f"source {src} held: {'; '.join(rec.get('failures', []))}"
            for src, rec in source_holds(store, day).items() for oid in rec.get("held", {})}


def record(store: Store, day: str, source: str, objects: dict[str, str], failures: list[str], run_id: str) -> dict:
    """Write the verdict on a source's objects validated now (object id -> url): held when
    `failures`, else let through. Objects an earlier run held stay held; released ones stay released."""
    key = layout.hold_key(day, source)
    rec = store.get_json_or_none(key) or {"source": source, "date": day, "held": {}, "released": {}, "failures": []}
    now = set(objects.values())  # a new version of a held object replaces it
    held = {o: u for o, u in rec["held"].items() if o not in objects and u not in now}
    if failures:
        held |= {o: u for o, u in objects.items() if o not in rec["released"]}
        rec["failures"] = failures
    rec |= {"held": held, "run_id": run_id, "recorded_at": _now()}
    if rec["held"] or rec["released"] or key in set(store.list(layout.holds_prefix(day))):
        store.put_json(key, rec)
    return rec


def release(store: Store, days: Iterable[str], source: str) -> dict[str, dict[str, str]]:
    """Let a source's held objects through (date -> object id -> url released)."""
    out = {}
    for day in days:
        rec = store.get_json_or_none(layout.hold_key(day, source))
        if not rec or not rec.get("held"):
            continue
        out[day] = dict(rec["held"])
        rec["released"] = {**rec.get("released", {}), **rec["held"]}
        rec["held"] = {}
        rec["released_at"] = _now()
        store.put_json(layout.hold_key(day, source), rec)
    return out


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
