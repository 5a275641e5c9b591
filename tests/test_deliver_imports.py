"""A delivery-only process never imports pandas, nor the parser, the classifier or DuckDB.

Delivery builds its JSON with Arrow kernels and needs no pandas, but pyarrow imports pandas the
first time it is handed a Python value it must convert (`pa.scalar("x")`, `pa.array([...])`, a
string literal passed to a compute function): about 0.35 s of CPU and 40 MB per delivery process,
which was a quarter of the sender's own CPU for 400,000 events (`benchmarks/bench_deliver.py`).
Planning and sending every vendor's events, in a fresh interpreter, must leave it unimported.
The stages a delivery task does not run stay unimported too (DuckDB, the parser and the
classifier were 0.05 s of CPU per task): what it imports is what the DAG's deliver task imports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from agent_traffic.devtools.sandbox import Sandbox
from agent_traffic.run.runtime import Runtime
from agent_traffic.run.steps import discover_objects, process_object
from tests.conftest import REPO
from tests.vendor_fixtures import DAY, FRESH, fast_hitkeep, keys, three_vendor_config

SENDER = """
import json, sys
from datetime import datetime
from agent_traffic.delivery.deliver import deliver_group
from agent_traffic.delivery.plan import plan_deliveries
from agent_traffic.delivery.leases import LeaseOwner
from agent_traffic.delivery.plan import ChunkGroup
from agent_traffic.run.runtime import Runtime, outbox_store
from agent_traffic.secrets import Secret
config, day, now, keys = sys.argv[1], sys.argv[2], datetime.fromisoformat(sys.argv[3]), json.loads(sys.argv[4])
rt = Runtime.load(config, "lean")
plan = plan_deliveries(rt.cfg, rt.store, [day], now=now)  # receive-time vendors: an age cutoff too
delivered = {g.destination: deliver_group(rt.cfg, rt.store, g, Secret(keys[g.destination]), run_id="lean",
                                          now=now).delivered_events for g in plan.groups}
unused = ("duckdb", "great_expectations", "agent_traffic.ingest.parse", "agent_traffic.annotate.annotator")
print(json.dumps({"delivered": delivered, "pandas": "pandas" in sys.modules,
                  "unused": [m for m in unused if m in sys.modules]}))
"""


def test_planning_and_sending_every_vendor_leaves_pandas_unimported(tmp_path: Path) -> None:
    dest_keys = keys()
    with Sandbox(api_keys=dest_keys.values(), seed=3) as sb:
        fast_hitkeep(sb)
        cfg = three_vendor_config(tmp_path / "c.yaml", tmp_path, sb.url, select="all",
                                  delivery={"concurrency": 2}, scrunch={"ip_policy": "truncate"})
        rt = Runtime.load(str(cfg), "stage")
        for ref in discover_objects(rt, [DAY]).objects:
            process_object(rt, ref)
        out = subprocess.run([sys.executable, "-c", SENDER, str(cfg), DAY.isoformat(), FRESH.isoformat(),
                              json.dumps(dest_keys)], cwd=REPO, capture_output=True, text=True, timeout=300,
                             check=False)
        assert out.returncode == 0, out.stderr[-3000:]
        res = json.loads(out.stdout.strip().splitlines()[-1])
        assert set(res["delivered"]) == set(dest_keys) and all(res["delivered"].values())
        assert res["pandas"] is False, "a delivery-only process imported pandas (pyarrow's Python-value probe)"
        assert res["unused"] == [], "a delivery-only process imported stages it does not run"


def test_numpy_imported_after_the_package_starts_no_blas_threads() -> None:
    """OpenBLAS's thread pool spins at numpy's import (0.09 s of CPU a process); the package gives
    it one thread, unless the user chose a number."""
    probe = ("import agent_traffic, numpy, os, pathlib; print(os.environ['OPENBLAS_NUM_THREADS'], "
             "[l for l in pathlib.Path('/proc/self/status').read_text().splitlines() if l.startswith('Threads:')][0])")
    for env, want in (({}, "1"), ({"OPENBLAS_NUM_THREADS": "2"}, "2")):
        clean = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
        out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60,
                             check=True, env={**clean, **env})
        setting, threads = out.stdout.split(maxsplit=1)
        assert setting == want
        if not env:
            assert threads.split()[-1] == "1", threads
