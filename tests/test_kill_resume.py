"""Kill the runner with SIGKILL at random points, several times, while it delivers to all three
vendors at once (two sites, five destinations), then resume.

Every event carries a unique sequence tag, so the receiver's log tells exactly what is missing
and what was duplicated. The receiver answers 429s (HitKeep's and Known Agents' without
Retry-After), 500s, resets before reading the body, and the worst case for at-least-once
delivery: a body stored but never answered. The promise, per destination: nothing missing;
duplicates at most the requests in flight at each kill plus the unanswered ones.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.vendor_fixtures import (
    BLOG_LINES,
    DAY,
    KEY_ENVS,
    MAIN_LINES,
    expected_lines,
    fast_hitkeep,
    keys,
    received,
    three_vendor_config,
    wanted,
)

CONCURRENCY = 2
BATCH = {"scrunch-example": 100, "knownagents-example": 50, "knownagents-blog": 50,
         "hitkeep-example": 1, "hitkeep-blog": 1}
VENDOR_OF = {"scrunch-example": "scrunch", "knownagents-example": "known_agents", "knownagents-blog": "known_agents",
             "hitkeep-example": "hitkeep", "hitkeep-blog": "hitkeep"}


def _cmd(config: Path) -> list[str]:
    return [sys.executable, "-m", "agent_traffic", "run", "--config", str(config), "--date", str(DAY), "--quiet"]


def test_sigkill_at_random_points_loses_nothing(tmp_path: Path) -> None:
    from agent_traffic.devtools.sandbox import Sandbox

    dest_keys = keys()
    opt_in = {"send_older_events": True}  # DAY is in the past; the receiver must get all of it
    with Sandbox(api_keys=dest_keys.values(), seed=5) as sb:
        sb.retry_after = 0
        fast_hitkeep(sb)
        config = three_vendor_config(
            tmp_path / "cfg.yaml", tmp_path, sb.url, select="all",
            delivery={"concurrency": CONCURRENCY, "max_attempts": 20},
            scrunch={"max_batch_events": BATCH["scrunch-example"]},
            knownagents={**opt_in, "max_batch_events": BATCH["knownagents-example"]}, hitkeep=opt_in,
        )
        env = {**os.environ, **{KEY_ENVS[d]: k for d, k in dest_keys.items()}}
        # Every request is slowish, so a kill lands with requests in flight; some fail transiently,
        # some connections drop before the body is read, and some bodies are stored unanswered.
        sb.set_fault_rates({"slow:0.03": 0.5, "429": 0.08, "500": 0.08, "reset": 0.02, "reset_after_body": 0.03})
        rng = random.Random(20261121)
        kills = 0
        for _ in range(3):
            before = sum(sum(c.values()) for c in received(sb).values())
            target = before + rng.randint(50, 900)  # a random point in the delivery
            proc = subprocess.Popen(_cmd(config), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 90
            while proc.poll() is None and time.monotonic() < deadline:
                if sum(sum(c.values()) for c in received(sb).values()) >= target:
                    os.kill(proc.pid, signal.SIGKILL)
                    kills += 1
                    break
                time.sleep(0.005)
            proc.wait(timeout=30)
        assert kills >= 2, "the runs finished before they could be killed: make delivery slower"

        sb.set_fault_rates({})
        final = subprocess.run(_cmd(config), env=env, capture_output=True, text=True, timeout=180)
        assert final.returncode == 0, final.stdout + final.stderr

        got = received(sb)
        unanswered = {v: n.get("reset_after_body", 0) for v, n in sb.requests_seen.items()}
    for name, want in wanted().items():
        if name.startswith(("scrunch", "knownagents")):  # select: all (HitKeep: only its agents, ever)
            lines = expected_lines("a", MAIN_LINES) if name.endswith("example") else expected_lines("b", BLOG_LINES, seed=1)
            want = {x.seq for x in lines}
        missing = want - set(got[name])
        duplicates = sum(n - 1 for n in got[name].values())
        bound = (kills * CONCURRENCY + unanswered.get(VENDOR_OF[name], 0)) * BATCH[name]
        print(f"{name}: kills={kills} events={len(want)} duplicates={duplicates} bound={bound}")
        assert not missing, f"{name}: {len(missing)} events never delivered"
        assert set(got[name]) <= want, f"{name}: received events it must not get"
        assert duplicates <= bound, f"{name}: {duplicates} duplicates > bound {bound}"
