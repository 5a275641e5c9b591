"""`make demo`: one day of sample logs -> a real Airflow run on SQLite -> the local receiver.

1. writes a day of gzip access logs for two sites to .demo/logs (the "object store", a folder);
2. starts the local receiver (`agent-traffic sandbox`), which answers like Scrunch, HitKeep and
   Known Agents, with a fresh random key per destination;
3. migrates an Airflow home in .demo/airflow (SQLite) and creates a delivery pool per vendor;
4. runs the nightly DAG for that day with `airflow dags test` (each key reaches its task through
   an Airflow Connection in the environment, as in production);
5. prints the run summary and what the receiver accepted per vendor.

DEMO_DATE=YYYY-MM-DD picks the day (default: yesterday, UTC). Run it twice: the second run finds
nothing new to parse and nothing left to send.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / ".demo"
BIN = Path(sys.executable).parent
CONFIG = REPO / "config" / "demo.yaml"
#: destination -> (Airflow Connection id, what the receiver stored it under)
DESTINATIONS = {
    "scrunch-example": ("scrunch_example", "scrunch/01JDEM0SANDB0X0000000000AA.ndjson"),
    "knownagents-example": ("knownagents_example", "known_agents/default.ndjson"),
    "hitkeep-blog": ("hitkeep_blog", "hitkeep/3f1c2a9e-4b6d-4e8f-9a0b-1c2d3e4f5a6b.ndjson"),
    "scrunch-blog": ("scrunch_blog", "scrunch/01JDEM0SANDB0X0000000000AB.ndjson"),
}
POOLS = {"scrunch": 4, "hitkeep": 1, "knownagents": 4}  # HitKeep: one task at a time (its rate limit)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def step(msg: str) -> None:
    print(f"\n==> {msg}", flush=True)


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the local receiver exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_sandbox/health", timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"the local receiver did not answer at {url} within {timeout}s")


def main() -> int:
    from agent_traffic.devtools.samples import write_day

    day = date.fromisoformat(os.environ["DEMO_DATE"]) if os.environ.get("DEMO_DATE") else (
        datetime.now(UTC).date() - timedelta(days=1))
    step(f"sample logs for {day} -> {DEMO / 'logs'}")
    paths = []
    # HitKeep takes 10 requests/s, one event each: the blog is small so the demo stays short.
    for site, lines, files, seed in (("example.com", int(os.environ.get("DEMO_LINES", "40000")), 4, 0),
                                     ("blog.example.org", 1000, 1, 1)):
        folder = DEMO / "logs" / site / f"{day:%Y/%m/%d}"
        # Written once: rewritten objects would be new versions, parsed and sent again.
        paths += sorted(folder.glob("*.gz")) or write_day(DEMO / "logs" / site, day, lines=lines, files=files,
                                                          seed=seed)
    print(f"    {len(paths)} gzip objects, {sum(p.stat().st_size for p in paths):,} bytes")

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    keys = {d: f"demo-{d}-" + secrets.token_urlsafe(18) for d in DESTINATIONS}
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(DEMO / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        "GX_ANALYTICS_ENABLED": "false",
        "AGENT_TRAFFIC_CONFIG": str(CONFIG),
        "SANDBOX_URL": url,
        **{f"AIRFLOW_CONN_{conn.upper()}": json.dumps({"conn_type": "generic", "password": keys[d]})
           for d, (conn, _) in DESTINATIONS.items()},
        "AGENT_TRAFFIC_SANDBOX_KEYS": ",".join(keys.values()),
        "NO_PROXY": "127.0.0.1,localhost",
    }
    step(f"local receiver (Scrunch, HitKeep and Known Agents protocols) on {url}")
    (DEMO / "sandbox").mkdir(parents=True, exist_ok=True)
    receiver = subprocess.Popen(
        [str(BIN / "agent-traffic"), "sandbox", "--port", str(port), "--data-dir", str(DEMO / "sandbox")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_healthy(url, receiver)
        step("Airflow on SQLite: db migrate, a delivery pool per vendor")
        (DEMO / "airflow").mkdir(parents=True, exist_ok=True)
        run = lambda *a: subprocess.run([str(BIN / "airflow"), *a], env=env, check=True,  # noqa: E731
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        run("db", "migrate")
        pools = DEMO / "airflow" / "pools.json"
        pools.write_text(json.dumps({f"agent_traffic_{v}": {"slots": n, "description": f"{v} deliveries",
                                                            "include_deferred": False} for v, n in POOLS.items()}))
        run("pools", "import", str(pools))
        logical = datetime(day.year, day.month, day.day, tzinfo=UTC)  # the logical date names the day
        step(f"airflow dags test agent_traffic_nightly {logical.isoformat()}  (processes {day})")
        t0 = time.monotonic()
        proc = subprocess.run(
            [str(BIN / "airflow"), "dags", "test", "agent_traffic_nightly", logical.isoformat()],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        (DEMO / "airflow-dags-test.log").write_text(proc.stdout)
        state = "success" if "state=success" in proc.stdout or proc.returncode == 0 else "failed"
        print(f"    DAG run {state} in {time.monotonic() - t0:.0f}s (full log: .demo/airflow-dags-test.log)")
        step("run summary (from the staging store)")
        summary = subprocess.run([str(BIN / "agent-traffic"), "summary", "--config", str(CONFIG)],
                                 env=env, text=True, capture_output=True)
        print(summary.stdout or summary.stderr)
        stats_request = urllib.request.Request(f"{url}/_sandbox/stats",  # the control routes need a key
                                               headers={"Authorization": f"Bearer {next(iter(keys.values()))}"})
        with urllib.request.urlopen(stats_request, timeout=5) as r:
            stats = json.load(r)
        step("local receiver: events accepted (all runs), and requests by vendor and status")
        for dest, (_, stored) in DESTINATIONS.items():
            received = DEMO / "sandbox" / stored
            accepted = len(received.read_bytes().splitlines()) if received.exists() else 0
            print(f"    {dest:<22} {accepted:>7,}  .demo/sandbox/{stored}")
        print(f"    requests: {json.dumps(stats.get('requests', stats))}")
        print("\nStaged Parquet: .demo/staging/events/site=*/provider=*/date=*/  "
              "(try: .venv/bin/python -c \"import duckdb; print(duckdb.sql(\\\"SELECT provider, agent, "
              "count(*) FROM read_parquet('.demo/staging/events/**/*.parquet', hive_partitioning=true) "
              "GROUP BY ALL ORDER BY 3 DESC\\\"))\")")
        return 0 if proc.returncode == 0 and summary.returncode == 0 else 1
    finally:
        receiver.terminate()
        try:
            receiver.wait(timeout=10)
        except subprocess.TimeoutExpired:
            receiver.kill()


if __name__ == "__main__":
    if "--clean" in sys.argv:
        shutil.rmtree(DEMO, ignore_errors=True)
    raise SystemExit(main())
