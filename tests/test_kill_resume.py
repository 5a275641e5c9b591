"""Kill the runner with SIGKILL in the middle of delivery, several times, then resume.

Every event carries a unique sequence tag, so the receiver's log tells exactly what is missing
and what was duplicated. The promise: nothing missing; duplicates at most the chunks that were in
flight at each kill (plus those the receiver stored but never answered: `reset_after_body`).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import date
from pathlib import Path

from agent_traffic.samples import write_day
from tests.conftest import write_config

DAY = date(2026, 11, 21)
SITE_ID = "01JDEM0SANDB0X0000000000AA"
LINES = 4000
BATCH = 100
CONCURRENCY = 2


def _cmd(config: Path) -> list[str]:
    return [sys.executable, "-m", "agent_traffic", "run", "--config", str(config), "--date", str(DAY), "--quiet"]


def test_sigkill_during_delivery_loses_nothing(tmp_path: Path, sandbox, api_key: str) -> None:
    write_day(tmp_path / "logs", DAY, lines=LINES, files=2, tag="k")
    config = write_config(
        tmp_path / "cfg.yaml", staging=str(tmp_path / "staging"),
        source_url=str(tmp_path / "logs") + "/{date:%Y/%m/%d}/*.log.gz", base_url=sandbox.url,
        select="all", delivery={"concurrency": CONCURRENCY, "max_attempts": 20},
        extra_dest={"max_batch_events": BATCH},
    )
    env = {**os.environ, "SCRUNCH_API_KEY_EXAMPLE": api_key}
    # Every request is slow, so a kill lands with requests in flight; some fail transiently, and
    # some are stored by the receiver without an answer (the duplicate-producing case).
    sandbox.set_fault_rates({"slow:0.04": 0.6, "429": 0.08, "500": 0.08, "reset_after_body": 0.03})
    rng = random.Random(20261121)
    kills = 0
    for _ in range(3):
        before = len(sandbox.accepted("scrunch", SITE_ID))
        target = before + rng.randint(BATCH, 12 * BATCH)
        proc = subprocess.Popen(_cmd(config), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 90
        while proc.poll() is None and time.monotonic() < deadline:
            if len(sandbox.accepted("scrunch", SITE_ID)) >= target:
                os.kill(proc.pid, signal.SIGKILL)
                kills += 1
                break
            time.sleep(0.005)
        proc.wait(timeout=30)
    assert kills >= 2, "the runs finished before they could be killed: make delivery slower"

    sandbox.set_fault_rates({})
    final = subprocess.run(_cmd(config), env=env, capture_output=True, text=True, timeout=180)
    assert final.returncode == 0, final.stdout + final.stderr

    got = Counter(e["url"].rsplit("seq=", 1)[1] for e in sandbox.accepted("scrunch", SITE_ID))
    import duckdb

    staged = {r[0].rsplit("seq=", 1)[1] for r in duckdb.sql(
        f"SELECT url FROM read_parquet('{tmp_path}/staging/events/**/*.parquet')").fetchall()}
    missing = staged - set(got)
    duplicates = sum(n - 1 for n in got.values())
    unanswered = sandbox.requests_seen["scrunch"].get("reset_after_body", 0)
    bound = (kills * CONCURRENCY + unanswered) * BATCH
    print(f"kills={kills} staged={len(staged)} duplicates={duplicates} unanswered={unanswered} bound={bound}")
    assert not missing, f"{len(missing)} events never delivered"
    assert set(got) <= staged
    assert duplicates <= bound, f"{duplicates} duplicates > bound {bound} ({kills} kills, {unanswered} unanswered)"
