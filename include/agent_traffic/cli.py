"""`agent-traffic`: run the pipeline without a scheduler, and the local vendor receiver."""

from __future__ import annotations

import argparse
import atexit
import json
import os
import sys
import threading
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

from agent_traffic import layout
from agent_traffic.errors import AgentTrafficError

if TYPE_CHECKING:
    from agent_traffic.ingest.storage import Store


def _date(s: str) -> date:
    try:
        return date.fromisoformat(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date as YYYY-MM-DD, got {s!r}") from None


def _cmd_run(args: argparse.Namespace) -> int:
    from agent_traffic.ingest.storage import Store
    from agent_traffic.run.runner import Progress, new_run_id, run
    from agent_traffic.run.runtime import Runtime
    from agent_traffic.run.summary import render

    rt = Runtime.load(args.config, new_run_id())
    outbox = None
    if args.dry_run:
        outbox = Store(str(Path(args.outbox).resolve()) if args.outbox else rt.store.url(layout.OUTBOX), rt.options)
    summary = run(
        rt, args.date, args.until or args.date, sites=args.site, destinations=args.destination,
        dry_run=args.dry_run, reprocess=args.reprocess, retry_poisoned=args.retry_poisoned, outbox=outbox,
        progress=Progress(None if args.quiet else sys.stderr), resend_command=_resend(args),
    )
    print(render(summary))
    if args.dry_run:
        print(f"outbox    {summary['outbox']}")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return 0 if summary["ok"] else 1


def _resend(args: argparse.Namespace) -> str:
    """The command that sends what a run left pending: the same dates, sites and destinations
    (acknowledged chunks are never sent again, staged objects never parsed again)."""
    import shlex

    words = ["agent-traffic", "run", "--config", args.config, "--date", args.date.isoformat()]
    if args.until and args.until != args.date:
        words += ["--until", args.until.isoformat()]
    for name in args.site:
        words += ["--site", name]
    for name in args.destination:
        words += ["--destination", name]
    return shlex.join(words)


def _cmd_summary(args: argparse.Namespace) -> int:
    from agent_traffic.config import load_config
    from agent_traffic.ingest.storage import Store, StoreOptions
    from agent_traffic.run.summary import render

    cfg = load_config(args.config)
    store = Store(cfg.staging, StoreOptions.from_config(cfg.object_store))
    runs = [k for k in store.list(layout.runs_prefix()) if layout.parse_run_key(k)]
    if not runs:
        print("no run has been recorded in this staging store yet", file=sys.stderr)
        return 1
    key = layout.run_key(args.run_id) if args.run_id else max(
        runs, key=lambda k: (store.fs.info(store.path(k)).get("mtime") or 0, k))
    summary = store.get_json(key)
    print(render(summary))
    return 0 if summary["ok"] else 1


def _staging(config_path: str) -> Store:
    from agent_traffic.config import load_config
    from agent_traffic.ingest.storage import Store, StoreOptions

    cfg = load_config(config_path)
    return Store(cfg.staging, StoreOptions.from_config(cfg.object_store))


def _cmd_query(args: argparse.Namespace) -> int:
    import duckdb

    from agent_traffic.team.query import TABLES, connect, run_sql, shell

    if args.last and not args.first:
        print("agent-traffic: --to needs --from (the first date of the range)", file=sys.stderr)
        return 2
    con = connect(_staging(args.config), args.first, args.last)
    if args.sql is None and sys.stdin.isatty():
        shell(con)
        return 0
    try:
        run_sql(con, args.sql if args.sql is not None else sys.stdin.read(), args.format)
    except duckdb.Error as exc:
        print(f"agent-traffic: the query failed: {exc}\n(the views are: {', '.join(TABLES)})", file=sys.stderr)
        return 2
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from agent_traffic.team.report import build_report

    first, last = args.first, args.last or args.first
    page = build_report(_staging(args.config), first, last)
    out = Path(args.out or f"agent-traffic-report_{first}" + (f"_{last}" if last != first else "") + ".html")
    out.write_text(page, encoding="utf-8")
    print(f"report    {out.resolve()}  ({first} to {last}, UTC days)")
    return 0


def _cmd_release(args: argparse.Namespace) -> int:
    """Let a source's objects that data quality held go to delivery (after a look at why)."""
    from agent_traffic.config import load_config
    from agent_traffic.run.steps import days_between
    from agent_traffic.staging.holds import release

    cfg = load_config(args.config)
    if args.source not in {s.name for s in cfg.sources}:
        print(f"agent-traffic: no source {args.source!r} in the config", file=sys.stderr)
        return 2
    days = [d.isoformat() for d in days_between(args.date, args.until or args.date)]
    done = release(_staging(args.config), days, args.source)
    if not done:
        print(f"nothing held for source {args.source} on {', '.join(days)}")
        return 0
    for day, objs in done.items():
        for url in sorted(objs.values()):
            print(f"released  {day} {url}")
    first, last = min(done), max(done)
    print(f"send them: agent-traffic run --config {args.config} --date {first}" + (f" --until {last}" if last != first else ""))
    return 0


def _cmd_classify(args: argparse.Namespace) -> int:
    import io

    from agent_traffic.annotate.annotator import Annotator

    range_store, catalog_files, max_age = None, list(args.catalog), 30
    if args.config:
        from agent_traffic.annotate.ranges import range_store as store_for
        from agent_traffic.config import load_config
        from agent_traffic.ingest.storage import StoreOptions

        cfg = load_config(args.config)
        range_store = store_for(cfg, StoreOptions.from_config(cfg.object_store))
        catalog_files = [*cfg.catalog_files, *catalog_files]
        max_age = cfg.ip_ranges.max_age_days
    annotator = Annotator.build(catalog_files, range_store=range_store, max_age_days=max_age)
    stdin = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="replace", newline="\n")
    for line in stdin:
        print(json.dumps(annotator.describe_line(line, args.date)), flush=args.flush)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="agent-traffic", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="discover, parse, stage and deliver one date or a range")
    r.add_argument("--config", required=True, help="the YAML config file")
    r.add_argument("--date", "--from", dest="date", required=True, type=_date, help="first logical date, YYYY-MM-DD")
    r.add_argument("--until", "--to", dest="until", type=_date, help="last logical date (inclusive) for a range")
    r.add_argument("--site", action="append", default=[], help="only this site (repeatable)")
    r.add_argument("--destination", action="append", default=[], help="only this destination (repeatable)")
    r.add_argument("--dry-run", action="store_true", help="write request bodies to the outbox, send nothing")
    r.add_argument("--outbox", help=f"outbox folder for --dry-run (default: <staging>/{layout.OUTBOX})")
    r.add_argument("--reprocess", action="store_true", help="parse objects again even if staged")
    r.add_argument("--retry-poisoned", action="store_true",
                   help="parse again objects that failed 3 runs in a row (skipped until they change otherwise)")
    r.add_argument("--json", help="also write the summary as JSON to this file")
    r.add_argument("--quiet", action="store_true", help="no progress lines")
    r.set_defaults(func=_cmd_run)

    s = sub.add_parser("summary", help="print the summary of the latest (or a given) run")
    s.add_argument("--config", required=True)
    s.add_argument("--run-id")
    s.set_defaults(func=_cmd_summary)

    q = sub.add_parser("query", help="DuckDB over staging: events, quarantine, manifests, deliveries, runs, quality")
    q.add_argument("--config", required=True)
    q.add_argument("--from", "--date", dest="first", type=_date, help="only these UTC dates: first, YYYY-MM-DD")
    q.add_argument("--to", "--until", dest="last", type=_date, help="last date, inclusive (default: --from)")
    q.add_argument("--sql", help="run this SQL, print the result and exit (default: an interactive "
                                 "shell, or the SQL read from stdin when it is not a terminal)")
    q.add_argument("--format", choices=["table", "csv", "json"], default="table",
                   help="how to print results (json: one object per line)")
    q.set_defaults(func=_cmd_query)

    rp = sub.add_parser("report", help="write a self-contained HTML report (charts) for a date range")
    rp.add_argument("--config", required=True)
    rp.add_argument("--from", "--date", dest="first", required=True, type=_date, help="first UTC date, YYYY-MM-DD")
    rp.add_argument("--to", "--until", dest="last", type=_date, help="last UTC date, inclusive (default: --from)")
    rp.add_argument("--out", help="the HTML file to write (default: agent-traffic-report_<from>[_<to>].html)")
    rp.set_defaults(func=_cmd_report)

    rl = sub.add_parser("release", help="send a source's objects that data quality held (after a look at why)")
    rl.add_argument("--config", required=True)
    rl.add_argument("--source", required=True, help="the source named in the summary's hold line")
    rl.add_argument("--date", "--from", dest="date", required=True, type=_date, help="the held date, YYYY-MM-DD")
    rl.add_argument("--until", "--to", dest="until", type=_date, help="last date (inclusive) for a range")
    rl.set_defaults(func=_cmd_release)

    c = sub.add_parser("classify", help="what is this user agent? one per line on stdin (`<ua>` or `<ua>\\t<ip>`), "
                       "one JSON object per line out")
    c.add_argument("--config", help="use this config's catalog files and stored IP-range snapshots")
    c.add_argument("--catalog", action="append", default=[], help="an extra catalog file (repeatable)")
    c.add_argument("--date", type=_date, help="day of the requests, for list freshness (default: today, UTC)")
    c.add_argument("--flush", action="store_true", help="flush after every line (interactive pipes)")
    c.set_defaults(func=_cmd_classify)

    from agent_traffic.devtools.sandbox import register_cli

    register_cli(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except AgentTrafficError as exc:
        print(f"agent-traffic: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def console() -> int:
    """The program (`agent-traffic`, `python -m agent_traffic`): `main`, then the exit handlers,
    then exit without tearing the interpreter down.

    By then every result is written, every pool joined and every exit handler run; what the
    teardown adds is freeing the imported modules' objects one by one (GX, DuckDB, Arrow, pandas):
    over a second of a day's run for nothing. A thread still working (not a daemon) gets the
    ordinary exit, which waits for it."""
    code = main()
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.current_thread()):
        return code
    atexit._run_exitfuncs()  # logging's flush, weakref finalizers (query's temporary copies)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:  # a closed pipe: what Python's own exit says then
        code = code or 120
    os._exit(code)
