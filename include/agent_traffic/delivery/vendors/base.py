"""What every vendor protocol provides to the planner and the delivery engine."""

from __future__ import annotations

import ipaddress
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from agent_traffic.arrow_values import scalar
from agent_traffic.config import Destination, Site
from agent_traffic.delivery.vendors import json_columns
from agent_traffic.delivery.vendors.json_columns import Field
from agent_traffic.secrets import Secret
from agent_traffic.vendor_specs import VendorSpec


class Vendor(ABC):
    """A vendor's wire format. Its facts (name, limits, defaults) are its `VendorSpec`."""

    #: statuses that mean "accepted"
    success: frozenset[int]
    #: the staged columns `fields` reads (the planner selects only these)
    columns: tuple[str, ...]
    #: staged columns `ineligible` reads besides those
    reads: tuple[str, ...] = ()
    #: of `columns`, those the planner reads as Arrow dictionaries (few distinct values per staged
    #: file, such as user agents: decoding each row's string cost more than the rest of reading
    #: them); `fields` must take them so (`json_columns.text` and `obj` do)
    dictionary_columns: tuple[str, ...] = ()
    #: chunks per delivery task, as a multiple of `delivery.chunks_per_group`: small requests
    #: make small chunks, and a task should still carry a task's worth of work
    group_scale: int = 1
    #: consecutive chunks of an object under one delivery lease: 1 for megabyte requests; more
    #: for small ones, whose lease file would otherwise cost more than the request
    chunks_per_lease: int = 1

    def __init__(self, spec: VendorSpec) -> None:
        self.spec = spec

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def title(self) -> str:
        """The vendor's own name, as the summary shows it."""
        return self.spec.title

    @property
    def stamps_receive_time(self) -> bool:
        """True when the vendor records when it received a row, not when the request happened."""
        return self.spec.stamps_receive_time

    @abstractmethod
    def fields(self, table: pa.Table, site: Site, dest: Destination) -> list[Field]:
        """The vendor's JSON object, declared once for every row of `table`: (key, JSON fragments)
        in the vendor's field order, a null fragment leaving the key out (`json_columns`).
        `table` holds the vendor's `columns` (those present) and `ts_us`, the event time in
        microseconds since the epoch, UTC."""

    def lines(self, table: pa.Table, site: Site, dest: Destination, end: str = "") -> pa.Array:
        """Every row's event as one line of compact JSON followed by `end`, without a Python
        object per row."""
        return json_columns.obj(self.fields(table, site, dest), table.num_rows, end)

    def event(self, row: Mapping[str, Any], site: Site, dest: Destination) -> dict[str, Any]:
        """One event's JSON object, for tests and examples (the same `fields`, on one row)."""
        line = self.lines(pa.Table.from_pylist([dict(row)]), site, dest)[0].as_py()
        return orjson.loads(line)

    #: what follows each event in the body the planner joins (so byte limits count one per event)
    separator: bytes = b"\n"

    @abstractmethod
    def body(self, joined: bytes, events: int) -> tuple[bytes, str]:
        """(request body, content type) from a chunk's events, each followed by `separator`."""

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


def path_with_query(table: pa.Table) -> pa.Array:
    """The request target as logged: path, plus `?query` when there was one."""
    query = json_columns.column(table, "query")
    suffix = pc.if_else(json_columns.present(query), json_columns.join("?", query), scalar(""))
    return json_columns.join(json_columns.column(table, "path"), suffix)


def ip_values(table: pa.Table, policy: str) -> pa.Array:
    """Per row, the client IP the destination's policy lets out (null: send none)."""
    ips = json_columns.column(table, "client_ip")
    if policy == "omit":
        return pa.nulls(table.num_rows, pa.string())
    if policy == "send":
        return json_columns.only_where(json_columns.present(ips), ips)
    return json_columns.per_unique(ips, lambda ip: apply_ip_policy(ip, policy))


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
