"""End to end: gzip logs in a local folder -> `agent-traffic run` -> the local receiver.

The full run is 10 million combined-format lines over 10 objects (quick: 200k over 4), one site,
one Scrunch destination with the default selection (AI agents), as a user would run it: every
line parsed, classified, verified, staged and validated, the AI events planned and delivered.
Reported beside `gzip -dc` of the same objects, the floor for any reader of them.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
from datetime import date
from pathlib import Path

import yaml

from benchmarks.harness import DATA, ROOT, Measurement, python_child, run_once

DAY = date(2026, 11, 21)
SITE_ID = "01JDEM0SANDB0X0000000000AA"


def _logs(root: Path, lines: int, files: int) -> list[Path]:
    """The sample objects, made once. In a child process: on Linux a child's peak RSS starts at its
    parent's size when it was forked, so this process must stay small for the measurements."""
    marker = root / f".done-{lines}-{files}"
    folder = root / f"{DAY:%Y/%m/%d}"
    if not marker.exists():
        shutil.rmtree(root, ignore_errors=True)
        subprocess.run(python_child(
            "from datetime import date; from pathlib import Path; from agent_traffic.devtools.samples import write_day; "
            f"write_day(Path({str(root)!r}), date.fromisoformat({DAY.isoformat()!r}), lines={lines}, files={files})"),
            cwd=ROOT, check=True)
        marker.touch()
    return sorted(folder.glob("*.gz"))


def _receiver(port: int, key: str, data_dir: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent_traffic", "sandbox", "--port", str(port), "--data-dir", str(data_dir)],
        env={**os.environ, "AGENT_TRAFFIC_SANDBOX_KEYS": key}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/_sandbox/health", timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("the receiver did not start")


def run(repeat: int, quick: bool) -> dict:
    lines, files = (200_000, 4) if quick else (10_000_000, 10)
    repeat = min(repeat, 1 if quick else 2)  # a full run takes minutes
    root = DATA / "e2e" / "logs"
    objs = _logs(root, lines, files)
    size = sum(p.stat().st_size for p in objs)
    key = "bench-" + secrets.token_hex(8)
    port = 18000 + os.getpid() % 1000
    gz = Measurement("gzip -dc (all objects)")
    e2e = Measurement("agent-traffic run (parse, classify, stage, validate, plan, deliver)")
    delivered = 0
    for i in range(repeat):
        s, mb = run_once(["gzip", "-dc", *map(str, objs)])
        gz.seconds.append(s)
        gz.peak_rss_mb.append(mb)
        work = DATA / "e2e" / f"run-{i}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        cfg = work / "cfg.yaml"
        cfg.write_text(yaml.safe_dump({
            "version": 1, "staging": str(work / "staging"),
            "sources": [{"name": "web", "url": str(root) + "/{date:%Y/%m/%d}/*.gz", "format": "combined",
                         "site": "example.com"}],
            "sites": [{"name": "example.com", "destinations": [{
                "name": "scrunch-example", "vendor": "scrunch", "site_id": SITE_ID,
                "base_url": f"http://127.0.0.1:{port}", "secret": {"env": "BENCH_KEY"}}]}],
            "delivery": {"concurrency": 8},
        }))
        receiver = _receiver(port, key, work / "received")
        try:
            s, mb = run_once([sys.executable, "-m", "agent_traffic", "run", "--config", str(cfg), "--date",
                              str(DAY), "--quiet", "--json", str(work / "summary.json")],
                             env={"BENCH_KEY": key})
        finally:
            receiver.terminate()
            receiver.wait(timeout=30)
        e2e.seconds.append(s)
        e2e.peak_rss_mb.append(mb)
        import json

        summary = json.loads((work / "summary.json").read_text())
        assert summary["lines"]["read"] == lines, summary["lines"]
        delivered = summary["destinations"][0]["delivered"]
    return {
        "title": "End to end: 10 million lines through `agent-traffic run`" if not quick else "End to end (quick)",
        "setup": f"{lines:,} combined-format lines in {files} gzip objects ({size / 1e6:,.0f} MB compressed), "
                 f"one site, one Scrunch destination selecting AI agents (the default): {delivered:,} events "
                 "delivered to the local receiver over loopback (NDJSON < 1 MB, 8 requests in flight).",
        "rows": [
            {"step": m.label, "median s": m.median_s, "lines/s": lines / m.median_s,
             "x gzip -dc": m.median_s / gz.median_s, "peak RSS MB": m.peak_mb, "runs": len(m.seconds)}
            for m in (gz, e2e)
        ],
        "notes": ["The receiver runs in its own process; its memory is not counted."],
    }
