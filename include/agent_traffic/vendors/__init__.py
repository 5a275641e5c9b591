"""Vendor protocols: how a staged event becomes a request body for each destination."""

from __future__ import annotations

from agent_traffic.vendors.base import Vendor
from agent_traffic.vendors.hitkeep import HitKeep
from agent_traffic.vendors.knownagents import KnownAgents
from agent_traffic.vendors.scrunch import Scrunch

VENDORS: dict[str, Vendor] = {v.name: v for v in (Scrunch(), HitKeep(), KnownAgents())}


def vendor(name: str) -> Vendor:
    try:
        return VENDORS[name]
    except KeyError:
        raise KeyError(f"unknown vendor {name!r}; known: {sorted(VENDORS)}") from None
