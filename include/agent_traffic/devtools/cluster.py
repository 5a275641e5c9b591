"""The compose layout without Docker: PostgreSQL, Redis, an S3 server, the sandbox receiver and
every Airflow service of `docker-compose.yml` (api-server, scheduler, dag-processor, triggerer,
Celery workers on hostnames of their own) as processes on loopback. `make cluster` runs it for
a user who has no Docker; the cluster test drives it.

The Airflow services get the environment the compose file gives them, with each service's host
name mapped to its loopback port and each mounted folder to the repository's own, plus the
few settings the official image sets itself (`AIRFLOW_HOME`, the dags and plugins folders).
PostgreSQL and Redis come from Debian's packages (installed here when missing, as root) and run
as private instances on free ports, so nothing already running is touched.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[3]
#: What `.env` would hold: the UI login and the defaults the compose file falls back to.
ADMIN = ("airflow", "airflow")
SCRUNCH_KEY = "sandbox-key"
WORKERS = ("worker-a", "worker-b")
#: Settings the harness adds to the compose environment, each to finish a test in minutes: a
#: task whose worker died is noticed after 30 s instead of 5 min; new DAG files are seen at once.
TEST_SETTINGS = {
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "30",
    "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
    "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "5",
    "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "1",
}
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-|:?\?)([^}]*))?\}")


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's substitution: ${VAR}, ${VAR:-default}, ${VAR:?error}; `$$` is a literal `$`."""

    def sub(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2) or "", m.group(3) or ""
        val = env.get(name)
        if op.endswith("?") and not val:
            raise ValueError(f"{name} must be set: {arg}")
        if op.endswith("-") and not val:
            return arg
        return val or ""

    return _VAR.sub(sub, value).replace("$$", "$")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dot_env() -> dict[str, str]:
    """A `.env` for the compose file, as `.env.example` says to make one (fresh secrets)."""
    import secrets

    from cryptography.fernet import Fernet

    env = dict(line.split("=", 1) for line in (REPO / ".env.example").read_text().splitlines()
               if line and not line.startswith("#") and "=" in line)
    env["AIRFLOW_JWT_SECRET"] = secrets.token_urlsafe(32)
    env["AIRFLOW_FERNET_KEY"] = Fernet.generate_key().decode()
    env["SCRUNCH_API_KEY_EXAMPLE"] = SCRUNCH_KEY
    return {k: v for k, v in env.items() if v != ""}


@dataclass
class Ports:
    postgres: int = field(default_factory=free_port)
    redis: int = field(default_factory=free_port)
    s3: int = field(default_factory=free_port)
    api: int = field(default_factory=free_port)
    sandbox: int = field(default_factory=free_port)
    scheduler_health: int = field(default_factory=free_port)
    triggerer_logs: int = field(default_factory=free_port)
    worker_logs: dict[str, int] = field(default_factory=lambda: {w: free_port() for w in WORKERS})


def compose_environment(ports: Ports, home: Path, dot: Mapping[str, str],
                        compose_file: Path = REPO / "docker-compose.yml") -> dict[str, str]:
    """The Airflow services' environment from the compose file, hosts mapped to loopback."""
    compose = yaml.safe_load(compose_file.read_text())
    common = compose["x-airflow-common"]
    hosts = {"@postgres/": f"@127.0.0.1:{ports.postgres}/", "@redis:6379": f"@127.0.0.1:{ports.redis}",
             "//minio:9000": f"//127.0.0.1:{ports.s3}", "//airflow-apiserver:8080": f"//127.0.0.1:{ports.api}",
             "//sandbox:8900": f"//127.0.0.1:{ports.sandbox}"}
    mounts = {target: str((compose_file.parent / src).resolve())
              for src, target, *_ in (v.split(":") for v in common["volumes"] if v.startswith("./"))}
    out = {}
    for key, raw in common["environment"].items():
        value = interpolate(str(raw), dot)
        for host, loopback in hosts.items():
            value = value.replace(host, loopback)
        for target in sorted(mounts, key=len, reverse=True):
            value = value.replace(target, mounts[target])
        out[key] = value
    out.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": mounts["/opt/airflow/dags"],
        "AIRFLOW__CORE__PLUGINS_FOLDER": mounts["/opt/airflow/plugins"],
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(ports.scheduler_health),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(ports.triggerer_logs),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{ports.api}",
        **TEST_SETTINGS,
    })
    return out


