"""Vendor protocols: how a staged event becomes a request body for each destination.

The vendors themselves are the table in `agent_traffic.vendor_specs`; a protocol class is imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from agent_traffic.vendor_specs import SPECS, VendorSpec, register, spec

if TYPE_CHECKING:
    from agent_traffic.delivery.vendors.base import Vendor

__all__ = ["SPECS", "VendorSpec", "register", "spec", "vendor"]

_made: dict[str, Vendor] = {}


def vendor(name: str) -> Vendor:
    """The protocol of a vendor in the table (one instance per spec; protocols hold no state)."""
    s = spec(name)
    made = _made.get(name)
    if made is None or made.spec is not s:
        module, _, cls = s.protocol.partition(":")
        made = _made[name] = getattr(importlib.import_module(module), cls)(s)
    return made
