"""Operators' published IP ranges: parse them, keep dated snapshots, and refresh them.

A range file has the shape operators share (Google, OpenAI, Bing, Perplexity, Anthropic, ...):
`{"creationTime": "...", "prefixes": [{"ipv4Prefix": "a.b.c.d/n"}, {"ipv6Prefix": "..."}]}`.

Where a list comes from, newest first:
1. the snapshot store (`<staging>/_ranges/<list-id>/<YYYY-MM-DD>.json`, written by `refresh`,
   the exact bytes the operator served, named by the UTC day they were fetched);
2. the copy shipped in the package (`data/ip_ranges/`, provenance in its `index.json`), so a
   fresh install verifies offline;
3. nothing: the list's agents stay `unverifiable`.

`refresh` never deletes the last good snapshot: a failed fetch (network, HTTP error, a body that
is not a range file) is reported and the previous snapshot stays in use.
"""

from __future__ import annotations

import bisect
import ipaddress
import json
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np

from agent_traffic import layout
from agent_traffic.annotate.catalog import Catalog
from agent_traffic.config import Config
from agent_traffic.errors import AgentTrafficError, ConfigError
from agent_traffic.ingest.storage import Store, StoreOptions

__all__ = [
    "MAX_BODY_BYTES",
    "RangeFileError",
    "RangeSet",
    "RefreshReport",
    "Snapshot",
    "fetch_url",
    "load_snapshots",
    "parse_range_file",
    "range_store",
    "refresh",
    "shipped_snapshots",
    "snapshot_key",
]

log = logging.getLogger("agent_traffic")

MAX_BODY_BYTES = 5 * 1024 * 1024  # the largest real list (Google's) is ~100 KB
# A published crawler range is never this broad; a file claiming it is broken or hostile and
# would "verify" half the internet.
_MIN_PREFIXLEN = {4: 8, 6: 16}
_DAY_FILE = re.compile(r"(\d{4}-\d{2}-\d{2})\.json$")
USER_AGENT = "agent-traffic-range-refresh/1"


class RangeFileError(AgentTrafficError, ValueError):
    """A body is not a usable range file; the message says what is wrong with it."""


