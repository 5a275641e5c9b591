"""Everything the stage adds to an event: who (agent...), verified or not, what, and referred by whom.

One `Annotator` per run holds the classifier, the IP verifier and the referrer table. `annotate`
works on a block of parsed events and keeps every per-row step inside DuckDB: Python only sees
the distinct keys (user agents; (agent, IP, day) claims of agents that have range lists; content
type + extension; referrer hosts), each answered once and joined back. The command line's
`classify` uses `describe`, the same pieces for one user agent and IP.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from itertools import pairwise
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from agent_traffic.catalog import Catalog, load_catalog
from agent_traffic.classify import COLUMNS, Classifier
from agent_traffic.enrich import (
    EXTENSION_RE,
    HOST_RE,
    UTM_SOURCE_RE,
    ReferrerTable,
    resource_type_of,
)
from agent_traffic.ranges import Snapshot, load_snapshots
from agent_traffic.storage import Store
from agent_traffic.verify import VERDICTS, Verifier

__all__ = ["ANNOTATION_COLUMNS", "Annotator"]

#: A dotted IPv4 address as Python's ipaddress accepts it (no leading zeros); others go one by one.
_IPV4_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4_RE = rf"{_IPV4_OCTET}\.{_IPV4_OCTET}\.{_IPV4_OCTET}\.{_IPV4_OCTET}"


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
        """`events` with ANNOTATION_COLUMNS added, same rows, in line order."""
        con = duckdb.connect(":memory:")
        try:
            con.execute("SET TimeZone = 'UTC'")  # an event's day is its UTC date
            con.register("e", events)
            con.register("c", self._classified(events))
            # The join keys, extracted once: narrow, so every later scan is cheap. The regular
            # expressions run only where they can match: an extension is at most 11 characters
            # at the end of the path; referrals are looked up for visits that are not bots.
            con.execute(f"""
                CREATE TEMP TABLE k AS
                SELECT e.line_number, c.uid, c.agent, c.is_bot, e.client_ip, CAST(e.ts AS DATE) AS day,
                       coalesce(e.content_type, '') AS ct,
                       coalesce(regexp_extract(right(e.path, 11), '{EXTENSION_RE}', 1), '') AS ext,
                       CASE WHEN NOT c.is_bot AND contains(e.referer, '://')
                            THEN lower(regexp_extract(e.referer, '{HOST_RE}', 1)) END AS ref,
                       CASE WHEN NOT c.is_bot AND contains(e.query, 'utm_source=')
                            THEN lower(regexp_extract(e.query, '{UTM_SOURCE_RE}', 1)) END AS utm
                FROM e JOIN c USING (user_agent)
            """)
            con.register("v", self._verdicts(con))
            con.register("r", self._resource_types(con))
            con.register("f", self._referrals(con))
            added = con.sql(f"""
                SELECT k.line_number, {", ".join(f"c.{col}" for col in COLUMNS[1:])},
                       CASE WHEN k.agent IN ('human', 'unknown') THEN NULL
                            ELSE coalesce(v.verification, 'unverifiable') END AS verification,
                       r.resource_type,
                       CASE WHEN k.is_bot THEN NULL ELSE coalesce(f1.provider, f2.provider) END
                           AS referred_by
                FROM k
                JOIN c USING (uid)
                LEFT JOIN v ON v.agent = k.agent AND v.client_ip = k.client_ip AND v.day = k.day
                LEFT JOIN r ON r.ct = k.ct AND r.ext = k.ext
                LEFT JOIN f AS f1 ON f1.key = k.ref
                LEFT JOIN f AS f2 ON f2.key = k.utm
                ORDER BY k.line_number
            """).to_arrow_table()
        finally:
            con.close()
        # Only the narrow result is sorted in DuckDB; the wide events are put in line order here
        # (they already are, from the parser) and the new columns appended.
        ordered = events if _in_line_order(events) else events.sort_by("line_number")
        if not _in_line_order(ordered):
            raise ValueError("line numbers repeat within the block; cannot align the annotations")
        for name in ANNOTATION_COLUMNS:
            ordered = ordered.append_column(added.schema.field(name), added[name])
        return ordered

    def _classified(self, events: pa.Table) -> pa.Table:
        uas = events["user_agent"].unique().to_pylist()
        found = self.classifier.classify_many(uas)
        return pa.table({"user_agent": pa.array(uas, pa.string()), "uid": pa.array(range(len(uas)), pa.int32())}
                        | {k: pa.array([getattr(found[u], k) for u in uas]) for k in COLUMNS[1:]})

    def _verdicts(self, con: duckdb.DuckDBPyConnection) -> pa.Table:
        """Distinct claims of agents with range lists, answered an agent at a time in numpy."""
        checked = ", ".join(f"'{a}'" for a in (x.replace("'", "''") for x in self.verifier.checked_agents))
        claims = con.sql(f"""
            SELECT agent, client_ip, day, CAST(day - DATE '1970-01-01' AS INTEGER) AS day_number,
                   CASE WHEN regexp_full_match(client_ip, '{_IPV4_RE}')
                        THEN CAST(split_part(client_ip, '.', 1) AS BIGINT) * 16777216
                             + CAST(split_part(client_ip, '.', 2) AS BIGINT) * 65536
                             + CAST(split_part(client_ip, '.', 3) AS BIGINT) * 256
                             + CAST(split_part(client_ip, '.', 4) AS BIGINT) END AS ip4
            FROM (SELECT DISTINCT agent, client_ip, day FROM k
                  WHERE client_ip IS NOT NULL AND agent IN ({checked or "NULL"}))
            ORDER BY agent
        """).to_arrow_table()
        codes = np.full(claims.num_rows, -1, dtype=np.int8)
        agents = claims["agent"].to_numpy(zero_copy_only=False)
        ip4 = claims["ip4"].fill_null(-1).to_numpy()
        days = claims["day_number"].to_numpy()
        ips = claims["client_ip"]
        firsts = np.flatnonzero(np.r_[True, agents[1:] != agents[:-1]]).tolist() if len(agents) else []
        for lo, hi in pairwise([*firsts, len(agents)]):  # one agent's claims (they are sorted by agent)
            texts = ips.slice(lo, hi - lo).to_pylist() if (ip4[lo:hi] < 0).any() else []
            codes[lo:hi] = self.verifier.verdict_codes(agents[lo], ip4[lo:hi], texts, days[lo:hi])
        verdicts = pa.DictionaryArray.from_arrays(pa.array(codes, mask=codes < 0), pa.array(VERDICTS))
        return claims.drop_columns(["ip4", "day_number"]).append_column("verification", verdicts.cast(pa.string()))

    def _resource_types(self, con: duckdb.DuckDBPyConnection) -> pa.Table:
        keys = con.sql("SELECT DISTINCT ct, ext FROM k").fetchall()
        return pa.table({
            "ct": pa.array([ct for ct, _ in keys], pa.string()),
            "ext": pa.array([ext for _, ext in keys], pa.string()),
            "resource_type": pa.array([resource_type_of(ct, ext) for ct, ext in keys], pa.string()),
        })

    def _referrals(self, con: duckdb.DuckDBPyConnection) -> pa.Table:
        keys = [key for (key,) in con.sql("""
            SELECT DISTINCT key FROM (SELECT ref AS key FROM k WHERE NOT is_bot
                                      UNION ALL SELECT utm FROM k WHERE NOT is_bot)
            WHERE key <> ''
        """).fetchall()]
        found = [(k, self.referrers.provider(k)) for k in keys]
        found = [(k, p) for k, p in found if p is not None]
        return pa.table({"key": pa.array([k for k, _ in found], pa.string()),
                         "provider": pa.array([p for _, p in found], pa.string())})
