"""What every vendor protocol provides to the planner and the delivery engine."""

from __future__ import annotations

import ipaddress
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

from agent_traffic.config import Destination, Site
from agent_traffic.secrets import Secret


class Vendor(ABC):
    name: str
    #: statuses that mean "accepted"
    success: frozenset[int]

    @abstractmethod
    def event(self, row: Mapping[str, Any], site: Site, dest: Destination) -> dict[str, Any]:
        """The vendor's JSON object for one staged event."""

    @abstractmethod
    def body(self, lines: Sequence[bytes]) -> tuple[bytes, str]:
        """(request body, content type) for a chunk of serialized events."""

    @abstractmethod
    def url(self, dest: Destination) -> str:
        """The ingest endpoint for a destination."""

    @abstractmethod
    def auth_headers(self, secret: Secret) -> dict[str, str]:
        """Headers carrying the credential (built at send time, never logged)."""

    def limits(self, dest: Destination) -> tuple[int, int]:
        """(max body bytes, max events) per request."""
        return dest.max_batch_bytes, dest.max_batch_events


def apply_ip_policy(ip: str | None, policy: str) -> str | None:
    """send: as logged; truncate: /24 (IPv4) or /48 (IPv6) network address; omit: nothing."""
    if not ip or policy == "omit":
        return None
    if policy == "send":
        return ip
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return None
    prefix = 24 if addr.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False).network_address)
