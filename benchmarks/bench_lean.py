"""Lean: one real day (2 million Apache combined lines) beside `gzip -dc` and GoAccess, and memory.

The day is the shared reference log (/work/shared/reference/apache_access_combined.log, 10,000
real lines; `BENCH_REFERENCE` names another) repeated 200 times with every date rewritten to
2026-11-21, gzip level 6, made once under .bench/lean/. Without the reference, the tests' sample
renderer (agent_traffic.devtools.samples) writes the same number of lines instead.

In each of three interleaved rounds (same moment, same input, so ratios hold on a noisy machine),
each a fresh process measured with `wait4` (wall, CPU user + system, peak RSS):
- `gzip -dc` (decompression alone, the floor of any reader);
- GoAccess 1.7 (Debian's `goaccess`, installed if missing), JSON report, fed by `gzip -dc`;
- `agent-traffic run --dry-run --quiet` (discover, parse, classify, stage, validate, plan, outbox);
- one parse-and-stage task alone (`steps.process_object` on the day's object in a fresh
  interpreter, imports included: what a worker task holds), on the day and on a quarter of it
  (memory must not grow with the object);
- four parse-and-stage tasks at once (four processes, four objects): summed peak RSS, as on one
  worker running four mapped tasks.
Then once: the run with progress lines, its RSS sampled every 0.1 s and cut at the stage
boundaries the progress lines mark; and the parse path step by step (decompress; + cut into
blocks and frame lines; + the DuckDB parse; + classify; + stage) in CPU seconds.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from datetime import date
from pathlib import Path
from typing import Any

from benchmarks.harness import DATA, ROOT, TASK_EXIT, python_child, run_child

DAY = date(2026, 11, 21)
REFERENCE = Path(os.environ.get("BENCH_REFERENCE") or ROOT.parent / "shared" / "reference" / "apache_access_combined.log")
HERE = DATA / "lean"
CLF_DATE = re.compile(rb"\[\d{2}/[A-Z][a-z]{2}/\d{4}:")
ENV = {"PYTHONPATH": os.pathsep.join([str(ROOT / "include"), str(ROOT), os.environ.get("PYTHONPATH", "")]),
       "BENCH_KEY": "bench-not-sent"}

#: One parse-and-stage task, as a worker runs it: a fresh interpreter, the pipeline's own call.
TASK = r"""
import os, sys
from agent_traffic.run.steps import process_object
from agent_traffic.run.runtime import Runtime
from agent_traffic.ingest.discover import ObjectRef
cfg, path, oid = sys.argv[1:4]
rt = Runtime.load(cfg, "bench")
res = process_object(rt, ObjectRef(oid, "file://" + path, os.path.getsize(path), None, None, "web", %(day)r))
assert res.status == "staged" and res.stats["balanced"], (res.status, res.reason)
""" + TASK_EXIT

#: The parse path cut after one step: CPU seconds of that much of the work (imports excluded).
STEPS = r"""
import json, sys, time
from agent_traffic.run.steps import classify_table
from agent_traffic.run.runtime import Runtime
from agent_traffic.ingest.decompress import decompressed_blocks
from agent_traffic.ingest.parse import ParseContext, parse_blocks, cut_blocks, by_lines, _framed, in_background
from agent_traffic.staging.stage import ObjectStager
step, cfg, path = sys.argv[1:4]
rt = Runtime.load(cfg, "bench")
rt.annotator
p = rt.cfg.parse
ctx = ParseContext("c" * 16, "file://" + path, rt.formats["combined"], "example.com", "example.com", "https", {},
                   p.max_line_bytes)
c0 = time.process_time()
with open(path, "rb") as f:
    _, blocks = decompressed_blocks(f)
    if step == "decompress":
        for _ in blocks:
            pass
    elif step == "frame":
        for _ in in_background(_framed(b for c in cut_blocks(blocks, p.block_bytes, p.max_line_bytes)
                                       for b in by_lines(c, p.block_lines))):
            pass
    else:
        stager = ObjectStager(rt.store, "c" * 16, %(day)r)
        for pb in in_background(parse_blocks(blocks, ctx, p.block_bytes, p.block_lines)):
            events = classify_table(rt.annotator, pb.events) if step != "parse" else pb.events
            if step == "stage":
                stager.add(events, pb.quarantine)
        stager.abort()
