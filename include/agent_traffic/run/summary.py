"""The run summary: counts per stage and destination, as JSON and as a readable table.

Delivery outcomes are read back from the ledger (plans, acks, dead letters, expiries), so the
table states where every staged event of the dates stands for each destination, whichever run sent
it: not selected, not eligible (with the reason), too old, delivered, failed (with the vendor's
answer), or pending. The outcomes add up to the events staged (`balanced`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from agent_traffic import layout
from agent_traffic.config import Config
from agent_traffic.delivery.ledger import Outcome, ledger_rows
from agent_traffic.ingest.discover import STAGED, read_manifests
from agent_traffic.ingest.parse import OTHER_HOST
from agent_traffic.ingest.storage import Store
from agent_traffic.redact import printable, redact_url, scrub, scrub_tree
from agent_traffic.staging.holds import held_objects, held_partitions, release_command


@dataclass
class DestinationStatus:
    destination: str
    vendor: str
    site: str
    events_staged: int = 0
    not_selected: Counter[str] | None = None
    not_eligible: Counter[str] | None = None
    too_old: int = 0
    delivered: int = 0
    failed: int = 0
    pending: int = 0
    held: int = 0  # staged, but the partition failed its data-quality suites
    held_because: list[str] | None = None
    chunks: int = 0
    last_failure: str | None = None
    too_old_before: str | None = None  # the latest cutoff applied

    @property
    def balanced(self) -> bool:
        """Every staged event has exactly one outcome for this destination."""
        return self.events_staged == (sum((self.not_selected or {}).values())
                                      + sum((self.not_eligible or {}).values()) + self.too_old
                                      + self.delivered + self.failed + self.pending + self.held)

    def add(self, outcome: Outcome, reason: str | None, events: int, chunks: int = 0) -> None:
        """Count one ledger row (ledger.py): its events under their outcome."""
        self.events_staged += events
        self.chunks += chunks
        match outcome:
            case Outcome.NOT_SELECTED:
                self.not_selected = self.not_selected if self.not_selected is not None else Counter()
                self.not_selected[str(reason)] += events
            case Outcome.NOT_ELIGIBLE:
                self.not_eligible = self.not_eligible if self.not_eligible is not None else Counter()
                self.not_eligible[str(reason)] += events
            case Outcome.TOO_OLD:
                self.too_old += events
                if reason:
                    self.too_old_before = max(self.too_old_before or "", reason)
            case Outcome.HELD:
                self.held += events
                self.held_because = sorted(set(self.held_because or []) | set((reason or "").split("; ")))
            case Outcome.DELIVERED:
                self.delivered += events
            case Outcome.FAILED:
                self.failed += events
            case Outcome.PENDING:
                self.pending += events

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["not_selected"] = dict(self.not_selected or {})
        d["not_eligible"] = dict(self.not_eligible or {})
        d["balanced"] = self.balanced
        return d


def ledger_status(
    cfg: Config, store: Store, days: Sequence[str], *, sites: Sequence[str] | None = None,
    destinations: Sequence[str] | None = None,
) -> list[DestinationStatus]:
    """Outcomes per configured destination and site, summed from the ledger's rows (ledger.py)."""
    rows, dead = ledger_rows(store, list(days))
    out = []
    for site, dest in cfg.destinations():
        if (sites and site.name not in sites) or (destinations and dest.name not in destinations):
            continue
        st = DestinationStatus(dest.name, dest.vendor, site.name, not_selected=Counter(),
                               not_eligible=Counter())
        planned: dict[str, set[str]] = {}
        for r in rows:
            if r["destination"] != dest.name or r["site"] != site.name:
                continue
            planned.setdefault(r["date"].isoformat(), set()).add(r["object_id"])
            st.add(Outcome(r["outcome"]), r["reason"], r["events"], r["chunks"])
        for day in days:
            _count_unplanned_held(st, store, day, site.name, planned.get(day, set()))
        failures = [d for d in dead if d["destination"] == dest.name and d["site"] == site.name]
        if failures:
            last = max(failures, key=lambda d: (d["failed_at"] or datetime.min.replace(tzinfo=UTC)))
            answer = (last["vendor_answer"] or "")[:300]
            st.last_failure = (f"HTTP {last['http_status']}: {answer}" if last["http_status"] else
                               f"no answer after {last['attempts'] or 1} attempt(s): {answer}")
        out.append(st)
    return out


