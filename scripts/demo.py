"""`make demo`: one day of sample logs -> a real Airflow run on SQLite -> the local receiver.

1. writes a day of gzip access logs to .demo/logs (the "object store", a local folder);
2. starts the local receiver (`agent-traffic sandbox`) with a fresh random key;
3. migrates an Airflow home in .demo/airflow (SQLite) and creates the delivery pool;
4. runs the nightly DAG for that day with `airflow dags test` (the key reaches the task through an
   Airflow Connection in the environment, as in production);
5. prints the run summary and what the receiver accepted.

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
SITE_ID = "01JDEM0SANDB0X0000000000AA"


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
    from agent_traffic.samples import write_day

    day = date.fromisoformat(os.environ["DEMO_DATE"]) if os.environ.get("DEMO_DATE") else (
        datetime.now(UTC).date() - timedelta(days=1))
    logs = DEMO / "logs" / "example.com"
    step(f"sample logs for {day} -> {logs}")
    paths = write_day(logs, day, lines=int(os.environ.get("DEMO_LINES", "40000")), files=4)
    print(f"    {len(paths)} gzip objects, {sum(p.stat().st_size for p in paths):,} bytes")

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    key = "demo-" + secrets.token_urlsafe(24)
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
        "AIRFLOW_CONN_SCRUNCH_EXAMPLE": json.dumps({"conn_type": "generic", "password": key}),
        "AGENT_TRAFFIC_SANDBOX_KEYS": key,
        "NO_PROXY": "127.0.0.1,localhost",
    }
    step(f"local receiver (Scrunch protocol) on {url}")
    (DEMO / "sandbox").mkdir(parents=True, exist_ok=True)
    receiver = subprocess.Popen(
        [str(BIN / "agent-traffic"), "sandbox", "--port", str(port), "--data-dir", str(DEMO / "sandbox")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_healthy(url, receiver)
        step("Airflow on SQLite: db migrate, pool")
        (DEMO / "airflow").mkdir(parents=True, exist_ok=True)
        run = lambda *a: subprocess.run([str(BIN / "airflow"), *a], env=env, check=True,  # noqa: E731
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        run("db", "migrate")
        run("pools", "set", "agent_traffic_scrunch", "4", "Scrunch deliveries")
        logical = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1)
        step(f"airflow dags test agent_traffic_nightly {logical.isoformat()}  (data interval = {day})")
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
        with urllib.request.urlopen(f"{url}/_sandbox/stats", timeout=5) as r:
            stats = json.load(r)
        received = DEMO / "sandbox" / "scrunch" / f"{SITE_ID}.ndjson"
        accepted = len(received.read_bytes().splitlines()) if received.exists() else 0
        step("local receiver")
        print(f"    events accepted in total: {accepted:,}  (.demo/sandbox/scrunch/{SITE_ID}.ndjson)")
        print(f"    requests by status: {json.dumps(stats.get('requests', stats))}")
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
