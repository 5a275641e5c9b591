"""The command line: one vocabulary for dates across its commands."""

from __future__ import annotations

from datetime import date

import pytest

from agent_traffic.cli import build_parser


@pytest.mark.parametrize(("command", "first", "last"), [("run", "date", "until"), ("query", "first", "last"),
                                                         ("report", "first", "last")])
def test_every_command_takes_a_range_as_date_until_or_from_to(command: str, first: str, last: str) -> None:
    """`run --date/--until` and `query`/`report --from/--to` each accept the other's words."""
    p = build_parser()
    for words in (("--date", "--until"), ("--from", "--to")):
        args = p.parse_args([command, "--config", "c.yaml", words[0], "2026-11-01", words[1], "2026-11-30"])
        assert (getattr(args, first), getattr(args, last)) == (date(2026, 11, 1), date(2026, 11, 30))


CONSOLE = """
import atexit, sys, threading, time
from pathlib import Path
from agent_traffic import cli
out = Path(sys.argv[1])
atexit.register(lambda: (out / "exit-handler").write_text("ran"))
if sys.argv[2] == "thread":  # a thread still working when main returns: the program waits for it
    threading.Thread(target=lambda: (time.sleep(0.5), (out / "thread").write_text("done"))).start()
sys.argv = ["agent-traffic", "classify"]
raise SystemExit(cli.console())
"""


@pytest.mark.parametrize("thread", ["none", "thread"])
def test_the_program_exits_with_its_output_flushed_and_exit_handlers_run(tmp_path, thread: str) -> None:
    """`console` skips the interpreter's teardown, never what the program wrote or left running:
    all of stdout (block-buffered into a pipe), the exit handlers, a working thread, the exit code."""
    import json
    import subprocess
    import sys

    uas = [f"agent-{i}/1.0" for i in range(5000)]  # more than a pipe's buffer holds
    proc = subprocess.run([sys.executable, "-c", CONSOLE, str(tmp_path), thread], input="\n".join(uas) + "\n",
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == len(uas) and json.loads(lines[-1])["user_agent"] == uas[-1]
    assert (tmp_path / "exit-handler").read_text() == "ran"
    assert (tmp_path / "thread").exists() == (thread == "thread")