def _count_unplanned_held(st: DestinationStatus, store: Store, day: str, site: str, planned: set[str]) -> None:
    """Objects the planner never saw because their partition or their source is held: all their
    events are held."""
    hold = held_partitions(store, day, [site]).get(site)
    by_source = held_objects(store, day)
    if not hold and not by_source:
        return
    why: set[str] = set()
    n = 0
    for oid, rec in read_manifests(store, day).items():
        if rec.get("status") != STAGED or oid in planned or not (hold or oid in by_source):
            continue
        rows = sum(r for key, r in rec.get("files", {}).items() if key.startswith(layout.events_prefix(site)))
        if rows:
            n += rows
            why |= set(hold.get("failures", [])) if hold else {by_source[oid]}
    st.events_staged += n
    st.held += n
    if why:
        st.held_because = sorted(set(st.held_because or []) | why)


def _hold_problems(holds: dict[str, dict[str, Any]], config_path: str | None) -> list[str]:
    """One line per held source and date: which objects, which expectation, how to release them."""
    out = []
    for day, per_source in sorted(holds.items()):
        for src, rec in sorted(per_source.items()):
            urls = sorted(rec.get("held", {}).values())
            if not urls:
                continue
            shown = ", ".join(urls[:3]) + (f" and {len(urls) - 3} more" if len(urls) > 3 else "")
            out.append(f"source {src} {day}: {len(urls)} object(s) held, not sent ({shown}) because "
                       f"{'; '.join(rec.get('failures', []))}. Other sources and sites are delivered. Look at "
                       f"the quarantine, fix the source (then --reprocess), or send them as they are: "
                       f"`{release_command(config_path, src, day)}` and run the date again")
    return out


