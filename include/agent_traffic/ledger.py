"""The delivery ledger read back: one row per destination, site, date, object version and outcome.

Plans, acks, dead letters and too-old marks under `_delivery/` (see plan.py) are the only record
of what happened to each event; the run summary, the query views and the report all count
outcomes from these rows, so they cannot disagree.
"""

from __future__ import annotations

import re
from collections import defaultdict
from datetime import UTC, date, datetime
from typing import Any

from agent_traffic.extract import STAGED, read_manifests
from agent_traffic.holds import held_objects
from agent_traffic.storage import Store
from agent_traffic.validate import held_partitions


def as_utc(value: Any) -> datetime | None:
    """A timestamp from a ledger or run record (ISO text, epoch number or datetime), in UTC."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    try:
        t = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


_LEDGER_KEY = re.compile(r"^_delivery/([^/]+)/site=([^/]+)/date=(\d{4}-\d{2}-\d{2})/(plans|acks|dead|too_old)/([^/]+)\.json$")


def _subdirs(store: Store, prefix: str) -> list[str]:
    try:
        entries = store.fs.ls(store.path(prefix), detail=True)
    except FileNotFoundError:
        return []
    return sorted(e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "directory")


def _ledger_keys(store: Store, days: list[str] | None) -> list[str]:
    if days is None:
        return store.list("_delivery/")
    return [k for dest in _subdirs(store, "_delivery") for site in _subdirs(store, f"_delivery/{dest}")
            for d in days for k in store.list(f"_delivery/{dest}/{site}/date={d}/")]


def ledger_rows(store: Store, days: list[str] | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(deliveries, dead letters) read back from the ledger: plans, acks, dead letters, too-old marks.

    The one rule for outcomes (the run summary aggregates these rows): only plans of object
    versions staged now count; a planned chunk with an ack is delivered, else with a too-old mark
    it is too old, else with a dead letter it failed, else it is held when its partition failed the
    data-quality suites, else pending; events a destination does not take are counted per reason
    (not_selected, not_eligible, too_old).
    """
    parts: dict[tuple[str, str, str], dict[str, Any]] = defaultdict(
        lambda: {"plans": [], "acks": set(), "dead": set(), "too_old": set()})
    for key in _ledger_keys(store, days):
        m = _LEDGER_KEY.match(key)
        if not m:
            continue
        dest, site, day, kind, name = m.groups()
        p = parts[(dest, site, day)]
        if kind == "plans":
            p["plans"].append(store.get_json(key))
        else:
            p[kind].add(name)
    current: dict[str, set[str]] = {}
    held: dict[str, dict[str, str]] = {}  # date -> object id -> why its source is held
    deliveries: list[dict[str, Any]] = []
    dead_letters: list[dict[str, Any]] = []
    for (dest, site, day), p in sorted(parts.items()):
        if day not in current:
            current[day] = {oid for oid, m in read_manifests(store, day).items() if m.get("status") == STAGED}
        prefix = f"_delivery/{dest}/site={site}/date={day}"
        base = {"destination": dest, "site": site, "date": date.fromisoformat(day)}
        verdict = held_partitions(store, day, [site]).get(site)
        site_hold = "; ".join(verdict.get("failures", [])) or "data quality failed" if verdict else None
        if day not in held:
            held[day] = held_objects(store, day)
        for plan in sorted(p["plans"], key=lambda x: x.get("object_id", "")):
            if plan.get("object_id") not in current[day]:
                continue  # a replaced object version: its successor's plan counts instead
            hold = site_hold or held[day].get(plan.get("object_id"))
            obj = {**base, "object_id": plan.get("object_id"), "source_object": plan.get("source_object")}
            tally: dict[tuple[str, str | None], list[int]] = defaultdict(lambda: [0, 0])
            for c in plan.get("chunks", []):
                cid = c["chunk_id"]
                if cid in p["acks"]:
                    outcome: tuple[str, str | None] = ("delivered", None)
                elif cid in p["too_old"]:
                    outcome = ("too_old", plan.get("too_old_before"))
                elif cid in p["dead"]:
                    rec = store.get_json_or_none(f"{prefix}/dead/{cid}.json") or {}
                    status = rec.get("status")
                    outcome = ("failed", f"HTTP {status}" if status else str(rec.get("outcome") or "no answer"))
                    dead_letters.append({
                        **base, "chunk_id": cid, "object_id": plan.get("object_id"), "events": c["events"],
                        "http_status": status, "outcome": rec.get("outcome"), "attempts": rec.get("attempts"),
                        "vendor_answer": rec.get("vendor_answer"), "failed_at": as_utc(rec.get("failed_at")),
                        "run_id": rec.get("run_id"),
                    })
                elif hold is not None:
                    outcome = ("held", hold)
                else:
                    outcome = ("pending", None)
                tally[outcome][0] += c["events"]
                tally[outcome][1] += 1
            for kind in ("not_selected", "not_eligible"):
                for reason, n in (plan.get(kind) or {}).items():
                    tally[(kind, reason)][0] += n
            if plan.get("carried"):  # acknowledged for an earlier version of the object (plan.py)
                tally[("delivered", None)][0] += plan["carried"]
            if plan.get("too_old"):
                tally[("too_old", plan.get("too_old_before"))][0] += plan["too_old"]
            for (outcome_name, reason), (events, chunks) in tally.items():
                deliveries.append({**obj, "outcome": outcome_name, "reason": reason,
                                   "events": events, "chunks": chunks})
    return deliveries, dead_letters
