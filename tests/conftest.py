"""Shared fixtures: a local receiver, an S3 protocol server and an Airflow home, all on loopback."""

from __future__ import annotations

import json
import logging
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(REPO / "dags"))
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "False")
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
# Airflow puts the dags bundle's folder on sys.path where it parses and runs DAGs (BundleDagBag):
# the DAGs' shared module `agent_traffic_airflow` is imported from there.
if str(REPO / "dags") not in sys.path:
    sys.path.append(str(REPO / "dags"))


logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's per-request access log


@pytest.fixture
def api_key() -> str:
    return "test-" + secrets.token_hex(16)


@pytest.fixture
def sandbox(tmp_path: Path, api_key: str) -> Iterator:
    from agent_traffic.sandbox import Sandbox

    with Sandbox(data_dir=tmp_path / "sandbox", api_keys=[api_key], seed=7) as sb:
        sb.retry_after = 0
        yield sb


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """moto's S3 server speaking the real protocol on a loopback port."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_env(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return s3_server


def make_bucket(endpoint: str, name: str) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                      aws_secret_access_key="testing", region_name="us-east-1")
    s3.create_bucket(Bucket=name)


def put_object(endpoint: str, bucket: str, key: str, data: bytes) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                      aws_secret_access_key="testing", region_name="us-east-1")
    s3.put_object(Bucket=bucket, Key=key, Body=data)


def write_config(path: Path, *, staging: str, source_url: str, base_url: str, fmt: str = "auto",
                 select: str = "ai", delivery: dict | None = None, site_id: str = "01JDEM0SANDB0X0000000000AA",
                 extra_dest: dict | None = None, object_store: dict | None = None,
                 more_destinations: list[dict] | None = None, sites: list[dict] | None = None,
                 sources: list[dict] | None = None) -> Path:
    """A config on the sample logs; `more_destinations` join the first site's Scrunch one, and
    `sites`/`sources` are added as given (each with its own destinations)."""
    dest = {
        "name": "scrunch-example",
        "vendor": "scrunch",
        "site_id": site_id,
        "base_url": base_url,
        "secret": {"env": "SCRUNCH_API_KEY_EXAMPLE", "airflow_conn_id": "scrunch_example"},
        "select": select,
        **(extra_dest or {}),
    }
    cfg = {
        "version": 1,
        "staging": staging,
        "sources": [{"name": "web", "url": source_url, "format": fmt, "site": "example.com"}, *(sources or [])],
        "sites": [{"name": "example.com", "destinations": [dest, *(more_destinations or [])]}, *(sites or [])],
        "delivery": {"max_attempts": 4, "backoff_base_s": 0.01, "backoff_cap_s": 0.05,
                     "retry_after_cap_s": 0.1, "timeout_s": 5, **(delivery or {})},
    }
    if object_store:
        cfg["object_store"] = object_store
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An Airflow home on SQLite, migrated once per session, with the delivery pools."""
    home = tmp_path_factory.mktemp("airflow_home")
    os.environ["AIRFLOW_HOME"] = str(home)
    env = {**os.environ, "AIRFLOW_HOME": str(home)}
    airflow = str(Path(sys.executable).parent / "airflow")
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
    pools = home / "pools.json"  # one `airflow` start for all three vendors' pools
    pools.write_text(json.dumps({f"agent_traffic_{v}": {"slots": n, "description": f"{v} deliveries",
                                                        "include_deferred": False}
                                 for v, n in (("scrunch", 4), ("hitkeep", 1), ("knownagents", 4))}))
    subprocess.run([airflow, "pools", "import", str(pools)], env=env, check=True, capture_output=True, timeout=120)
    return home
