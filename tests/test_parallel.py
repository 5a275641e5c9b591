"""Three command-line runs of the same backfill started at the same moment, over each object store
(moto's S3 server, fake-gcs-server, Azurite) and the local receiver: two sites, three days.

The runs race for everything: they parse the same objects at once, plan the same dates, and
take leases on the same chunks. Every sample line carries a unique sequence tag, so the
receiver's log tells what is missing and what came twice. The promise: every selected event is
delivered exactly once (no chunk is sent twice: leases), staging holds each event once, and
every run exits cleanly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from datetime import date, timedelta
from pathlib import Path

import pyarrow.parquet as pq

from agent_traffic.delivery.ledger import ledger_rows
from agent_traffic.devtools.samples import combined_lines, gzip_log
from agent_traffic.ingest.storage import Store
from tests.conftest import ObjectStoreServer, write_config

DAYS = [date(2026, 11, 18) + timedelta(days=i) for i in range(3)]
WORKERS = 3  # on two cores each run is mostly waiting for the others: three keep the test under a minute
SITES = {  # site -> (Scrunch site id, lines per object, objects per day)
    "example.com": ("01JDEM0SANDB0X0000000000AA", 400, 1),
    "blog.example.org": ("01JDEM0SANDB0X0000000000BB", 200, 1),
}


def _ai_seqs(day: date, tag: str, n: int) -> set[str]:
    from agent_traffic.annotate.catalog import load_catalog
    from agent_traffic.annotate.classify import Classifier

    clf = Classifier(load_catalog())
    return {f"{tag}-{i}" for i, line in enumerate(combined_lines(day, n, tag=tag))
            if "seq=" in line and clf.classify(line.rsplit('"', 2)[-2]).is_ai}


def test_three_runs_at_once_deliver_every_event_exactly_once(tmp_path: Path, object_store: ObjectStoreServer,
                                                             sandbox, api_key: str) -> None:
    scheme = object_store.scheme
    object_store.make_bucket("par-logs")
    object_store.make_bucket("par-staging")
    want: dict[str, set[str]] = {site: set() for site in SITES}
    lines_total = 0
    for site, (_, n, files) in SITES.items():
        for d, day in enumerate(DAYS):
            for f in range(files):
                tag = f"{site[0]}{d}{f}"  # e.g. e01: example.com, day 0, object 1
                object_store.put("par-logs", f"{site}/{day:%Y/%m/%d}/access-{f}.log.gz",
                                 gzip_log(list(combined_lines(day, n, tag=tag))))
                want[site] |= _ai_seqs(day, tag, n)
                lines_total += n

    def scrunch(site: str) -> dict:
        return {"name": f"scrunch-{site.split('.')[0]}", "vendor": "scrunch", "site_id": SITES[site][0],
                "base_url": sandbox.url, "secret": {"env": "SCRUNCH_API_KEY_EXAMPLE"}, "max_batch_events": 20}

    cfg = write_config(
        tmp_path / "cfg.yaml", staging=f"{scheme}://par-staging/staging", fmt="combined",
        source_url=f"{scheme}://par-logs/example.com/{{date:%Y/%m/%d}}/", base_url=sandbox.url,
        extra_dest={"max_batch_events": 20}, delivery={"concurrency": 2},
        # Known Agents in requests of 3 visits: its leases cover runs of 10 chunks, raced for too
        more_destinations=[{"name": "knownagents-example", "vendor": "knownagents", "base_url": sandbox.url,
                            "secret": {"env": "KA_KEY"}, "max_batch_events": 3, "send_older_events": True}],
        object_store=object_store.config,
        sources=[{"name": "blog", "url": f"{scheme}://par-logs/blog.example.org/{{date:%Y/%m/%d}}/", "format": "combined",
                  "site": "blog.example.org"}],
        sites=[{"name": "blog.example.org", "destinations": [scrunch("blog.example.org")]}],
    )
    sandbox.set_fault_rates({"slow:0.02": 1.0})  # every answer takes a moment: sends overlap
    env = {**os.environ, "SCRUNCH_API_KEY_EXAMPLE": api_key, "KA_KEY": api_key, **object_store.env}
    cmd = [sys.executable, "-m", "agent_traffic", "run", "--config", str(cfg), "--date", str(DAYS[0]),
           "--until", str(DAYS[-1])]
    procs = [subprocess.Popen([*cmd, "--json", str(tmp_path / f"s{i}.json")], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(WORKERS)]
    t0 = time.monotonic()
    outs = [p.communicate(timeout=300) for p in procs]  # generous: the machine may be busy with other work
    print(f"{WORKERS} runs in {time.monotonic() - t0:.1f}s")
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, out + err

    # At the receiver: every selected event exactly once, and nothing else.
    for site, (site_id, _, _) in SITES.items():
        got = Counter(e["url"].rsplit("seq=", 1)[1] for e in sandbox.accepted("scrunch", site_id))
        assert set(got) == want[site], f"{site}: {len(want[site] - set(got))} missing"
        assert max(got.values()) == 1, f"{site}: {sum(n - 1 for n in got.values())} duplicate(s)"
    ka = Counter(v["request_path"].rsplit("seq=", 1)[1] for v in sandbox.accepted("known_agents"))
    assert set(ka) == want["example.com"] and max(ka.values()) == 1, "Known Agents: missing or twice"

    # No chunk was sent twice: one successful request per acknowledged chunk, and the runs'
    # own counts of chunks sent add up to the acks.
    store = Store(f"{scheme}://par-staging/staging", object_store.options)
    acks = [k for k in store.list("_delivery/") if "/acks/" in k]
    ka_acks = [k for k in acks if k.startswith("_delivery/knownagents-example/")]
    assert sandbox.requests_seen["scrunch"] == {"200": len(acks) - len(ka_acks)}
    assert sandbox.requests_seen["known_agents"] == {"200": len(ka_acks)}
    summaries = [json.loads((tmp_path / f"s{i}.json").read_text()) for i in range(WORKERS)]
    assert sum(s["this_run"].get("chunks_sent", 0) for s in summaries) == len(acks)
    assert not [k for k in store.list("_delivery/") if "/leases/" in k or "/dead/" in k]
    assert not [k for k in store.list("_delivery/") if "/packs/" in k]  # every chunk acked: packs removed
    for s in summaries:
        assert all(d["balanced"] and d["failed"] == 0 for d in s["destinations"])
    # The ledger once every run has ended (a run's own summary may predate another run's last acks).
    delivered: Counter[str] = Counter()
    for row in ledger_rows(store, [d.isoformat() for d in DAYS])[0]:
        delivered[row["destination"]] += row["events"] if row["outcome"] == "delivered" else 0
    assert delivered["scrunch-example"] + delivered["scrunch-blog"] == sum(map(len, want.values()))
    assert delivered["knownagents-example"] == len(want["example.com"])

    # Staging is not corrupted by the runs parsing the same objects at once: every line parsed
    # is staged once, each object has one staged manifest, and no temporary object is left.
    keys = store.list("events/")
    assert keys and all(k.endswith(".parquet") for k in keys)
    ids = [i for k in keys for i in pq.read_table(store.path(k), filesystem=store.fs, columns=["event_id"])
           ["event_id"].to_pylist()]
    assert len(ids) == lines_total == len(set(ids))
    manifests = [store.get_json(k) for k in store.list("_manifests/")]
    assert len(manifests) == sum(files for _, _, files in SITES.values()) * len(DAYS)
    assert all(m["status"] == "staged" for m in manifests)
    assert sum(m["stats"]["parsed"] for m in manifests) == lines_total
    assert not [k for k in store.list("") if ".tmp-" in k]
    parsed_by = Counter(line.split("parse [", 1)[1].split(" ", 2)[1] for _, err in outs
                        for line in err.splitlines() if "parse [" in line and ": staged," in line)
    leased = sum(s["this_run"].get("leased_elsewhere_events", 0) for s in summaries)
    print(f"objects parsed by more than one run: {sum(1 for n in parsed_by.values() if n > 1)}/{len(parsed_by)}; "
          f"events left to another run's lease: {leased}; chunks: {len(acks)}")
