"""`python -m agent_traffic` is the same as the `agent-traffic` console script."""

from agent_traffic.cli import console

raise SystemExit(console())
