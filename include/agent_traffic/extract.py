"""Discover source objects for logical dates, and remember which versions were staged.

The unit of idempotency for parsing is one object version (URL + ETag, or size and mtime where the
store has no ETag). Its manifest record under `_manifests/date=<D>/<object_id>.json` is written
last, after its files, so it is the commit marker: an object without a `staged` record is parsed
(again) by the next run; one with a record is skipped unless the run asks to reprocess.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import date
from typing import Any

from agent_traffic.config import Config
from agent_traffic.storage import ObjectInfo, Store, StoreOptions, list_objects

STAGED = "staged"
FAILED = "failed"


def version_tag(info: ObjectInfo) -> str:
    return info.etag or f"{info.size}:{info.mtime}"


def object_id(url: str, version: str) -> str:
    return hashlib.sha256(f"{url}\0{version}".encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ObjectRef:
    """A manifest row: one object version to parse for one logical date."""

    object_id: str
    url: str
    size: int
    etag: str | None
    mtime: float | None
    source: str
    date: str
    previous: str | None = None  # object id of an older version of the same URL, to replace

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ObjectRef:
        return cls(**d)


def manifest_key(day: str, oid: str) -> str:
    return f"_manifests/date={day}/{oid}.json"


def read_manifests(store: Store, day: str) -> dict[str, dict[str, Any]]:
    """object_id -> manifest record for a date."""
    return {rec["object_id"]: rec for _, rec in store.iter_json(f"_manifests/date={day}/")}


@dataclass
class Discovery:
    objects: list[ObjectRef]  # to parse
    unchanged: int
    seen: int
    listed: list[dict[str, Any]]  # every object seen: the run's manifest

    def as_dict(self, days: Iterable[str]) -> dict[str, Any]:
        return {"days": list(days), "seen": self.seen, "unchanged": self.unchanged,
                "objects": self.listed}


def discover(
    cfg: Config,
    store: Store,
    days: Iterable[date],
    options: StoreOptions,
    *,
    sources: Iterable[str] | None = None,
    reprocess: bool = False,
) -> Discovery:
    """List every source for each date; return the object versions that still need parsing."""
    wanted = set(sources) if sources else None
    todo: list[ObjectRef] = []
    listed: list[dict[str, Any]] = []
    seen = unchanged = 0
    for day in days:
        ds = day.isoformat()
        manifests = read_manifests(store, ds)
        by_url: dict[str, dict[str, Any]] = {}
        for rec in manifests.values():
            if rec.get("status") == STAGED:
                by_url[rec["url"]] = rec
        for src in cfg.sources:
            if wanted is not None and src.name not in wanted:
                continue
            for info in list_objects(src.url_for(day), options):
                seen += 1
                oid = object_id(info.url, version_tag(info))
                rec = manifests.get(oid)
                skip = bool(rec and rec.get("status") == STAGED and not reprocess)
                listed.append({"url": info.url, "size": info.size, "etag": info.etag, "mtime": info.mtime,
                               "object_id": oid, "date": ds, "source": src.name,
                               "action": "unchanged" if skip else "parse"})
                if skip:
                    unchanged += 1
                    continue
                prev = by_url.get(info.url)
                todo.append(
                    ObjectRef(
                        object_id=oid,
                        url=info.url,
                        size=info.size,
                        etag=info.etag,
                        mtime=info.mtime,
                        source=src.name,
                        date=ds,
                        previous=prev["object_id"] if prev and prev["object_id"] != oid else None,
                    )
                )
    return Discovery(todo, unchanged, seen, listed)