print(json.dumps({"cpu": time.process_time() - c0}))
"""


def run_usage(argv: list[str], **kw: object) -> tuple[float, float, float]:
    """(wall s, peak RSS MB, CPU s) of one child."""
    c = run_child(argv, **kw)
    return c.wall_s, c.peak_mb, c.cpu_s


def _reference_day(out: Path, repeats: int) -> None:
    """The reference log `repeats` times, dates rewritten to DAY, as one gzip object."""
    text = CLF_DATE.sub(f"[{DAY:%d/%b/%Y}:".encode(), REFERENCE.read_bytes())
    if not text.endswith(b"\n"):
        text += b"\n"
    tmp = out.with_suffix(".tmp")
    with gzip.open(tmp, "wb", compresslevel=6) as f:
        for _ in range(repeats):
            f.write(text)
    tmp.rename(out)


def _day(repeats: int) -> tuple[Path, int]:
    """(gzip object of the day at root/YYYY/MM/DD/access.log.gz, lines), made once."""
    folder = HERE / f"day-{repeats}x" / f"{DAY:%Y/%m/%d}"
    path = folder / "access.log.gz"
    lines = 10_000 * repeats
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        if REFERENCE.exists():
            _reference_day(path, repeats)
        else:  # in a child: this process stays small (a forked child starts at its parent's RSS)
            subprocess.run(python_child(
                "import shutil; from datetime import date; from pathlib import Path; "
                "from agent_traffic.devtools.samples import write_day; "
                f"p = write_day(Path({str(HERE / 'gen')!r}), date.fromisoformat({DAY.isoformat()!r}), "
                f"lines={lines}, files=1)[0]; shutil.move(p, {str(path)!r})"), env={**os.environ, **ENV}, check=True)
    if REFERENCE.exists():
        lines = sum(1 for _ in REFERENCE.open("rb")) * repeats
    return path, lines


def _config(name: str, logs: Path) -> Path:
    """A config whose staging is its own, fresh folder."""
    work = HERE / "work" / name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cfg = {"version": 1, "staging": str(work / "staging"),
           "sources": [{"name": "web", "url": str(logs) + "/{date:%Y/%m/%d}/*.gz", "format": "combined",
                        "site": "example.com"}],
           "sites": [{"name": "example.com", "destinations": [{
               "name": "scrunch-example", "vendor": "scrunch", "site_id": "01JDEM0SANDB0X0000000000AA",
               "base_url": "http://127.0.0.1:9", "secret": {"env": "BENCH_KEY"}}]}]}
    path = work / "cfg.json"
    path.write_text(json.dumps(cfg))
    return path


def _goaccess(install: bool) -> str | None:
    """None when GoAccess is there (installed from Debian if missing), else why not."""
    if shutil.which("goaccess"):
        return None
    if not install:
        return "not installed (quick runs do not install it)"
    try:
        for cmd in (["apt-get", "install", "-y", "-q", "goaccess"], ["apt-get", "update", "-q"],
                    ["apt-get", "install", "-y", "-q", "goaccess"]):
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                               env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
            if r.returncode == 0 and shutil.which("goaccess"):
                return None
        return f"`apt-get install goaccess` failed: {(r.stderr or r.stdout).strip().splitlines()[-1:]}"
    except (OSError, subprocess.SubprocessError) as exc:
        return f"`apt-get install goaccess` failed: {exc}"


class Runs:
    """Measurements by label, in first-measured order."""

    def __init__(self) -> None:
        self.by: dict[str, list[tuple[float, float, float]]] = {}

    def add(self, label: str, wall: float, peak: float, cpu: float) -> None:
        self.by.setdefault(label, []).append((wall, peak, cpu))

    def median(self, label: str) -> float:
        return statistics.median(r[0] for r in self.by[label])


def _four(cfg: Path, path: Path) -> tuple[float, float, float]:
    """Four tasks at once, four objects (the day's object under four ids): wall until the last
    ends, summed peak RSS, summed CPU."""
    t0 = time.perf_counter()
    procs = [subprocess.Popen(python_child(TASK % {"day": str(DAY)}) + [str(cfg), str(path), f"{i:016x}"],
                              env={**os.environ, **ENV}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for i in range(4)]
    peak = cpu = 0.0
    for p in procs:
        _, status, usage = os.wait4(p.pid, 0)
        if os.waitstatus_to_exitcode(status):
            raise RuntimeError(f"a parse task failed: {p.stderr.read().decode(errors='replace')[-2000:]}")
        peak += usage.ru_maxrss / 1024
        cpu += usage.ru_utime + usage.ru_stime
    return time.perf_counter() - t0, peak, cpu


STAGES = (("discover:", "imports, config, discover"), ("parse [", "parse, classify, stage"),
          ("validate ", "validate"), ("plan ", "plan"), ("day [", "outbox (dry run)"))


def _profile(cfg: Path) -> tuple[list[dict[str, Any]], float]:
    """The run once with progress lines, RSS sampled every 0.1 s: per stage (a progress line ends
    one) its seconds and peak RSS; and the run's own peak (wait4)."""
    argv = [sys.executable, "-m", "agent_traffic", "run", "--config", str(cfg), "--date", str(DAY), "--dry-run"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **ENV})
    marks: list[tuple[float, str]] = []

    def read() -> None:
        for line in proc.stderr:  # type: ignore[union-attr]
            msg = line.split("] ", 1)[-1]
            marks.append((time.perf_counter() - t0, msg))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    samples: list[tuple[float, float]] = []
    status = usage = None
    while status is None:
        pid, st, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            status, usage = st, ru
            break
        try:
            with open(f"/proc/{proc.pid}/status") as f:
                rss = next(int(x.split()[1]) for x in f if x.startswith("VmRSS"))
            samples.append((time.perf_counter() - t0, rss / 1024))
        except (OSError, StopIteration):
            pass
        time.sleep(0.1)
    end = time.perf_counter() - t0
    reader.join(timeout=10)
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"agent-traffic run failed: {marks[-5:]}")
    bounds: list[tuple[str, float]] = []  # (stage, time its last progress line came)
    for prefix, name in STAGES:
        times = [t for t, m in marks if m.startswith(prefix)]
        if times:
            bounds.append((name, max(times)))
    bounds.append(("summary, exit", end))
    rows, start = [], 0.0
    for name, stop in bounds:
        inside = [mb for t, mb in samples if start <= t <= stop]
        rows.append({"stage": name, "from s": round(start, 1), "to s": round(stop, 1),
                     "peak RSS MB": round(max(inside), 0) if inside else None})
        start = stop
    return rows, usage.ru_maxrss / 1024 if usage else 0.0


