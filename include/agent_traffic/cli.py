"""`agent-traffic`: run the pipeline without a scheduler, and the local vendor receiver."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path

from agent_traffic.errors import AgentTrafficError


def _date(s: str) -> date:
    try:
        return date.fromisoformat(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date as YYYY-MM-DD, got {s!r}") from None


def _cmd_run(args: argparse.Namespace) -> int:
    from agent_traffic.pipeline import Runtime
    from agent_traffic.runner import Progress, new_run_id, run
    from agent_traffic.storage import Store
    from agent_traffic.summary import render

    rt = Runtime.load(args.config, new_run_id())
    outbox = None
    if args.dry_run:
        outbox = Store(str(Path(args.outbox).resolve()) if args.outbox else rt.store.url("_outbox"))
    summary = run(
        rt, args.date, args.until or args.date, sites=args.site, destinations=args.destination,
        dry_run=args.dry_run, reprocess=args.reprocess, outbox=outbox,
        progress=Progress(None if args.quiet else sys.stderr),
    )
    print(render(summary))
    if args.dry_run:
        print(f"outbox    {summary['outbox']}")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return 0 if summary["ok"] else 1


def _cmd_summary(args: argparse.Namespace) -> int:
    from agent_traffic.config import load_config
    from agent_traffic.storage import Store, StoreOptions
    from agent_traffic.summary import render

    cfg = load_config(args.config)
    store = Store(cfg.staging, StoreOptions.from_config(cfg.object_store))
    runs = [k for k in store.list("_runs/") if k.count("/") == 1]
    if not runs:
        print("no run has been recorded in this staging store yet", file=sys.stderr)
        return 1
    key = f"_runs/{args.run_id}.json" if args.run_id else max(
        runs, key=lambda k: (store.fs.info(store.path(k)).get("mtime") or 0, k))
    summary = store.get_json(key)
    print(render(summary))
    return 0 if summary["ok"] else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="agent-traffic", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="discover, parse, stage and deliver one date or a range")
    r.add_argument("--config", required=True, help="the YAML config file")
    r.add_argument("--date", required=True, type=_date, help="first logical date, YYYY-MM-DD")
    r.add_argument("--until", type=_date, help="last logical date (inclusive) for a range")
    r.add_argument("--site", action="append", default=[], help="only this site (repeatable)")
    r.add_argument("--destination", action="append", default=[], help="only this destination (repeatable)")
    r.add_argument("--dry-run", action="store_true", help="write request bodies to the outbox, send nothing")
    r.add_argument("--outbox", help="outbox folder for --dry-run (default: <staging>/_outbox)")
    r.add_argument("--reprocess", action="store_true", help="parse objects again even if staged")
    r.add_argument("--json", help="also write the summary as JSON to this file")
    r.add_argument("--quiet", action="store_true", help="no progress lines")
    r.set_defaults(func=_cmd_run)

    s = sub.add_parser("summary", help="print the summary of the latest (or a given) run")
    s.add_argument("--config", required=True)
    s.add_argument("--run-id")
    s.set_defaults(func=_cmd_summary)

    from agent_traffic.sandbox import register_cli

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