def ensure_packages() -> None:
    """PostgreSQL and Redis from Debian's packages, installed when missing (root only)."""
    if _pg_bin("initdb") and shutil.which("redis-server"):
        return
    if os.geteuid() != 0:
        raise RuntimeError("PostgreSQL and Redis are needed: run `apt-get install postgresql redis-server` as root")
    subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True, timeout=600)
    subprocess.run(["apt-get", "install", "-y", "-qq", "postgresql", "redis-server"], check=True,
                   capture_output=True, timeout=900, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def _pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else None


class Cluster:
    """Start, drive and stop the layout; every process's output goes to `<root>/logs/<name>.log`."""

    def __init__(self, root: Path, *, config: Path | None = None, workers: Sequence[str] = WORKERS) -> None:
        self.root = root
        self.ports = Ports()
        self.workers = list(workers)
        self.home = root / "airflow"
        self.dot = dot_env()
        self.env = compose_environment(self.ports, self.home, self.dot)
        if config is not None:
            self.env["AGENT_TRAFFIC_CONFIG"] = str(config)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.pg_dir: Path | None = None
        self.s3: Any = None
        self.sandbox: Any = None
        self._token: str | None = None
        self.bin = Path(sys.executable).parent

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> Cluster:
        ensure_packages()
        (self.root / "logs").mkdir(parents=True, exist_ok=True)
        self.home.mkdir(parents=True, exist_ok=True)
        self._start_postgres()
        self._spawn("redis", ["redis-server", "--port", str(self.ports.redis), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no"])
        self._start_s3()
        self._start_sandbox()
        _wait_port(self.ports.redis, "redis")
        self.airflow("db", "migrate", timeout=600)
        self.airflow("users", "create", "--username", ADMIN[0], "--password", ADMIN[1], "--role", "Admin",
                     "--email", "admin@example.com", "--firstname", "Ad", "--lastname", "Min", check=False)
        self._pools()
        self._spawn("api-server", [str(self.bin / "airflow"), "api-server", "--host", "127.0.0.1",
                                   "--port", str(self.ports.api)])
        for name in ("scheduler", "dag-processor", "triggerer"):
            self._spawn(name, [str(self.bin / "airflow"), name])
        for w in self.workers:
            self.start_worker(w)
        self._wait_api()
        return self

    def stop(self) -> None:
        for name in list(self.procs):
            self._kill(name, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for name, p in list(self.procs.items()):
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(max(0.1, deadline - time.monotonic()))
            self._kill(name, signal.SIGKILL)
        self.procs.clear()
        if self.sandbox is not None:
            self.sandbox.stop()
        if self.s3 is not None:
            self.s3.stop()
        if self.pg_dir is not None:
            subprocess.run(["su", "postgres", "-s", "/bin/sh", "-c",
                            f"{_pg_bin('pg_ctl')} -D {self.pg_dir}/data -m immediate stop"],
                           capture_output=True, timeout=60)
            shutil.rmtree(self.pg_dir, ignore_errors=True)

    def __enter__(self) -> Cluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- services -------------------------------------------------------------------------------

    def _start_postgres(self) -> None:
        self.pg_dir = Path(tempfile.mkdtemp(prefix="agent-traffic-pg-"))
        shutil.chown(self.pg_dir, "postgres", "postgres")
        pw = self.pg_dir / "pw"
        pw.write_text("airflow\n")
        shutil.chown(pw, "postgres", "postgres")
        script = (f"{_pg_bin('initdb')} -D {self.pg_dir}/data -U airflow --pwfile={pw} -A scram-sha-256 "
                  f"-E UTF8 >/dev/null && {_pg_bin('pg_ctl')} -D {self.pg_dir}/data -l {self.pg_dir}/log -w "
                  f"-o '-p {self.ports.postgres} -k {self.pg_dir} -c listen_addresses=127.0.0.1' start "
                  f"&& {_pg_bin('createdb')} -h 127.0.0.1 -p {self.ports.postgres} -U airflow airflow")
        subprocess.run(["su", "postgres", "-s", "/bin/sh", "-c", script], check=True, capture_output=True,
                       timeout=120, env={**os.environ, "PGPASSWORD": "airflow"})

    def _start_s3(self) -> None:
        """moto's S3 server, with the buckets the compose file's `minio-init` makes."""
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's per-request access log

        self.s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=self.ports.s3, verbose=False)
        self.s3.start()
        compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
        script = "\n".join(compose["services"]["minio-init"]["command"])
        client = self.s3_client()
        for bucket in re.findall(r"mc mb --ignore-existing local/([a-z0-9.-]+)", script):
            client.create_bucket(Bucket=bucket)

    def s3_client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{self.ports.s3}",
                            aws_access_key_id=self.dot.get("MINIO_ROOT_USER", "minioadmin"),
                            aws_secret_access_key=self.dot.get("MINIO_ROOT_PASSWORD", "minioadmin"),
                            region_name="us-east-1")

    def _start_sandbox(self) -> None:
        from agent_traffic.devtools.sandbox import Sandbox

        self.sandbox = Sandbox("127.0.0.1", self.ports.sandbox, self.root / "sandbox", [SCRUNCH_KEY], seed=17)
        self.sandbox.retry_after = 0
        self.sandbox.start()

    def _pools(self) -> None:
        """The pools the compose file's `airflow-pools` service sets."""
        compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
        command = interpolate(compose["services"]["airflow-pools"]["command"], self.dot)
        for name, slots, desc in re.findall(r"airflow pools set (\S+) (\d+) '([^']*)'", command):
            self.airflow("pools", "set", name, slots, desc)

    def start_worker(self, name: str) -> None:
        """A Celery worker on a hostname of its own (a UTS namespace, as a container has)."""
        cmd = [str(self.bin / "airflow"), "celery", "worker", "--celery-hostname", f"{name}@%h", "--concurrency", "4"]
        env = {"AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(self.ports.worker_logs[name])}
        if os.geteuid() == 0 and shutil.which("unshare"):
            cmd = ["unshare", "--uts", "sh", "-c", f'hostname {name} && exec "$@"', "sh", *cmd]
        self._spawn(name, cmd, env)

    def _spawn(self, name: str, cmd: list[str], extra: Mapping[str, str] | None = None) -> None:
        log = (self.root / "logs" / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(cmd, env={**os.environ, **self.env, **(extra or {})}, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True, cwd=self.root)

    def kill_worker(self, name: str) -> None:
        """SIGKILL a worker's whole process tree, as when its container dies."""
        self._kill(name, signal.SIGKILL)
        self.procs.pop(name).wait(30)

    def _kill(self, name: str, sig: signal.Signals) -> None:
        import psutil

        p = self.procs.get(name)
        if p is None or p.poll() is not None:
            return
        with contextlib.suppress(psutil.Error):
            tree = psutil.Process(p.pid).children(recursive=True)
            for child in [psutil.Process(p.pid), *tree]:
                with contextlib.suppress(psutil.Error):
                    child.send_signal(sig)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, sig)

    # -- driving it -----------------------------------------------------------------------------

    def airflow(self, *args: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        """The `airflow` command line with the services' environment."""
        r = subprocess.run([str(self.bin / "airflow"), *args], env={**os.environ, **self.env}, text=True,
                           capture_output=True, timeout=timeout, cwd=self.root)
        if check and r.returncode:
            raise RuntimeError(f"airflow {' '.join(args[:3])} failed ({r.returncode}): {r.stderr[-2000:]}")
        return r

    def api(self, method: str, path: str, body: Any = None) -> Any:
        """The REST API (`/api/v2/...`) as the admin user, with a JWT from `/auth/token`."""
        if self._token is None:
            self._token = self._request("POST", "/auth/token", {"username": ADMIN[0], "password": ADMIN[1]},
                                        auth=False)["access_token"]
        return self._request(method, path, body)

    def _request(self, method: str, path: str, body: Any, *, auth: bool = True) -> Any:
        req = urllib.request.Request(f"http://127.0.0.1:{self.ports.api}{path}", method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json",
                                              **({"Authorization": f"Bearer {self._token}"} if auth else {})})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                data = r.read()
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"{method} {path}: HTTP {exc.code}: {exc.read()[:1000]!r}") from None
        return json.loads(data) if data else None

    def _wait_api(self, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited ({p.returncode}); see {self.root}/logs/{name}.log")
            with contextlib.suppress(OSError, RuntimeError, KeyError):
                self._request("GET", "/api/v2/version", None, auth=False)
                return
            time.sleep(1)
        raise TimeoutError(f"the api-server did not answer in {timeout:.0f} s; see {self.root}/logs/api-server.log")

    def wait_dag(self, dag_id: str, timeout: float = 240) -> None:
        """Until the dag-processor has parsed the DAG (its serialized form is in the database)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(RuntimeError):
                self.api("GET", f"/api/v2/dags/{dag_id}")
                return
            time.sleep(2)
        raise TimeoutError(f"DAG {dag_id} was not parsed in {timeout:.0f} s; see {self.root}/logs/dag-processor.log")

    def wait_run(self, dag_id: str, run_id: str, timeout: float = 600) -> str:
        """The run's final state (success or failed)."""
        deadline = time.monotonic() + timeout
        state = "?"
        while time.monotonic() < deadline:
            state = self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{_q(run_id)}")["state"]
            if state in ("success", "failed"):
                return state
            time.sleep(2)
        raise TimeoutError(f"run {run_id} still {state} after {timeout:.0f} s")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        got = self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{_q(run_id)}/taskInstances?limit=1000")
        return got["task_instances"]

    def task_logs(self, dag_id: str, run_id: str, task_id: str) -> str:
        """Every try's log of a task (all map indexes), read from the shared log folder."""
        base = self.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
        return "\n".join(p.read_text(errors="replace") for p in sorted(base.rglob("*.log")))

    def runs(self, dag_id: str) -> Iterator[dict[str, Any]]:
        yield from self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns?limit=100&order_by=run_after")["dag_runs"]


def _q(run_id: str) -> str:
    from urllib.parse import quote

    return quote(run_id, safe="")


def _wait_port(port: int, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.2)
    raise TimeoutError(f"{what} is not listening on 127.0.0.1:{port}")


def main() -> int:
    """`make cluster`: start the layout on this machine and keep it up until Ctrl-C."""
    root = Path(tempfile.mkdtemp(prefix="agent-traffic-cluster-"))
    with Cluster(root) as c:
        c.airflow("dags", "unpause", "agent_traffic_nightly", check=False)
        print(f"Airflow UI and REST API: http://127.0.0.1:{c.ports.api}  (login {ADMIN[0]} / {ADMIN[1]})\n"
              f"S3 (moto): http://127.0.0.1:{c.ports.s3}  buckets access-logs, agent-traffic\n"
              f"sandbox receiver: http://127.0.0.1:{c.ports.sandbox}\n"
              f"logs: {root}/logs   environment: the compose file's, hosts on loopback\n"
              "Ctrl-C stops everything.", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while all(p.poll() is None for p in c.procs.values()):
                time.sleep(1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
