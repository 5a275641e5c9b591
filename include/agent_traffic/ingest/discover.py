"""Discover source objects for logical dates, and remember which versions were staged.

The unit of idempotency for parsing is one object version (URL + the store's version of the object:
the ETag on S3 and Azure, the generation on GCS; size and mtime where the store has none). Its
manifest record under `_manifests/date=<D>/<object_id>.json` is written last, after its files, so
it is the commit marker: an object without a `staged` record is parsed (again) by the next run;
one with a record is skipped unless the run asks to reprocess.

Late objects: each source also lists its `lookback_days` dates before the run's dates (CloudFront
files arrive up to 24 h late, filed under the hour they happened). A late object is staged under
its own date, and `planned_dates` tells planning and reporting to cover those dates too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from typing import Any

from agent_traffic import layout
from agent_traffic.config import Config
from agent_traffic.ingest.storage import ObjectInfo, Store, StoreOptions, list_objects

STAGED = "staged"
FAILED = "failed"
POISONED = "poisoned"  # failed POISON_AFTER runs in a row: skipped until it changes or the user retries it
POISON_AFTER = 3


def version_tag(info: ObjectInfo) -> str:
    return info.version or f"{info.size}:{info.mtime}"


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
    version: str | None = None  # the store's version (S3 / Azure ETag, GCS generation); None: size and mtime

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ObjectRef:
        return cls(**d)


def read_manifests(store: Store, day: str) -> dict[str, dict[str, Any]]:
    """object_id -> manifest record for a date."""
    return {rec["object_id"]: rec for _, rec in store.iter_json(layout.manifests_prefix(day))}


def lookback_dates(cfg: Config, days: Iterable[date], sources: Iterable[str] | None = None) -> list[date]:
    """The dates before the run's dates that sources look back on for late objects."""
    wanted = set(sources) if sources else None
    run = set(days)
    out = {d - timedelta(days=k) for src in cfg.sources if wanted is None or src.name in wanted
           for d in run for k in range(1, src.lookback_days + 1)}
    return sorted(out - run)


def planned_dates(cfg: Config, days: Iterable[date | str]) -> list[str]:
    """The run's dates and their lookback dates: a late object is staged under its own date, so
    deliveries must be planned (and reported) for those dates too."""
    run = {d if isinstance(d, date) else date.fromisoformat(d) for d in days}
    return sorted(d.isoformat() for d in run | set(lookback_dates(cfg, run)))


@dataclass
class Discovery:
    objects: list[ObjectRef]  # to parse
    unchanged: int
    seen: int
    listed: list[dict[str, Any]]  # every object seen: the run's manifest
    lookback: list[str] = field(default_factory=list)  # dates listed only to find late objects
    late: int = 0  # objects to parse found on lookback dates
    poisoned: list[dict[str, Any]] = field(default_factory=list)  # manifests of poisoned versions, skipped

    def as_dict(self, days: Iterable[str]) -> dict[str, Any]:
        return {"days": list(days), "lookback_dates": self.lookback, "seen": self.seen,
                "unchanged": self.unchanged, "late": self.late, "objects": self.listed,
                "poisoned": [{k: p.get(k) for k in ("url", "date", "source", "reason", "failures")}
                             for p in self.poisoned]}


def discover(
    cfg: Config,
    store: Store,
    days: Iterable[date],
    options: StoreOptions,
    *,
    sources: Iterable[str] | None = None,
    reprocess: bool = False,
    retry_poisoned: bool = False,
) -> Discovery:
    """List every source for each date, and its lookback dates (`lookback_days`) for late objects;
    return the object versions that still need parsing.

    An object version staged under any listed date is unchanged, so a prefix that two dates share
    never stages one object twice; `reprocess` re-parses the run's dates, never lookback dates.
    """
    wanted = set(sources) if sources else None
    run_days = sorted(set(days))
    lookback = lookback_dates(cfg, run_days, wanted)
    manifests = {d.isoformat(): read_manifests(store, d.isoformat()) for d in [*lookback, *run_days]}
    staged_ids = {oid for recs in manifests.values() for oid, rec in recs.items() if rec.get("status") == STAGED}
    poisoned = {oid: rec for recs in manifests.values() for oid, rec in recs.items() if rec.get("status") == POISONED}
    skipped_poison: list[dict[str, Any]] = []
    todo: list[ObjectRef] = []
    listed: list[dict[str, Any]] = []
    seen = unchanged = late = 0
    for src in cfg.sources:
        if wanted is not None and src.name not in wanted:
            continue
        seen_urls: set[str] = set()
        src_days = sorted({d - timedelta(days=k) for d in run_days for k in range(src.lookback_days + 1)},
                          key=lambda d: (d not in run_days, d))  # the run's dates first
        for day in src_days:
            ds = day.isoformat()
            is_late = day not in run_days
            by_url = {rec["url"]: rec for rec in manifests[ds].values() if rec.get("status") == STAGED}
            for info in list_objects(src.url_for(day), options):
                if info.url in seen_urls:
                    continue  # listed under another date of this run (a shared prefix)
                seen_urls.add(info.url)
                seen += 1
                oid = object_id(info.url, version_tag(info))
                skip = oid in staged_ids and (is_late or not reprocess)
                if oid in poisoned and not retry_poisoned:  # the same version failed run after run
                    listed.append({"url": info.url, "size": info.size, "etag": info.etag, "version": info.version,
                                   "mtime": info.mtime, "object_id": oid, "date": ds, "source": src.name,
                                   "lookback": is_late, "action": POISONED})
                    skipped_poison.append(poisoned[oid])
                    continue
                listed.append({"url": info.url, "size": info.size, "etag": info.etag, "version": info.version,
                               "mtime": info.mtime,
                               "object_id": oid, "date": ds, "source": src.name, "lookback": is_late,
                               "action": "unchanged" if skip else "parse"})
                if skip:
                    unchanged += 1
                    continue
                late += is_late
                prev = by_url.get(info.url)
                todo.append(
                    ObjectRef(
                        object_id=oid,
                        url=info.url,
                        size=info.size,
                        etag=info.etag,
                        mtime=info.mtime,
                        version=info.version,
                        source=src.name,
                        date=ds,
                        previous=prev["object_id"] if prev and prev["object_id"] != oid else None,
                    )
                )
    return Discovery(todo, unchanged, seen, listed, [d.isoformat() for d in lookback], late, skipped_poison)