class RangeSet:
    """Merged, sorted address intervals per IP version; membership is a binary search."""

    def __init__(self, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> None:
        spans: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
        for net in networks:
            spans[net.version].append((int(net.network_address), int(net.broadcast_address)))
        self._starts: dict[int, list[int]] = {}
        self._ends: dict[int, list[int]] = {}
        self.networks = sum(len(v) for v in spans.values())
        for version, items in spans.items():
            merged: list[list[int]] = []
            for lo, hi in sorted(items):
                if merged and lo <= merged[-1][1] + 1:
                    merged[-1][1] = max(merged[-1][1], hi)
                else:
                    merged.append([lo, hi])
            self._starts[version] = [lo for lo, _ in merged]
            self._ends[version] = [hi for _, hi in merged]
        self._starts4 = np.array(self._starts[4], dtype=np.int64)
        self._ends4 = np.array(self._ends[4], dtype=np.int64)
        # IPv6 as 16 big-endian bytes: numpy orders fixed-width bytes as the integers they spell
        self._starts6 = np.array([n.to_bytes(16, "big") for n in self._starts[6]], dtype="S16")
        self._ends6 = np.array([n.to_bytes(16, "big") for n in self._ends[6]], dtype="S16")

    def __contains__(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return self.contains_int(ip.version, int(ip))

    def contains_int(self, version: int, n: int) -> bool:
        """Membership of one address given as its integer (IPv6 does not fit numpy's integers)."""
        i = bisect.bisect_right(self._starts[version], n) - 1
        return i >= 0 and n <= self._ends[version][i]

    def contains_v4(self, ips: np.ndarray) -> np.ndarray:
        """Membership of many IPv4 addresses (as integers) at once: one binary search each, in numpy."""
        if not len(self._starts4):
            return np.zeros(len(ips), dtype=bool)
        i = np.searchsorted(self._starts4, ips, side="right") - 1
        return (i >= 0) & (ips <= self._ends4[np.maximum(i, 0)])

    def contains_v6(self, packed: np.ndarray) -> np.ndarray:
        """Membership of many IPv6 addresses given as 16 big-endian bytes each (dtype S16)."""
        if not len(self._starts6):
            return np.zeros(len(packed), dtype=bool)
        i = np.searchsorted(self._starts6, packed, side="right") - 1
        return (i >= 0) & (packed <= self._ends6[np.maximum(i, 0)])


@dataclass(frozen=True)
class Snapshot:
    """One list as loaded: its ranges, the day they describe, and whether they are exhaustive."""

    list_id: str
    ranges: RangeSet = field(repr=False)
    day: date
    complete: bool
    origin: str  # "store:<key>" or "shipped:<file>"

    def as_dict(self) -> dict[str, Any]:
        return {"list": self.list_id, "day": self.day.isoformat(), "complete": self.complete,
                "origin": self.origin, "networks": self.ranges.networks}


def parse_range_file(body: bytes) -> RangeSet:
    """Validate and parse a range file; raises RangeFileError naming the first problem."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        head = body[:60].decode("utf-8", "replace").strip()
        raise RangeFileError(f"not JSON ({exc.__class__.__name__}; starts with {head!r})") from None
    prefixes = doc.get("prefixes") if isinstance(doc, dict) else None
    if not isinstance(prefixes, list):
        raise RangeFileError('no "prefixes" list at the top level')
    nets = []
    for i, item in enumerate(prefixes):
        cidr = item.get("ipv4Prefix") or item.get("ipv6Prefix") if isinstance(item, dict) else None
        if not isinstance(cidr, str):
            raise RangeFileError(f"prefixes[{i}]: expected an object with ipv4Prefix or ipv6Prefix")
        try:
            net = ipaddress.ip_network(cidr.strip(), strict=False)
        except ValueError:
            raise RangeFileError(f"prefixes[{i}]: {cidr!r} is not a CIDR") from None
        if net.prefixlen < _MIN_PREFIXLEN[net.version]:
            raise RangeFileError(f"prefixes[{i}]: {cidr!r} is implausibly broad for a crawler list")
        nets.append(net)
    if not nets:
        raise RangeFileError("the prefixes list is empty")
    return RangeSet(nets)


def range_store(cfg: Config, options: StoreOptions | None = None) -> Store:
    """Where snapshots live: `ip_ranges.store` if set, else `<staging>/_ranges`."""
    return Store(cfg.ip_ranges.store or layout.ranges_root(cfg.staging), options)


def snapshot_key(list_id: str, day: date) -> str:
    """Key of a snapshot under the range store's root."""
    return f"{list_id}/{day.isoformat()}.json"


# --------------------------------------------------------------------------------------------
# Loading


@lru_cache(maxsize=1)
def _shipped_index() -> dict[str, Any]:
    text = resources.files("agent_traffic").joinpath("data/ip_ranges/index.json").read_text("utf-8")
    return json.loads(text)["lists"]


@lru_cache(maxsize=1)
def shipped_snapshots() -> dict[str, Snapshot]:
    """The lists shipped in the package, keyed by list id (parsed once per process)."""
    out: dict[str, Snapshot] = {}
    folder = resources.files("agent_traffic").joinpath("data/ip_ranges")
    for list_id, meta in _shipped_index().items():
        body = folder.joinpath(meta["file"]).read_bytes()
        out[list_id] = Snapshot(list_id, parse_range_file(body), date.fromisoformat(meta["retrieved"]),
                                bool(meta["complete"]), f"shipped:{meta['file']}")
    return out


def _stored_days(store: Store, list_id: str) -> list[tuple[date, str]]:
    """(day, key) of the list's snapshots in the store, newest first."""
    found = []
    for key in store.list(f"{list_id}/"):
        m = _DAY_FILE.search(key)
        if m and key.count("/") == 1:
            try:
                found.append((date.fromisoformat(m.group(1)), key))
            except ValueError:
                continue
    return sorted(found, reverse=True)


def _newest_stored(store: Store, list_id: str) -> Snapshot | None:
    for day, key in _stored_days(store, list_id):
        try:
            ranges = parse_range_file(store.get_bytes(key))
        except (RangeFileError, OSError) as exc:  # only validated bodies are stored; be safe anyway
            log.warning("range snapshot %s is unusable (%s); trying an older one", key, exc)
            continue
        return Snapshot(list_id, ranges, day, True, f"store:{key}")
    return None


def load_snapshots(catalog: Catalog, store: Store | None = None) -> dict[str, Snapshot]:
    """For each list in the catalog: the newest stored snapshot, else the shipped copy, else none.

    `complete` is the snapshot's (a shipped copy may be partial) and the catalog's promise together.
    """
    shipped = shipped_snapshots()
    out: dict[str, Snapshot] = {}
    for list_id, spec in catalog.ip_ranges.items():
        snap = _newest_stored(store, list_id) if store is not None else None
        snap = snap or shipped.get(list_id)
        if snap is not None:
            out[list_id] = Snapshot(list_id, snap.ranges, snap.day, snap.complete and spec.complete,
                                    snap.origin)
    return out


# --------------------------------------------------------------------------------------------
# Refreshing


def fetch_url(url: str, timeout_s: float) -> bytes:
    """GET a range file (redirects followed, size capped); raises RangeFileError on any failure."""
    import requests

    try:
        with requests.get(url, timeout=timeout_s, stream=True, headers={"User-Agent": USER_AGENT,
                          "Accept": "application/json"}) as resp:
            if resp.status_code != 200:
                raise RangeFileError(f"HTTP {resp.status_code} {resp.reason or ''}".strip())
            chunks, size = [], 0
            for chunk in resp.iter_content(65536):
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise RangeFileError(f"body larger than {MAX_BODY_BYTES} bytes")
                chunks.append(chunk)
            return b"".join(chunks)
    except requests.RequestException as exc:
        raise RangeFileError(f"{type(exc).__name__}: {exc}") from None


@dataclass
class ListResult:
    list_id: str
    url: str | None
    status: str  # updated | failed | skipped
    networks: int = 0
    error: str | None = None
    in_use: str | None = None  # the snapshot verification uses after this refresh

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class RefreshReport:
    day: str
    results: list[ListResult]

    @property
    def updated(self) -> int:
        return sum(r.status == "updated" for r in self.results)

    @property
    def failed(self) -> int:
        return sum(r.status == "failed" for r in self.results)

    def as_dict(self) -> dict[str, Any]:
        return {"day": self.day, "updated": self.updated, "failed": self.failed,
                "lists": [r.as_dict() for r in self.results]}

    def render(self) -> str:
        lines = [f"IP range refresh {self.day}: {self.updated} updated, {self.failed} failed"]
        for r in self.results:
            detail = f"{r.networks} networks" if r.status == "updated" else (r.error or "")
            lines.append(f"  {r.list_id:<38} {r.status:<8} {detail}  (in use: {r.in_use or 'none'})")
        return "\n".join(lines)


def resolve_urls(catalog: Catalog, overrides: Mapping[str, str | None]) -> dict[str, str | None]:
    """Each list's URL: the config's override (None = do not fetch), else the catalog's."""
    unknown = sorted(set(overrides) - set(catalog.ip_ranges))
    if unknown:
        raise ConfigError(f"ip_ranges.urls: {unknown} are not range lists in the catalog; "
                          f"known: {sorted(catalog.ip_ranges)}")
    return {lid: overrides.get(lid, spec.url) for lid, spec in catalog.ip_ranges.items()}


def refresh(
    catalog: Catalog,
    store: Store,
    *,
    urls: Mapping[str, str | None] | None = None,
    timeout_s: float = 30.0,
    keep: int = 90,
    today: date | None = None,
) -> RefreshReport:
    """Fetch every list, store each valid body as today's snapshot, prune beyond `keep` per list."""
    day = today or datetime.now(UTC).date()
    results = []
    shipped = shipped_snapshots()
    for list_id, url in resolve_urls(catalog, urls or {}).items():
        res = ListResult(list_id, url, "skipped")
        if url:
            try:
                body = fetch_url(url, timeout_s)
                res.networks = parse_range_file(body).networks
                store.put_bytes(snapshot_key(list_id, day), body)
                res.status = "updated"
                _prune(store, list_id, keep)
            except RangeFileError as exc:
                res.status, res.error = "failed", str(exc)
                log.warning("range list %s from %s: %s (keeping the previous snapshot)", list_id, url, exc)
        current = _newest_stored(store, list_id) or shipped.get(list_id)
        res.in_use = f"{current.origin} ({current.day})" if current else None
        results.append(res)
    return RefreshReport(day.isoformat(), results)


def _prune(store: Store, list_id: str, keep: int) -> None:
    for _, key in _stored_days(store, list_id)[keep:]:
        store.delete(key)
