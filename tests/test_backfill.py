"""A date range as one command: day by day, a progress line per day, killed mid-way and resumed.

The command-line runner runs in its own process against the local receiver; every sample line
carries a unique sequence tag, so the receiver's log tells what is missing and what came twice.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import date, timedelta
from pathlib import Path

from agent_traffic.devtools.samples import combined_lines, gzip_log, write_day
from agent_traffic.run.runner import _duration
from tests.conftest import write_config

FIRST = date(2026, 11, 17)
DAYS = [FIRST + timedelta(days=i) for i in range(5)]
BEFORE = FIRST - timedelta(days=1)  # a late object filed under the day before the range
SITE_ID = "01JDEM0SANDB0X0000000000AA"
LINES = 400
PROGRESS = re.compile(r"backfill \[(\d)/5\] (\d{4}-\d\d-\d\d) done: ([\d,]+) delivered today, ([\d,]+) in all "
                      r"\(([\d,]+)/s\), ~(\d+h\d\dm|\d+m\d\ds|\d+s) left")


def _ai_seqs(day: date, tag: str, n: int) -> set[str]:
    """The AI agents' seq tags among the generator's lines, worked out from the generator itself."""
    from agent_traffic.annotate.catalog import load_catalog
    from agent_traffic.annotate.classify import Classifier

    clf = Classifier(load_catalog())
    return {f"{tag}-{i}" for i, line in enumerate(combined_lines(day, n, tag=tag))
            if "seq=" in line and clf.classify(line.rsplit('"', 2)[-2]).is_ai}


def _received(sandbox) -> Counter[str]:
    return Counter(e["url"].rsplit("seq=", 1)[1] for e in sandbox.accepted("scrunch", SITE_ID))


def _lines(proc: subprocess.Popen) -> queue.Queue[str | None]:
    """The process's stderr, line by line as it comes (None at its end)."""
    q: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in proc.stderr:  # type: ignore[union-attr]
            q.put(line)
        q.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return q


def test_range_runs_day_by_day_and_resumes_after_a_kill(tmp_path: Path, sandbox, api_key: str) -> None:
    logs = tmp_path / "logs"
    want: set[str] = set()
    for i, day in enumerate(DAYS):
        write_day(logs, day, lines=LINES, files=1, tag=f"d{i}")
        want |= _ai_seqs(day, f"d{i}", LINES)
    late = logs / f"{BEFORE:%Y/%m/%d}" / "late.log.gz"
    late.parent.mkdir(parents=True)
    late.write_bytes(gzip_log(list(combined_lines(BEFORE, 150, tag="late"))))
    want |= _ai_seqs(BEFORE, "late", 150)
    cfg = write_config(tmp_path / "cfg.yaml", staging=str(tmp_path / "staging"),
                       source_url=str(logs) + "/{date:%Y/%m/%d}/*.log.gz", base_url=sandbox.url,
                       delivery={"concurrency": 2}, extra_dest={"max_batch_events": 25})
    cmd = [sys.executable, "-m", "agent_traffic", "run", "--config", str(cfg), "--date", str(DAYS[0]),
           "--until", str(DAYS[-1]), "--json", str(tmp_path / "summary.json")]
    env = {**os.environ, "SCRUNCH_API_KEY_EXAMPLE": api_key}

    # The first run is killed (SIGKILL) as soon as it reports its second day done.
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines, seen = _lines(proc), []
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            assert line is not None, "the run ended before its second day:\n" + "".join(seen)
            seen.append(line)
            if "backfill [2/5]" in line:
                at_kill = _received(sandbox)
                os.kill(proc.pid, signal.SIGKILL)
                break
        else:
            raise AssertionError("no progress line for day 2 in 90 s:\n" + "".join(seen))
    finally:
        proc.kill()
        proc.wait(timeout=30)
    first_days = [m.groups() for m in map(PROGRESS.search, seen) if m]
    assert [(d[0], d[1]) for d in first_days] == [("1", str(DAYS[0])), ("2", str(DAYS[1]))]
    # Day by day: the first two days (and the late object, planned under its own date with the
    # first day) were delivered in full before the third day started.
    assert {s.split("-")[0] for s in at_kill} == {"late", "d0", "d1"}
    assert set(at_kill) == {s for s in want if s.split("-")[0] in ("late", "d0", "d1")}
    assert int(first_days[1][3].replace(",", "")) == len(at_kill)

    # Run the same command again: it skips what is done and finishes the range.
    final = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert final.returncode == 0, final.stdout + final.stderr
    out = final.stderr.splitlines()
    progress = [(i, PROGRESS.search(line)) for i, line in enumerate(out) if PROGRESS.search(line)]
    assert [m.group(2) for _, m in progress] == [str(d) for d in DAYS]
    today = [int(m.group(3).replace(",", "")) for _, m in progress]
    assert today[:2] == [0, 0]  # the days done before the kill: nothing parsed or sent again
    assert int(progress[-1][1].group(4).replace(",", "")) == sum(today) == len(want) - len(at_kill)
    assert progress[-1][1].group(6) == "0s"
    # each day's objects are parsed after the previous day is done
    for k in (3, 4):
        parse_k = next(i for i, line in enumerate(out) if "parse [" in line and f"/{DAYS[k]:%Y/%m/%d}/" in line)
        assert progress[k - 1][0] < parse_k < progress[k][0]

    got = _received(sandbox)
    assert set(got) == want, f"{len(want - set(got))} missing"
    assert max(got.values()) == 1, "an event was delivered twice"
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["ok"], summary["problems"]
    assert summary["dates"] == [str(d) for d in DAYS] and summary["lookback_dates"] == [str(BEFORE)]
    dest = summary["destinations"][0]
    assert dest["delivered"] == len(want) and dest["pending"] == dest["failed"] == 0 and dest["balanced"]
    acks = list((tmp_path / "staging" / "_delivery").rglob("acks/*.json"))
    assert sum(json.loads(p.read_text())["events"] for p in acks) == len(want)


def test_time_left_reads_like_a_person_says_it() -> None:
    assert [_duration(s) for s in (0, 35.4, 250, 3599, 3720, 90061)] == ["0s", "35s", "4m10s", "59m59s",
                                                                       "1h02m", "25h01m"]
