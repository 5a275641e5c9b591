"""Run the stages without a scheduler, in the DAG's order: the `agent-traffic run` command."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, date, datetime
from typing import Any, TextIO

from agent_traffic import layout
from agent_traffic.delivery.deliver import deliver_group
from agent_traffic.delivery.plan import ChunkGroup
from agent_traffic.errors import SecretMissing
from agent_traffic.ingest.discover import STAGED, Discovery, ObjectRef
from agent_traffic.ingest.storage import Store
from agent_traffic.redact import printable, redact_url, scrub
from agent_traffic.run.runtime import Runtime
from agent_traffic.run.steps import (
    days_between,
    discover_days,
    finish_run,
    plan_days,
    process_object,
    validate_staged,
)
from agent_traffic.secrets import Secret, SecretResolver, env_resolver

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
            print(f"[{time.monotonic() - self.t0:7.1f}s] {printable(scrub(msg))}", file=self.out, flush=True)


def run(
    rt: Runtime,
    first: date,
    last: date,
    *,
    sites: Sequence[str] = (),
    destinations: Sequence[str] = (),
    dry_run: bool = False,
    reprocess: bool = False,
    retry_poisoned: bool = False,
    outbox: Store | None = None,
    resolver: SecretResolver | None = None,
    progress: Callable[[str], None] | None = None,
    now: datetime | None = None,
    resend_command: str | None = None,
) -> dict[str, Any]:
    """Discover the dates, then parse, validate, plan and deliver them one day at a time; one
    summary for the whole range. `now` decides what is too old (tests set it).

    Day by day, so a long backfill delivers from its first day on (while the next day is parsed),
    reports per-day progress, and killed mid-way leaves whole days done: run again, it skips
    staged objects and acked chunks.
    Discovery lists the whole range first (a prefix two dates share stages its objects once);
    late objects on the lookback dates before the range go with the first day, planned under
    their own date.
    """
    progress = progress or Progress()
    for name in sites:
        rt.cfg.site(name)
    for name in destinations:
        rt.cfg.destination(name)
    t_run = time.monotonic()
    days = days_between(first, last)
    ds = [d.isoformat() for d in days]
    disc = discover_days(rt, days, reprocess=reprocess, retry_poisoned=retry_poisoned)
    progress(f"discover: {disc.seen} object(s) for {ds[0]}..{ds[-1]}, {len(disc.objects)} to parse, "
             f"{disc.unchanged} unchanged" + (f", {disc.late} late on {', '.join(disc.lookback)}" if disc.late else ""))
    batches: dict[str, list[ObjectRef]] = {d: [] for d in ds}
    for ref in disc.objects:  # lookback dates precede the range: their late objects go with its first day
        batches[ref.date if ref.date in batches else ds[0]].append(ref)
    parser = _Parser(rt, progress, disc, reprocess=reprocess)
    sender = _Sender(rt, progress, resolver or env_resolver(), dry_run=dry_run, outbox=outbox, now=now)
    quality: dict[str, Any] = {}
    planned: set[str] = set()
    total = 0
    label, word = ("backfill" if len(ds) > 1 else "day"), ("written to the outbox" if dry_run else "delivered")

    def deliver_day(i: int, day: str, groups: Sequence[ChunkGroup]) -> None:
        nonlocal total
        today = sender.deliver(groups, day)
        total += today
        elapsed = time.monotonic() - t_run
        progress(f"{label} [{i}/{len(ds)}] {day} done: {today:,} {word} today, {total:,} in all "
                 f"({total / max(elapsed, 1e-6):,.0f}/s), ~{_duration(elapsed / i * (len(ds) - i))} left")

    # A day's delivery runs while the next day is parsed: sending waits on the network, parsing
    # on the CPU. The ledger prefixes differ (a date is planned once per run), so they never meet.
    with ThreadPoolExecutor(max_workers=1) as delivering:
        sending: Future[None] | None = None
        for i, day in enumerate(ds, 1):
            staged = parser.parse(batches[day])
            q = validate_staged(rt, staged)
            for d, res in q.items():
                progress(f"validate {d}: " + ", ".join(f"{s} {v}" for s, v in res["statuses"].items())
                         + "".join(f"; {f['message']}" for f in res["findings"]))
            quality.update(q)
            plan = plan_days(rt, [day], sites=sites, destinations=destinations, now=now, planned=planned)
            if sending is not None:
                sending.result()  # one day in flight: the previous day is sent before the next starts
            sending = delivering.submit(deliver_day, i, day, plan.groups)
        if sending is not None:
            sending.result()
    # the discovery as parsing left it: objects another worker staged meanwhile count as unchanged
    return finish_run(rt, ds, discovery=disc.as_dict(ds), objects=parser.objects, deliveries=sender.deliveries,
                      quality=quality, dry_run=dry_run, sites=sites, destinations=destinations,
                      resend_command=resend_command, secret_errors=sender.secret_errors, outbox=outbox)


def _duration(seconds: float) -> str:
    """4m10s, 1h02m, 35s: the time left, as a person reads it."""
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


class _Parser:
    """Parses and stages object versions for the whole run, with progress over all of them."""

    def __init__(self, rt: Runtime, progress: Callable[[str], None], disc: Discovery, *, reprocess: bool) -> None:
        self.rt, self.progress, self.disc, self.reprocess = rt, progress, disc, reprocess
        self.objects: list[dict[str, Any]] = []
        self.total_bytes = sum(o.size for o in disc.objects)
        self.done_bytes = 0
        self.count = 0

    def parse(self, refs: Sequence[ObjectRef]) -> list[dict[str, Any]]:
        out = []
        for ref in refs:
            self.count += 1
            self.done_bytes += ref.size
            where = f"[{self.count}/{len(self.disc.objects)}] {redact_url(ref.url)}"
            if not self.reprocess and self._staged_meanwhile(ref):
                self.disc.unchanged += 1
                self.progress(f"parse {where}: staged by another worker meanwhile, skipped")
                continue
            t = time.monotonic()
            res = process_object(self.rt, ref)
            out.append(res.as_dict())
            s = res.stats
            rate = s.get("lines_read", 0) / max(time.monotonic() - t, 1e-6)
            self.progress(f"parse {where}: {res.status}, {s.get('lines_read', 0):,} lines "
                          f"({rate:,.0f}/s), {s.get('quarantined', 0):,} quarantined"
                          + (f" - {res.reason}" if res.reason else "")
                          + f"  [{self.done_bytes * 100 // max(self.total_bytes, 1)}% of bytes]")
        self.objects += out
        return out

    def _staged_meanwhile(self, ref: ObjectRef) -> bool:
        """Another worker (a parallel run) staged this version since discovery: no need to parse it again."""
        rec = self.rt.store.get_json_or_none(layout.manifest_key(ref.date, ref.object_id))
        return bool(rec) and rec.get("status") == STAGED


class _Sender:
    """Delivers planned groups, destinations side by side; each destination's key resolved once per run."""

    def __init__(self, rt: Runtime, progress: Callable[[str], None], resolve: SecretResolver, *,
                 dry_run: bool, outbox: Store | None, now: datetime | None) -> None:
        self.rt, self.progress, self.resolve = rt, progress, resolve
        self.dry_run, self.outbox, self.now = dry_run, outbox, now
        self.deliveries: list[dict[str, Any]] = []
        self.secret_errors: dict[str, str] = {}
        self._secrets: dict[str, Secret | None] = {}
        self._lock = threading.Lock()

    def _secret(self, name: str) -> Secret | None:
        if self.dry_run:
            return None
        if name not in self._secrets:
            self._secrets[name] = self.resolve(self.rt.cfg.destination(name))
        return self._secrets[name]

    def deliver(self, groups: Sequence[ChunkGroup], day: str) -> int:
        """Send the groups; returns the events delivered (or written to the outbox)."""
        pending_events = sum(g.events for g in groups)
        self.progress(f"plan {day}: {len(groups)} chunk group(s), {pending_events:,} event(s) not yet acknowledged")
        sent = done = 0
        t0 = time.monotonic()
        by_dest: dict[str, list[ChunkGroup]] = {}
        for group in groups:
            if group.destination not in self.secret_errors:  # said once, not every day
                by_dest.setdefault(group.destination, []).append(group)

        def deliver_destination(name: str, dest_groups: list[ChunkGroup]) -> None:
            """One destination's groups in order, with its own key; destinations run side by side."""
            nonlocal sent, done
            try:
                secret = self._secret(name)
                for group in dest_groups:
                    r = deliver_group(self.rt.cfg, self.rt.store, group, secret, run_id=self.rt.run_id,
                                      dry_run=self.dry_run, outbox=self.outbox, now=self.now)
                    with self._lock:
                        self.deliveries.append(r.as_dict())
                        sent += r.delivered_events + r.dry_run_events
                        done += 1
                        rate = sent / max(time.monotonic() - t0, 1e-6)
                        left = (pending_events - sent) / rate if rate else 0
                        self.progress(f"deliver [{done}/{len(groups)}] {r.line()}; {sent:,}/{pending_events:,} "
                                      f"events ({rate:,.0f}/s, ~{left:,.0f}s left)")
            except SecretMissing as exc:
                with self._lock:
                    self.secret_errors[name] = str(exc)
                self.progress(f"deliver: {exc}")

        with ThreadPoolExecutor(max_workers=max(1, min(len(by_dest), MAX_DESTINATIONS_AT_ONCE))) as pool:
            for f in [pool.submit(deliver_destination, n, g) for n, g in by_dest.items()]:
                f.result()
        return sent


def new_run_id(prefix: str = "cli") -> str:
    return f"{prefix}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%fZ')}"