def _silent_sources(cfg: Config, days: Sequence[str], discovery: dict[str, Any]) -> list[str]:
    """A source that listed no object at all for the run's dates: a quiet site, or logs that no
    longer arrive where the url says (a moved bucket, a renamed folder). Said, not failed."""
    listed = discovery.get("objects")
    if listed is None:  # no discovery record: nothing to tell
        return []
    found = {o["source"] for o in listed if not o.get("lookback")}
    span = days[0] if len(days) == 1 else f"{days[0]}..{days[-1]}"
    return [f"source {src.name}: no object found for {span} at {redact_url(src.url)}; if logs were "
            "expected, check the url and that they were delivered there" for src in cfg.sources if src.name not in found]


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
    quality: dict[str, Any] | None = None,
    resend_command: str | None = None,
    failed_tasks: Sequence[str] = (),
    holds: dict[str, dict[str, Any]] | None = None,
    config_path: str | None = None,
    retry_poisoned_command: str | None = None,
) -> dict[str, Any]:
    """`resend_command` is what the user runs to send what this run left pending (the command
    line's or Airflow's form of a re-run of these dates); `failed_tasks` are the scheduler's task
    instances that failed or never ran because of one that did; `holds`: date -> source -> hold
    record (holds.py) of the dates reported; `retry_poisoned_command` parses a poisoned object
    again (`{date}` stands for its date)."""
    resend = resend_command or "re-run these dates"
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
            failed_objects.append({"url": redact_url(o["url"]), "reason": o.get("reason")})
    sent = Counter()
    leased: Counter[tuple[str, str]] = Counter()  # (destination, site) -> events another worker was sending
    for d in deliveries:
        for k in ("chunks_sent", "delivered_events", "failed_events", "pending_events",
                  "too_old_events", "dry_run_events", "requests", "possible_duplicates",
                  "leased_elsewhere_events"):
            sent[k] += d.get(k, 0)
        leased[(d.get("destination"), d.get("site"))] += d.get("leased_elsewhere_events", 0)
    problems = []
    if failed_tasks:
        problems.append(f"task(s) failed or did not run: {', '.join(failed_tasks)}; their logs say why. "
                        f"After fixing the cause, run the dates again: {resend}")
    retry = retry_poisoned_command or (f"agent-traffic run --config {config_path or '<config.yaml>'} "
                                       "--date {date} --retry-poisoned")
    for o in objects:
        if o["status"] == "failed":
            problems.append(f"object {o['url']} ({o['date']}) failed ({o.get('failures') or 1} run(s) in a row): "
                            f"{o.get('reason')}; the next run retries it, other objects are unaffected")
    for o in [o for o in objects if o["status"] == "poisoned"] + list(discovery.get("poisoned", [])):
        problems.append(f"object {o['url']} ({o['date']}) is poisoned: it failed {o.get('failures')} runs in a "
                        f"row (last: {o.get('reason')}), so it is skipped until it changes; to try it again: "
                        f"`{retry.replace('{date}', o['date'])}`")
    notes = []
    for st in ledger:
        if st.failed:
            problems.append(f"{st.destination} ({st.site}): {st.failed} event(s) failed: {st.last_failure}; once "
                            f"the cause is fixed, send them with: {resend}")
        if st.held:
            problems.append(f"{st.destination} ({st.site}): {st.held} event(s) held, not sent, because the "
                            f"data-quality suites failed: {'; '.join(st.held_because or [])}. Fix the input "
                            "and re-run with reprocess (--reprocess) to validate and send them"
                            + ("; or release a held source as its line says" if holds else ""))
        if st.pending and not dry_run:
            # Pending only because a live process on this machine holds their leases: it sends them.
            # A holder elsewhere may be dead, so its events count as not delivered.
            if st.pending <= leased[(st.destination, st.site)]:
                notes.append(f"{st.destination} ({st.site}): {st.pending} event(s) pending: another worker "
                             "on this machine held their leases and is sending them")
            else:
                problems.append(f"{st.destination} ({st.site}): {st.pending} event(s) pending, not delivered; "
                                f"send them with: {resend}")
        if not st.balanced:
            problems.append(f"{st.destination} ({st.site}): outcomes do not add up to the events staged")
        if st.too_old:
            notes.append(f"{st.destination} ({st.site}): {st.too_old} event(s) too old to send (before "
                         f"{st.too_old_before or 'the cutoff'}): {st.vendor} records the time it receives an "
                         "event, so they would show as today's traffic; set send_older_events: true to send them")
    for day, q in (quality or {}).items():
        for f in q.get("findings", []):
            if f["severity"] == "warn" or f["suite"] == "events_rows":
                notes.append(f"quality {day}: {f['message']} (rows moved to quarantine)"
                             if f["suite"] == "events_rows" else f"quality {day}: {f['message']}")
    for dest, msg in (secret_errors or {}).items():
        problems.append(f"{dest}: {msg}")
    problems += _hold_problems(holds or {}, config_path)
    notes += _silent_sources(cfg, days, discovery)
    for o in objects:
        if o.get("carried") is not None:
            same, now = o["carried"]["count"], (o.get("stats") or {}).get("parsed", 0)
            notes.append(f"object {o['url']}: a new version of an object staged before; {_n(same)} of its "
                         f"{_n(now)} event(s) are unchanged (those already delivered are not sent again), "
                         f"{_n(now - same)} new or changed")
    per_source = source_breakdown(objects)
    for name, src in per_source.items():
        if not src["lines"]["balanced"]:
            problems.append(f"source {name}: lines read do not add up to parsed + quarantined + skipped")
        if src["unknown_hosts"]:
            hosts = ", ".join(f"{h} ({_n(n)})" for h, n in list(src["unknown_hosts"].items())[:5])
            other = src["lines"]["skipped"].get(OTHER_HOST, 0)
            done = (f"skipped as {OTHER_HOST!r} (not bad data, not counted against quality)" if other
                    else "quarantined")
            notes.append(f"source {name}: {_n(sum(src['unknown_hosts'].values()))} line(s) {done} because "
                         f"their host matches no site's hostnames: {hosts}; add the host to a site's "
                         "`hostnames` to stage them")
    return scrub_tree({  # vendor answers and log content inside: no key in any encoding leaves
        "run_id": run_id,
        "dates": list(days),
        "lookback_dates": list(discovery.get("lookback_dates", [])),
        "dry_run": dry_run,
        "staging": redact_url(cfg.staging),
        "objects": {
            "seen": discovery.get("seen", 0),
            "unchanged_skipped": discovery.get("unchanged", 0),
            "processed": len(objects),
            "staged": sum(1 for o in objects if o["status"] == "staged"),
            "failed": failed_objects,
            "late": discovery.get("late", 0),
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
        "sources": per_source,
        "quality": {day: {"statuses": q["statuses"], "rows_quarantined": q["rows_quarantined"],
                          "docs": q.get("docs")} for day, q in (quality or {}).items()},
        "holds": {day: {src: sorted(rec.get("held", {}).values()) for src, rec in hs.items() if rec.get("held")}
                  for day, hs in (holds or {}).items() if any(r.get("held") for r in hs.values())},
        "ai_events_by_provider": dict(ai.most_common()),
        "this_run": dict(sent),
        "destinations": [s.as_dict() for s in ledger],
        "notes": notes,
        "problems": problems,
        "ok": not problems,
    })


TOP_UNKNOWN_HOSTS = 10


def source_breakdown(objects: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per source: objects (staged, failed with reasons, formats chosen) and lines read = parsed +
    quarantined + skipped, with quarantine reasons and the most frequent unknown hosts."""
    out: dict[str, dict[str, Any]] = {}
    for o in objects:
        src = out.setdefault(o.get("source") or "?", {
            "objects": 0, "staged": 0, "failed": [], "formats": Counter(),
            "lines": Counter(), "skipped": Counter(), "quarantine_reasons": Counter(), "unknown_hosts": Counter(),
        })
        s = o.get("stats") or {}
        src["objects"] += 1
        if o["status"] == "staged":
            src["staged"] += 1
        else:
            src["failed"].append({"url": redact_url(o["url"]), "date": o.get("date"), "reason": o.get("reason")})
        if o.get("format"):
            src["formats"][o["format"]] += 1
        for k in ("lines_read", "parsed", "quarantined"):
            src["lines"][k] += s.get(k, 0)
        src["skipped"].update(s.get("skipped", {}))
        src["quarantine_reasons"].update(s.get("quarantine_reasons", {}))
        src["unknown_hosts"].update(s.get("unknown_hosts", {}))
    for src in out.values():
        ln, skipped = src["lines"], src.pop("skipped")
        src["lines"] = {"read": ln["lines_read"], "parsed": ln["parsed"], "quarantined": ln["quarantined"],
                        "skipped": dict(skipped),
                        "balanced": ln["lines_read"] == ln["parsed"] + ln["quarantined"] + sum(skipped.values())}
        src["formats"] = dict(src["formats"])
        src["quarantine_reasons"] = dict(src["quarantine_reasons"].most_common())
        src["unknown_hosts"] = dict(src["unknown_hosts"].most_common(TOP_UNKNOWN_HOSTS))
    return out


def _n(x: int) -> str:
    return f"{x:,}"


def render(summary: dict[str, Any]) -> str:
    """The summary as a short, aligned text report."""
    o, ln = summary["objects"], summary["lines"]
    out = [
        f"agent-traffic run {summary['run_id']}  dates {', '.join(summary['dates'])}"
        + (f" (+ lookback {', '.join(summary['lookback_dates'])})" if summary.get("lookback_dates") else "")
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
    for name, src in summary.get("sources", {}).items():
        sl = src["lines"]
        out.append(f"source    {name}: {_n(src['objects'])} object(s) ({', '.join(src['formats']) or 'no format'}), "
                   f"{_n(len(src['failed']))} failed; lines read {_n(sl['read'])} = parsed {_n(sl['parsed'])} + "
                   f"quarantined {_n(sl['quarantined'])} + skipped {_n(sum(sl['skipped'].values()))}")
        for f in src["failed"]:
            out.append(f"          failed: {f['url']}: {f['reason']}")
    ai = summary["ai_events_by_provider"]
    out.append(f"AI events {_n(sum(ai.values()))}" + ("" if ai else " (none in the objects parsed now)"))
    for prov, n in sorted(ai.items(), key=lambda kv: (-kv[1], kv[0])):
        out.append(f"          {prov:<20} {_n(n):>10}")
    for day, q in sorted(summary.get("quality", {}).items()):
        moved = sum(q["rows_quarantined"].values())
        out.append(f"quality   {day}: " + ", ".join(f"{s} {v}" for s, v in sorted(q["statuses"].items()))
                   + (f"; {_n(moved)} row(s) moved to quarantine" if moved else "")
                   + (f"  (data docs: {q['docs']})" if q.get("docs") else ""))
    out.append("")
    hdr = (f"{'destination':<22} {'site':<20} {'staged':>9} {'not sel.':>9} {'not elig.':>9} "
           f"{'too old':>8} {'delivered':>10} {'failed':>7} {'pending':>8} {'held':>6}")
    out += ["delivery (all runs, these dates; each event has one outcome per destination)", hdr, "-" * len(hdr)]
    for d in summary["destinations"]:
        ns = sum(d["not_selected"].values())
        ne = sum(d.get("not_eligible", {}).values())
        out.append(
            f"{d['destination']:<22} {d['site']:<20} {_n(d['events_staged']):>9} {_n(ns):>9} {_n(ne):>9} "
            f"{_n(d.get('too_old', 0)):>8} {_n(d['delivered']):>10} {_n(d['failed']):>7} {_n(d['pending']):>8}"
            f" {_n(d.get('held', 0)):>6}"
        )
        for reason, n in d["not_selected"].items():
            out.append(f"{'':<22}   not sent: {_n(n)} {reason}")
        for reason, n in sorted(d.get("not_eligible", {}).items(), key=lambda kv: (-kv[1], kv[0])):
            out.append(f"{'':<22}   not sent: {_n(n)} {reason}")
    t = summary["this_run"]
    if t:
        out.append(
            f"this run  {_n(t.get('chunks_sent', 0))} chunk(s) sent, {_n(t.get('delivered_events', 0))} events,"
            f" {_n(t.get('requests', 0))} request(s), {_n(t.get('possible_duplicates', 0))} possible duplicate(s)"
            + (f", {_n(t['too_old_events'])} too old by now" if t.get("too_old_events") else "")
            + (f", {_n(t['leased_elsewhere_events'])} left to another worker (leased)"
               if t.get("leased_elsewhere_events") else "")
            + (f", {_n(t.get('dry_run_events', 0))} events written to the outbox" if summary["dry_run"] else "")
        )
    out += ["", f"staging   {summary['staging']}"]
    for note in summary.get("notes", []):
        out.append(f"NOTE      {note}")
    for p in summary["problems"]:
        out.append(f"PROBLEM   {p}")
    out.append("status    " + ("OK" if summary["ok"] else "FAILED (see PROBLEM lines)"))
    return printable(scrub("\n".join(out)))  # log content reaches a terminal: escapes shown, never run