def _steps(cfg: Path, path: Path) -> dict[str, float]:
    out = {}
    for step in ("decompress", "frame", "parse", "classify", "stage"):
        r = subprocess.run(python_child(STEPS % {"day": str(DAY)}) + [step, str(cfg), str(path)],
                           env={**os.environ, **ENV}, capture_output=True, text=True, check=True)
        out[step] = json.loads(r.stdout.strip().splitlines()[-1])["cpu"]
    return out


def run(repeat: int, quick: bool) -> dict[str, Any]:
    rounds = 1 if quick else max(3, repeat)
    reps = 5 if quick else 200
    day, lines = _day(reps)
    quarter, quarter_lines = _day(reps // 4 or 1)
    no_goaccess = _goaccess(install=not quick)
    gz_m = Runs()
    report = HERE / "goaccess.json"
    task = python_child(TASK % {"day": str(DAY)})
    logs = day.parents[3]
    for i in range(rounds):
        gz_m.add("gzip -dc", *run_usage(["gzip", "-dc", str(day)]))
        if no_goaccess is None:
            gz_m.add("GoAccess (gzip -dc | goaccess, JSON report)", *run_usage(
                ["sh", "-c", f"gzip -dc '{day}' | goaccess - --log-format=COMBINED --no-progress -o '{report}'"]))
        cfg = _config(f"run-{i}", logs)
        gz_m.add("agent-traffic run --dry-run (whole run)", *run_usage(
            [sys.executable, "-m", "agent_traffic", "run", "--config", str(cfg), "--date", str(DAY), "--dry-run",
             "--quiet"], env=ENV))
        cfg = _config(f"task-{i}", logs)
        gz_m.add("one parse-and-stage task (the day)", *run_usage(task + [str(cfg), str(day), "a" * 16], env=ENV))
        cfg = _config(f"quarter-{i}", logs)
        gz_m.add("one parse-and-stage task (a quarter of the day)",
                 *run_usage(task + [str(cfg), str(quarter), "b" * 16], env=ENV))
        cfg = _config(f"four-{i}", logs)
        gz_m.add("four parse-and-stage tasks at once (summed RSS)", *_four(cfg, day))
    stages, run_peak = _profile(_config("profile", logs))
    steps = _steps(_config("steps", logs), day)
    gz = gz_m.median("gzip -dc")
    ga = gz_m.median("GoAccess (gzip -dc | goaccess, JSON report)") if no_goaccess is None else None
    rows = []
    for label, runs in gz_m.by.items():
        wall = statistics.median(r[0] for r in runs)
        n = quarter_lines if "quarter" in label else lines * 4 if label.startswith("four") else lines
        rows.append({"command": label, "lines": n, "median s": round(wall, 2),
                     "CPU s": round(statistics.median(r[2] for r in runs), 2),
                     "peak RSS MB": round(max(r[1] for r in runs)), "x gzip -dc": round(wall / gz, 1),
                     "x GoAccess": round(wall / ga, 2) if ga else None, "runs": len(runs)})
    if no_goaccess:
        rows.append({"command": f"GoAccess: {no_goaccess}", "lines": lines})
    for s in stages:
        rows.append({"command": f"run stage: {s['stage']} ({s['from s']}-{s['to s']} s)", "lines": lines,
                     "median s": round(s["to s"] - s["from s"], 1), "peak RSS MB": s["peak RSS MB"], "runs": 1})
    prev = 0.0
    for step, cpu in steps.items():
        rows.append({"command": f"parse path, + {step} (CPU of this step)", "lines": lines, "CPU s": round(cpu - prev, 2),
                     "x gzip -dc": round((cpu - prev) / gz, 2), "runs": 1})
        prev = cpu
    task_day = next(r for r in rows if r["command"] == "one parse-and-stage task (the day)")
    task_q = next(r for r in rows if r["command"] == "one parse-and-stage task (a quarter of the day)")
    four = next(r for r in rows if r["command"].startswith("four"))
    whole = gz_m.median("agent-traffic run --dry-run (whole run)")
    # ratios within each round (the commands ran minutes apart at most), then their median: steadier
    # than a ratio of medians when the machine's load drifts between rounds
    ga_runs = [r[0] for r in gz_m.by.get("GoAccess (gzip -dc | goaccess, JSON report)", [])]
    vs_ga = sorted(g / r[0] for g, r in zip(ga_runs, gz_m.by["agent-traffic run --dry-run (whole run)"], strict=False))
    vs_gz = sorted(r[0] / g[0] for g, r in zip(gz_m.by["gzip -dc"], gz_m.by["one parse-and-stage task (the day)"],
                                               strict=True))
    source = (f"the shared reference log ({REFERENCE.name}) x{reps}" if REFERENCE.exists()
              else "agent_traffic.devtools.samples lines (the shared reference log was not found)")
    return {
        "title": "Lean: one day beside gzip -dc and GoAccess, memory per stage" + (" (quick)" if quick else ""),
        "setup": (f"{lines:,} Apache combined lines, one day ({source}, dates rewritten to {DAY}), one gzip "
                  f"object of {day.stat().st_size / 1e6:,.0f} MB; {rounds} interleaved round(s), medians; "
                  "each command a fresh process, wall / CPU (user + system) / peak RSS from wait4 (a shell "
                  "pipeline: CPU summed, peak the larger). Parse tasks include interpreter start-up and imports."),
        "rows": rows,
        "notes": [
            f"aims (issue #22): whole run peak {round(run_peak)} MB in the profiled run, "
            f"{max(r[1] for r in gz_m.by['agent-traffic run --dry-run (whole run)']):.0f} MB in the rounds "
            f"(aim <= 600); one task {task_day['peak RSS MB']} MB on the day, {task_q['peak RSS MB']} MB on a "
            f"quarter of it (aim <= 500 and flat); four at once {four['peak RSS MB']} MB (aim < 2,500); "
            + (f"the run at {ga / whole:.2f}x GoAccess's speed (aim >= 2); " if ga else "")
            + f"one task {task_day['x gzip -dc']}x gzip -dc in wall time, imports included (aim <= 3).",
            *([f"per round: the run at {statistics.median(vs_ga):.2f}x GoAccess's speed (median; rounds "
               f"{', '.join(f'{x:.2f}' for x in vs_ga)}), GoAccess itself {min(ga_runs):.1f}-{max(ga_runs):.1f} s"]
              if vs_ga else []),
            f"per round: one task at {statistics.median(vs_gz):.2f}x gzip -dc (median; rounds "
            f"{', '.join(f'{x:.2f}' for x in vs_gz)}).",
            "run stages: RSS sampled every 0.1 s and cut where the run's progress lines end each stage; the "
            "validate stage runs Great Expectations over the day's rows (validate.py).",
            "parse path: the same object parsed in fresh processes cut after each step (decompress; + cut into "
            "blocks and frame lines; + DuckDB parse; + classify; + Parquet staging), CPU seconds in all threads; "
            "each row is the step's CPU over gzip -dc's wall time.",
            "GoAccess 1.7 (Debian) builds its whole report in memory from the text on stdin; ours parses each "
            "line into a canonical event, classifies it, stages it as Parquet and validates it.",
        ],
    }
