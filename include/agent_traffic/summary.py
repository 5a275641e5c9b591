"""The run summary: counts per stage and destination, as JSON and as a readable table.

Delivery outcomes are read back from the ledger (plans, acks, dead letters), so the table states
where every selected event of the dates stands, whichever run sent it: delivered, failed (with
the vendor's answer), or pending. Events a destination does not take are counted with the reason.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agent_traffic.config import Config
from agent_traffic.plan import acked_ids, dead_ids, ledger_prefix
from agent_traffic.storage import Store


@dataclass
class DestinationStatus:
    destination: str
    vendor: str
    site: str
    events_staged: int = 0
    not_selected: Counter[str] | None = None
    delivered: int = 0
    failed: int = 0
    pending: int = 0
    chunks: int = 0
    last_failure: str | None = None

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["not_selected"] = dict(self.not_selected or {})
        return d


def ledger_status(
    cfg: Config, store: Store, days: Sequence[str], *, sites: Sequence[str] | None = None,
    destinations: Sequence[str] | None = None,
) -> list[DestinationStatus]:
    out = []
    for site, dest in cfg.destinations():
        if (sites and site.name not in sites) or (destinations and dest.name not in destinations):
            continue
        st = DestinationStatus(dest.name, dest.vendor, site.name, not_selected=Counter())
        for day in days:
            prefix = ledger_prefix(dest.name, site.name, day)
            acked = set(acked_ids(store, prefix))
            dead = set(dead_ids(store, prefix))
            for _, plan in store.iter_json(f"{prefix}/plans/"):
                st.events_staged += plan["events_total"]
                st.not_selected.update(plan["not_selected"])
                for c in plan["chunks"]:
                    st.chunks += 1
                    if c["chunk_id"] in acked:
                        st.delivered += c["events"]
                    elif c["chunk_id"] in dead:
                        st.failed += c["events"]
                        rec = store.get_json_or_none(f"{prefix}/dead/{c['chunk_id']}.json") or {}
                        st.last_failure = f"HTTP {rec.get('status')}: {rec.get('vendor_answer', '')[:300]}"
                    else:
                        st.pending += c["events"]
        out.append(st)
    return out


def build_summary(
    *,
    run_id: str,
    cfg: Config,
    days: Sequence[str],
    discovery: dict[str, Any],
    objects: Sequence[dict[str, Any]],
    deliveries: Sequence[dict[str, Any]],
    ledger: Sequence[DestinationStatus],
    dry_run: bool,
    secret_errors: dict[str, str] | None = None,
) -> dict[str, Any]:
    lines: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    ai: Counter[str] = Counter()
    failed_objects = []
    for o in objects:
        s = o.get("stats") or {}
        for k in ("lines_read", "parsed", "quarantined", "invalid_utf8"):
            lines[k] += s.get(k, 0)
        skipped.update(s.get("skipped", {}))
        reasons.update(s.get("quarantine_reasons", {}))
        ai.update(o.get("ai_by_provider", {}))
        if o["status"] != "staged":
            failed_objects.append({"url": o["url"], "reason": o.get("reason")})
    sent = Counter()
    for d in deliveries:
        for k in ("chunks_sent", "delivered_events", "failed_events", "pending_events",
                  "dry_run_events", "requests", "possible_duplicates"):
            sent[k] += d.get(k, 0)
    problems = []
    if failed_objects:
        problems.append(f"{len(failed_objects)} object(s) failed to parse; the next run retries them")
    for st in ledger:
        if st.failed:
            problems.append(f"{st.destination} ({st.site}): {st.failed} event(s) failed: {st.last_failure}")
        if st.pending and not dry_run:
            problems.append(f"{st.destination} ({st.site}): {st.pending} event(s) pending; re-run to send")
    for dest, msg in (secret_errors or {}).items():
        problems.append(f"{dest}: {msg}")
    return {
        "run_id": run_id,
        "dates": list(days),
        "dry_run": dry_run,
        "staging": cfg.staging,
        "objects": {
            "seen": discovery.get("seen", 0),
            "unchanged_skipped": discovery.get("unchanged", 0),
            "processed": len(objects),
            "staged": sum(1 for o in objects if o["status"] == "staged"),
            "failed": failed_objects,
        },
        "lines": {
            "read": lines["lines_read"],
            "parsed": lines["parsed"],
            "quarantined": lines["quarantined"],
            "skipped": dict(skipped),
            "invalid_utf8_repaired": lines["invalid_utf8"],
            "quarantine_reasons": dict(reasons),
            "balanced": lines["lines_read"] == lines["parsed"] + lines["quarantined"] + sum(skipped.values()),
        },
        "ai_events_by_provider": dict(ai.most_common()),
        "this_run": dict(sent),
        "destinations": [s.as_dict() for s in ledger],
        "problems": problems,
        "ok": not problems,
    }


def _n(x: int) -> str:
    return f"{x:,}"


def render(summary: dict[str, Any]) -> str:
    """The summary as a short, aligned text report."""
    o, ln = summary["objects"], summary["lines"]
    out = [
        f"agent-traffic run {summary['run_id']}  dates {', '.join(summary['dates'])}"
        + ("  (dry run: nothing sent)" if summary["dry_run"] else ""),
        "",
        f"objects   seen {_n(o['seen'])}, parsed now {_n(o['processed'])} "
        f"(staged {_n(o['staged'])}, failed {_n(len(o['failed']))}), unchanged and skipped {_n(o['unchanged_skipped'])}",
        f"lines     read {_n(ln['read'])} = parsed {_n(ln['parsed'])} + quarantined {_n(ln['quarantined'])}"
        f" + skipped {_n(sum(ln['skipped'].values()))} {dict(ln['skipped']) or ''}".rstrip(),
    ]
    for reason, n in sorted(ln["quarantine_reasons"].items(), key=lambda kv: -kv[1]):
        out.append(f"          quarantined: {_n(n)} {reason}")
    if ln["invalid_utf8_repaired"]:
        out.append(f"          {_n(ln['invalid_utf8_repaired'])} line(s) had invalid UTF-8 (repaired, kept)")
    ai = summary["ai_events_by_provider"]
    out.append(f"AI events {_n(sum(ai.values()))}" + ("" if ai else " (none in the objects parsed now)"))
    for prov, n in sorted(ai.items(), key=lambda kv: (-kv[1], kv[0])):
        out.append(f"          {prov:<20} {_n(n):>10}")
    out.append("")
    hdr = f"{'destination':<22} {'site':<20} {'staged':>9} {'not sent':>9} {'delivered':>10} {'failed':>7} {'pending':>8}"
    out += ["delivery (all runs, these dates)", hdr, "-" * len(hdr)]
    for d in summary["destinations"]:
        ns = sum(d["not_selected"].values())
        out.append(
            f"{d['destination']:<22} {d['site']:<20} {_n(d['events_staged']):>9} {_n(ns):>9} "
            f"{_n(d['delivered']):>10} {_n(d['failed']):>7} {_n(d['pending']):>8}"
        )
        for reason, n in d["not_selected"].items():
            out.append(f"{'':<22}   not sent: {_n(n)} {reason}")
    t = summary["this_run"]
    if t:
        out.append(
            f"this run  {_n(t.get('chunks_sent', 0))} chunk(s) sent, {_n(t.get('delivered_events', 0))} events,"
            f" {_n(t.get('requests', 0))} request(s), {_n(t.get('possible_duplicates', 0))} possible duplicate(s)"
            + (f", {_n(t.get('dry_run_events', 0))} events written to the outbox" if summary["dry_run"] else "")
        )
    out += ["", f"staging   {summary['staging']}"]
    for p in summary["problems"]:
        out.append(f"PROBLEM   {p}")
    out.append("status    " + ("OK" if summary["ok"] else "FAILED (see PROBLEM lines)"))
    return "\n".join(out)
