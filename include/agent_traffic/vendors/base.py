"""What every vendor protocol provides to the planner and the delivery engine."""

from __future__ import annotations

import ipaddress
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

from agent_traffic.config import RECEIVE_TIME_VENDORS, Destination, Site
from agent_traffic.secrets import Secret


class Vendor(ABC):
    name: str
    #: the vendor's own name, as the summary shows it
    title: str
    #: statuses that mean "accepted"
    success: frozenset[int]
    #: the staged columns `event` reads (only these are turned into Python objects)
    columns: tuple[str, ...]
    #: chunks per delivery task, as a multiple of `delivery.chunks_per_group`: small requests
    #: make small chunks, and a task should still carry a task's worth of work
    group_scale: int = 1

    @property
    def stamps_receive_time(self) -> bool:
        """True when the vendor records when it received a row, not when the request happened."""
        return self.name in RECEIVE_TIME_VENDORS

    @abstractmethod
    def event(self, row: Mapping[str, Any], site: Site, dest: Destination) -> dict[str, Any]:
        """The vendor's JSON object for one staged event: its `columns`, plus `ts_us` (the event
        time in microseconds since the epoch, UTC) and `line_number`."""

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
        """(max body bytes, max events) per request, counting one separator byte per event."""
        return dest.max_batch_bytes, dest.max_batch_events

    def ineligible(self, table: pa.Table, dest: Destination) -> pa.Array | None:
        """Per row, why this vendor cannot take the event (null: it can); None when it takes all."""
        return None


def path_with_query(row: Mapping[str, Any]) -> str:
    """The request target as logged: path, plus `?query` when there was one."""
    q = row.get("query")
    return f"{row['path']}?{q}" if q else row["path"]


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
