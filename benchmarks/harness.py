"""Run a command several times; report median wall time and the child's own peak memory and CPU.

Each measurement is a separate process and its peak RSS and CPU time (user + system, all its
threads) come from `os.wait4` on that process, so they are the pipeline's, not the harness's. Machines are shared and noisy: compare ratios of
commands run side by side, on the same input, and read medians.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".bench"  # generated inputs; git-ignored

#: The end of a child script that stands for an Airflow task: a task process ends as Airflow 3's
#: does (airflow.sdk.execution_time.supervisor._fork_main), its exit handlers, then os._exit,
#: without the interpreter's teardown (a full garbage collection and every module freed: 0.07 s
#: for a sender, 0.15 s for a parse task, here).
TASK_EXIT = """
import atexit, os, sys
atexit._run_exitfuncs()
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)
"""


@dataclass
class Measurement:
    label: str
    seconds: list[float] = field(default_factory=list)
    peak_rss_mb: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)  # the process's user + system CPU, per run

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)

    @property
    def peak_mb(self) -> float:
        return max(self.peak_rss_mb)

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "median_s": round(self.median_s, 4),
                "runs_s": [round(s, 4) for s in self.seconds], "peak_rss_mb": round(self.peak_mb, 1)}


@dataclass(frozen=True)
class Child:
    """One finished child process: wall seconds, peak RSS MB, CPU seconds (user + system)."""

    wall_s: float
    peak_mb: float
    cpu_s: float


def run_once(argv: list[str], **kw: Any) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of one child process."""
    child = run_child(argv, **kw)
    return child.wall_s, child.peak_mb


def run_child(argv: list[str], *, stdout: Any = subprocess.DEVNULL, env: dict | None = None,
              shell_stdin: Path | None = None) -> Child:
    """Run one child process to its end; raise with its stderr if it fails."""
    stdin = open(shell_stdin, "rb") if shell_stdin else subprocess.DEVNULL  # noqa: SIM115
    try:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=stdout, stderr=subprocess.PIPE, stdin=stdin,
                                env={**os.environ, **(env or {})})
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - t0
    finally:
        if shell_stdin:
            stdin.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        raise RuntimeError(f"{argv[:4]} exited {proc.returncode}: {err[-2000:]}")
    return Child(elapsed, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime)


def measure(label: str, argv: list[str], repeat: int, **kw: Any) -> Measurement:
    m = Measurement(label)
    for _ in range(repeat):
        s, mb = run_once(argv, **kw)
        m.seconds.append(s)
        m.peak_rss_mb.append(mb)
    return m


def python_child(code: str) -> list[str]:
    """argv running `code` in a fresh interpreter of this venv."""
    return [sys.executable, "-c", code]
