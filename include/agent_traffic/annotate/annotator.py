"""Everything the stage adds to an event: who (agent...), verified or not, what, and referred by whom.

One `Annotator` per run holds the classifier, the IP verifier and the referrer table. `annotate`
works on a block of parsed events in Arrow: each key is dictionary-encoded once, Python (or one
vectorized step) answers the distinct values only (user agents; (agent, IP, day) claims of agents
that have range lists; content type + extension; referrer hosts and utm_source values), and the
answers are spread back to the rows by index. The command line's `classify` uses `describe`, the
same pieces for one user agent and IP.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from itertools import pairwise
from operator import attrgetter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from agent_traffic.annotate.catalog import Catalog, load_catalog
from agent_traffic.annotate.classify import COLUMNS, Classifier
from agent_traffic.annotate.enrich import (
    EXTENSION_RE,
    ReferrerTable,
    referrer_host,
    resource_type_of,
    utm_source,
)
from agent_traffic.annotate.ranges import Snapshot, load_snapshots
from agent_traffic.annotate.verify import NO_CLAIM, VERDICTS, Verifier
from agent_traffic.arrow_values import column, flags, from_numpy, present, scalar, strings, to_numpy
from agent_traffic.ingest.storage import Store
from agent_traffic.schema import CLASS_FIELDS

__all__ = ["ANNOTATION_COLUMNS", "Annotator"]

#: A dotted IPv4 address as Python's ipaddress accepts it (no leading zeros); others go one by one.
_IPV4_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4_RE = rf"{_IPV4_OCTET}\.{_IPV4_OCTET}\.{_IPV4_OCTET}\.{_IPV4_OCTET}"


_TYPES = {f.name: f.type for f in CLASS_FIELDS}

#: EXTENSION_RE with its group named, as Arrow's extract_regex wants.
_EXTENSION_NAMED = EXTENSION_RE.replace("(", "(?P<ext>", 1)


def _in_line_order(events: pa.Table) -> bool:
    lines = events["line_number"]
    return len(lines) < 2 or bool(pc.all(pc.less(lines[:-1], lines[1:])).as_py())

#: Columns `annotate` adds to a block of events, in order (the staged schema's CLASS_FIELDS).
ANNOTATION_COLUMNS: tuple[str, ...] = (*COLUMNS[1:], "verification", "resource_type", "referred_by")


class Annotator:
    """Classify, verify and enrich events; built once per run from the catalog and range snapshots."""

    def __init__(self, classifier: Classifier, verifier: Verifier, referrers: ReferrerTable) -> None:
        self.classifier = classifier
        self.verifier = verifier
        self.referrers = referrers

    @classmethod
    def build(
        cls,
        catalog_files: Sequence[str] = (),
        *,
        range_store: Store | None = None,
        max_age_days: int = 30,
        catalog: Catalog | None = None,
        snapshots: dict[str, Snapshot] | None = None,
    ) -> Annotator:
        """From the catalog (packaged + user files) and the newest range snapshots."""
        catalog = catalog or load_catalog(catalog_files)
        if snapshots is None:
            snapshots = load_snapshots(catalog, range_store)
        return cls(Classifier(catalog), Verifier(catalog, snapshots, max_age_days=max_age_days),
                   ReferrerTable(catalog.referrers))

    # -- one request (command line) -----------------------------------------------------------

    def describe(self, user_agent: str, ip: str | None = None, day: date | None = None) -> dict[str, Any]:
        """Classification and verdict of one user agent (and IP), as a JSON-able dict."""
        c = self.classifier.classify(user_agent)
        out: dict[str, Any] = {"user_agent": user_agent, **{k: getattr(c, k) for k in COLUMNS[1:]}}
        best = self.classifier.matches(user_agent)
        out["matched"] = best[0][1] if best and best[0][0].name == c.agent else None
        if ip is not None:
            out["ip"] = ip
        out["verification"] = self.verifier.verify(c.agent, ip, day)
        return out

    def describe_line(self, line: str, day: date | None = None) -> dict[str, Any]:
        """One line of `agent-traffic classify` input: `<user agent>` or `<user agent>\\t<ip>`."""
        ua, _, ip = line.rstrip("\r\n").partition("\t")
        return self.describe(ua, ip.strip() or None, day)

    # -- a block of events (pipeline) ---------------------------------------------------------

    def annotate(self, events: pa.Table) -> pa.Table:
        """`events` with ANNOTATION_COLUMNS added, same rows, in line order.

        Each column is answered per distinct key and spread back to the rows by index (`take`):
        no join, no per-row Python, and no per-row regular expression.
        """
        if not _in_line_order(events):
            events = events.sort_by("line_number")
            if not _in_line_order(events):
                raise ValueError("line numbers repeat within the block; cannot align the annotations")
        ua = _encoded(events["user_agent"])
        classes = self._classified(ua.dictionary)
        uid = ua.indices
        columns = {name: _spread(classes[name], uid) for name in COLUMNS[1:]}
        rows = to_numpy(uid)
        is_bot = flags(classes["is_bot"])[rows]
        columns["verification"] = self._verification(events, classes, rows)
        columns["resource_type"] = self._resource_types(events)
        columns["referred_by"] = self._referrals(events, is_bot)
        for name in ANNOTATION_COLUMNS:
            events = events.append_column(name, columns[name])
        return events

    def _classified(self, uas: pa.Array) -> pa.Table:
        """One row per distinct user agent (the dictionary's order): its classification."""
        texts = uas.to_pylist()
        found = self.classifier.classify_many(texts)
        rows = list(map(attrgetter(*COLUMNS[1:]), map(found.__getitem__, texts)))
        columns = zip(*rows, strict=True) if rows else [()] * (len(COLUMNS) - 1)
        return pa.table({k: column(list(v), _TYPES[k]) for k, v in zip(COLUMNS[1:], columns, strict=True)})

    def _verification(self, events: pa.Table, classes: pa.Table, uid: np.ndarray) -> pa.Array:
        """verified | spoofed | unverifiable per row (None for no claim): the distinct
        (agent, IP, day) claims of agents with range lists are answered an agent at a time."""
        agents = classes["agent"].to_pylist()
        checked = set(self.verifier.checked_agents)
        # per distinct user agent: -1 no claim (human, unknown), 2 unverifiable, -2 look it up
        base = np.array([-1 if a in NO_CLAIM else -2 if a in checked else 2 for a in agents], dtype=np.int8)
        codes = base[uid]
        ips = events["client_ip"]
        rows = np.flatnonzero((codes == -2) & ~_null_mask(ips))
        codes[codes == -2] = 2  # no IP: unverifiable
        if len(rows):
            picked = from_numpy(rows)
            ip = _encoded(ips.take(picked))
            day = _encoded(pc.cast(events["ts"].take(picked), pa.date32()))
            n_ip, n_day = len(ip.dictionary), len(day.dictionary)
            key = (uid[rows].astype(np.int64) * n_ip + to_numpy(ip.indices)) * n_day + to_numpy(day.indices)
            claims, where = _unique(key, len(agents) * n_ip * n_day)  # sorted: grouped by user agent
            claim_uid, rest = np.divmod(claims, n_ip * n_day)
            claim_ip, claim_day = np.divmod(rest, n_day)
            ip_texts = ip.dictionary.take(from_numpy(claim_ip))
            ip4 = _ipv4_ints(ip_texts)
            day_numbers = to_numpy(pc.cast(day.dictionary, pa.int32()))[claim_day]
            found = np.full(len(claims), -1, dtype=np.int8)
            claim_agents = np.array(agents, dtype=object)[claim_uid]
            order = np.argsort(claim_agents, kind="stable")  # one agent's claims together
            sorted_agents = claim_agents[order]
            firsts = np.flatnonzero(np.r_[True, sorted_agents[1:] != sorted_agents[:-1]]).tolist()
            for lo, hi in pairwise([*firsts, len(order)]):
                pick = order[lo:hi]
                found[pick] = self.verifier.verdict_codes(sorted_agents[lo], ip4[pick], ip_texts.take(from_numpy(pick)),
                                                          day_numbers[pick])
            found[found < 0] = 2  # an answer of "no claim" for a catalog agent: unverifiable
            codes[rows] = found[where]
        return _spread(strings(VERDICTS), from_numpy(codes.astype(np.int32), valid=codes >= 0))

    def _resource_types(self, events: pa.Table) -> pa.Array:
        """From the content type, else the extension in the path's last 11 characters (cut from
        the distinct paths, not from every row)."""
        ct = _encoded(events["content_type"])
        path = _encoded(events["path"])
        tail = _encoded(pc.utf8_slice_codeunits(path.dictionary, -11))
        ext = _encoded(pc.fill_null(pc.struct_field(pc.extract_regex(tail.dictionary, _EXTENSION_NAMED), 0), scalar("")))
        ext_of_row = to_numpy(ext.indices)[to_numpy(tail.indices)][to_numpy(path.indices)]
        n_ext = len(ext.dictionary)
        pairs, where = _unique(to_numpy(ct.indices).astype(np.int64) * n_ext + ext_of_row, len(ct.dictionary) * n_ext)
        cts, exts = [c or "" for c in ct.dictionary.to_pylist()], ext.dictionary.to_pylist()
        types = [resource_type_of(cts[p // n_ext], exts[p % n_ext]) for p in pairs.tolist()]
        return _spread(strings(types), from_numpy(where.astype(np.int32)))

    def _referrals(self, events: pa.Table, is_bot: np.ndarray) -> pa.Array:
        """The provider whose assistant sent a visit that is not a bot: Referer host, else utm_source."""
        slugs: dict[str, int] = {}
        codes = np.full(events.num_rows, -1, dtype=np.int32)
        for name, marker, key_of in (("referer", "://", referrer_host), ("query", "utm_source=", utm_source)):
            values = events[name]
            has = flags(pc.match_substring(values, marker))
            rows = np.flatnonzero(~is_bot & (codes < 0) & has)
            if not len(rows):
                continue
            enc = _encoded(values.take(from_numpy(rows)))
            found = [self.referrers.provider(key_of(v)) for v in enc.dictionary.to_pylist()]
            ids = np.array([-1 if p is None else slugs.setdefault(p, len(slugs)) for p in found], dtype=np.int32)
            codes[rows] = ids[to_numpy(enc.indices)]
        return _spread(strings(list(slugs)), from_numpy(codes, valid=codes >= 0))


def _spread(answers: pa.Array | pa.ChunkedArray, index: pa.Array) -> pa.Array:
    """Each row's answer: text as a dictionary array over the distinct answers (free to make,
    and the stage writes it to Parquet as is); other types taken out."""
    if isinstance(answers, pa.ChunkedArray):
        answers = answers.combine_chunks()
    if not pa.types.is_string(answers.type):
        return answers.take(index)
    # Unique values (grouping by a dictionary column groups by index), no null inside (Parquet
    # cannot write one there): a null answer becomes a null index.
    distinct = pc.dictionary_encode(answers)
    return pa.DictionaryArray.from_arrays(distinct.indices.take(index), distinct.dictionary)


def _encoded(values: pa.Array | pa.ChunkedArray) -> pa.DictionaryArray:
    """Dictionary-encoded, one chunk, nulls as their own dictionary entry (so every row has an index)."""
    enc = pc.dictionary_encode(values, null_encoding="encode")
    return enc.combine_chunks() if isinstance(enc, pa.ChunkedArray) else enc


def _unique(keys: np.ndarray, space: int) -> tuple[np.ndarray, np.ndarray]:
    """`np.unique(keys, return_inverse=True)` for keys in [0, space): by a table of the space, not
    a sort, when the space is not much larger than the keys."""
    if space > 4 * len(keys) + 65_536:
        return np.unique(keys, return_inverse=True)
    seen = np.zeros(space, dtype=bool)
    seen[keys] = True
    return np.flatnonzero(seen), (np.cumsum(seen) - 1)[keys]


def _null_mask(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return ~present(values)


def _ipv4_ints(texts: pa.Array) -> np.ndarray:
    """Each dotted IPv4 text as an integer (the form Python's ipaddress accepts), else -1."""
    ok = flags(pc.match_substring_regex(texts, f"^{_IPV4_RE}$"))
    out = np.full(len(texts), -1, dtype=np.int64)
    if ok.any():
        parts = pc.split_pattern(texts.filter(from_numpy(ok)), ".")
        octets = to_numpy(pc.cast(pc.list_flatten(parts), pa.int64())).reshape(-1, 4)
        out[ok] = octets @ np.array([16777216, 65536, 256, 1], dtype=np.int64)
    return out
