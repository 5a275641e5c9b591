"""Is a request that claims to be an agent really from its operator? A 3-state answer by IP.

- `verified`: the IP is inside one of the agent's published range lists.
- `spoofed`: a positive contradiction: the IP is outside every one of the agent's lists, each
  list is loaded, complete (the operator's promise and the snapshot's provenance), and was
  fetched within `max_age_days` of the request's day (stale lists give false alarms).
- `unverifiable`: anything else: the agent's operator publishes no list, no list is loaded, the
  event has no (valid) IP, or a list is partial or too old. Absence of evidence is never spoofing.

Events that claim no catalog agent (human browsers, apps, unknown bots) get no verdict (None).
The pipeline asks once per distinct (agent, IP, day), never per row: `verdict_codes` answers all
the claims of one agent at once (binary searches in numpy, IPv4 as integers and IPv6 as 16
bytes: crawlers come from thousands of addresses a day); `verify` answers one claim (the command
line, and addresses only `ipaddress` understands, such as zone ids).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from functools import lru_cache

import numpy as np
import pyarrow as pa

from agent_traffic.annotate.catalog import Catalog
from agent_traffic.annotate.classify import APP_CLIENT, HUMAN, UNKNOWN
from agent_traffic.annotate.ranges import Snapshot
from agent_traffic.arrow_values import from_numpy
from agent_traffic.ingest.shape import ipv6_packed

__all__ = ["NO_CLAIM", "SPOOFED", "UNVERIFIABLE", "VERDICTS", "VERIFIED", "Verdict", "Verifier", "parse_ip"]



class Verdict(StrEnum):
    """A claim's verdict, decided in this order of precedence: inside a list is VERIFIED; else a
    positive contradiction is SPOOFED; anything else is UNVERIFIABLE (the module's docstring)."""

    VERIFIED = "verified"
    SPOOFED = "spoofed"
    UNVERIFIABLE = "unverifiable"


VERIFIED, SPOOFED, UNVERIFIABLE = Verdict.VERIFIED, Verdict.SPOOFED, Verdict.UNVERIFIABLE
VERDICTS = tuple(Verdict)  # `verdict_codes` answers with indexes into this
_CODE = {v: i for i, v in enumerate(VERDICTS)}
_EPOCH = date(1970, 1, 1)
NO_CLAIM = frozenset({HUMAN.agent, APP_CLIENT.agent, UNKNOWN.agent})  # claim no operator: no verdict
_MAPPED = b"\x00" * 10 + b"\xff\xff"


def _ipv6_bytes(text: str) -> bytes | None:
    """The 16 bytes of IPv6 text (brackets and spaces allowed), or None when it is not IPv6."""
    try:
        return socket.inet_pton(socket.AF_INET6, text.strip().strip("[]"))
    except (OSError, ValueError):  # ValueError: an embedded NUL, which a log's field can hold
        return None


@lru_cache(maxsize=65536)
def parse_ip(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address in a log's client IP field (IPv4-mapped IPv6 as IPv4), or None if it is not one."""
    if not text:
        return None
    packed = _ipv6_bytes(text)  # the C parser first: ipaddress's own string parsing is ~20x slower
    if packed is not None:
        return ipaddress.IPv4Address(packed[12:]) if packed[:12] == _MAPPED else ipaddress.IPv6Address(packed)
    try:
        ip = ipaddress.ip_address(text.strip().strip("[]"))  # IPv4, or IPv6 with a zone id
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class Verifier:
    """Verdicts for (agent, IP, day) from the catalog's list assignments and loaded snapshots."""

    def __init__(
        self, catalog: Catalog, snapshots: Mapping[str, Snapshot], *, max_age_days: int = 30
    ) -> None:
        self.snapshots = dict(snapshots)
        self.max_age_days = max_age_days
        self.lists: dict[str, tuple[str, ...]] = {a.name: a.ip_ranges for a in catalog if a.ip_ranges}
        self.agents: frozenset[str] = frozenset(a.name for a in catalog)

    @property
    def checked_agents(self) -> list[str]:
        """Agents that have at least one range list: the only ones worth looking up per IP."""
        return sorted(self.lists)

    def verify(self, agent: str, ip: str | None, day: date | None = None) -> Verdict | None:
        """The verdict for one claim; None when `agent` is not a catalog agent (no claim)."""
        if agent in NO_CLAIM or agent not in self.agents:
            return None
        lists = self.lists.get(agent)
        addr = parse_ip(ip)
        if not lists or addr is None:
            return UNVERIFIABLE
        loaded = self._loaded(agent)
        if any(addr in snap.ranges for snap in loaded):
            return VERIFIED
        return SPOOFED if self._conclusive(agent, loaded, day) else UNVERIFIABLE

    def verdict_codes(self, agent: str, ip4: np.ndarray, texts: pa.Array, days: np.ndarray) -> np.ndarray:
        """Verdicts for many claims of one agent, as indexes into VERDICTS (-1: no claim).

        `ip4`: each claim's IPv4 address as an integer, or -1 when its text is not plain dotted
        IPv4; those are read from `texts` (each claim's IP text): IPv6 by inet_pton in C for all of
        them at once (`shape.ipv6_packed`), then binary searches in numpy; anything odder, such as
        a zone id, through `verify`.
        `days`: each claim's day as days since 1970-01-01 (lists are judged fresh per day).
        """
        n = len(ip4)
        if agent in NO_CLAIM or agent not in self.agents:
            return np.full(n, -1, dtype=np.int8)
        if not self.lists.get(agent):
            return np.full(n, _CODE[UNVERIFIABLE], dtype=np.int8)
        loaded = self._loaded(agent)
        inside = np.zeros(n, dtype=bool)
        ip4 = ip4.copy()  # ::ffff:a.b.c.d claims join the IPv4 ones
        rest = ip4 < 0
        packed = np.zeros(n, "S16")
        is6 = np.zeros(n, dtype=bool)
        if rest.any() and (fast := ipv6_packed(texts)) is not None:
            packed, is6 = fast[0], fast[1] & rest
        odd: dict[int, str | None] = {}  # claims `verify` decides
        slow = np.flatnonzero(rest & ~is6)
        for i, text in zip(slow.tolist(), texts.take(from_numpy(slow.astype(np.int64))).to_pylist(), strict=True):
            one = _ipv6_bytes(text or "")
            if one is None:
                odd[i] = self.verify(agent, text, _EPOCH + timedelta(days=int(days[i])))
            else:
                packed[i], is6[i] = one, True
        octets = packed.view(np.uint8).reshape(n, 16)
        mapped = is6 & np.all(octets[:, :12] == np.frombuffer(_MAPPED, np.uint8), axis=1)
        ip4[mapped] = octets[mapped, 12:].astype(np.int64) @ np.array([16777216, 65536, 256, 1], dtype=np.int64)
        v6_rows = np.flatnonzero(is6 & ~mapped)
        packed6 = packed[v6_rows]
        v4 = ip4 >= 0
        for snap in loaded:
            inside[v4] |= snap.ranges.contains_v4(ip4[v4])
            if len(v6_rows):
                inside[v6_rows] |= snap.ranges.contains_v6(packed6)
        uniq, where = np.unique(days, return_inverse=True)
        outside = np.array([_CODE[SPOOFED] if self._conclusive(agent, loaded, _EPOCH + timedelta(days=int(d)))
                            else _CODE[UNVERIFIABLE] for d in uniq], dtype=np.int8)
        codes = np.where(inside, np.int8(_CODE[VERIFIED]), outside[where]).astype(np.int8)
        for i, verdict in odd.items():
            codes[i] = -1 if verdict is None else _CODE[verdict]
        return codes

    def _loaded(self, agent: str) -> list[Snapshot]:
        return [self.snapshots[lid] for lid in self.lists[agent] if lid in self.snapshots]

    def _conclusive(self, agent: str, loaded: list[Snapshot], day: date | None) -> bool:
        """Outside every list means spoofed only if every list is loaded, complete and fresh."""
        lists = self.lists[agent]
        day = day or datetime.now(UTC).date()
        return len(loaded) == len(lists) and all(
            snap.complete and abs((day - snap.day).days) <= self.max_age_days for snap in loaded
        )
