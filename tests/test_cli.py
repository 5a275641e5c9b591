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
