"""docker-compose.yml cannot run here (no Docker engine), so it is checked against what the DAGs,
the config and the image really need: services, mounts, environment, connections, pools, buckets."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from agent_traffic.config import parse_config
from agent_traffic.devtools.cluster import dot_env
from agent_traffic.devtools.cluster import interpolate as compose_interpolate
from tests.conftest import REPO

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
ENV_DEFAULTS = dot_env()  # .env.example with the two required secrets made as it says
AIRFLOW_SERVICES = ["airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-worker",
                    "airflow-triggerer", "airflow-init"]


def interpolate(value: str, env: dict[str, str] = ENV_DEFAULTS) -> str:
    return compose_interpolate(value, env)


def env_of(service: str) -> dict[str, str]:
    return {k: interpolate(str(v)) for k, v in SERVICES[service].get("environment", {}).items()}


def test_official_layout_plus_minio() -> None:
    expected = {"postgres", "redis", "minio", "minio-init", "airflow-pools", "sandbox", "airflow-cli",
                *AIRFLOW_SERVICES}
    assert expected <= set(SERVICES)
    for name, svc in SERVICES.items():
        for dep in svc.get("depends_on", {}) or {}:
            assert dep in SERVICES, f"{name} depends on unknown service {dep}"
    for name in ("postgres", "redis", "minio", "airflow-apiserver", "airflow-scheduler", "airflow-worker",
                 "airflow-dag-processor", "airflow-triggerer"):
        assert "healthcheck" in SERVICES[name], name
    assert SERVICES["airflow-worker"]["environment"]["DUMB_INIT_SETSID"] == "0"
    assert "127.0.0.1:8080:8080" in [interpolate(p) for p in SERVICES["airflow-apiserver"]["ports"]]  # this host only
    assert SERVICES["airflow-init"]["environment"]["_AIRFLOW_DB_MIGRATE"] == "true"


@pytest.mark.parametrize("service", AIRFLOW_SERVICES)
def test_airflow_services_share_image_env_and_mounts(service: str) -> None:
    svc = SERVICES[service]
    assert svc["build"] == "." and svc["image"].startswith("${AIRFLOW_IMAGE_NAME")
    env = env_of(service)
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "false"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://airflow:airflow@postgres/")
    assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://:@redis:6379")
    assert env["GX_ANALYTICS_ENABLED"] == "false"
    mounts = {m.split(":")[1]: m.split(":")[0] for m in svc["volumes"] if m.startswith("./")}
    for target in ("/opt/airflow/dags", "/opt/airflow/include", "/opt/airflow/plugins"):
        assert (REPO / mounts[target]).is_dir(), target
    assert env["PYTHONPATH"] == "/opt/airflow/include"
    assert (REPO / mounts["/opt/airflow/include"] / "agent_traffic" / "__init__.py").exists()
    assert config_file(service).exists()


def config_file(service: str) -> Path:
    """The file AGENT_TRAFFIC_CONFIG names inside the container, found through the mounts."""
    env = env_of(service)
    inside = env["AGENT_TRAFFIC_CONFIG"]
    for m in SERVICES[service]["volumes"]:
        src, target = m.split(":")[:2]
        if src.startswith("./") and inside.startswith(target + "/"):
            return REPO / src / inside[len(target) + 1 :]
    raise AssertionError(f"AGENT_TRAFFIC_CONFIG={inside} is not under a mounted folder")


def compose_config():
    env = env_of("airflow-scheduler")
    path = config_file("airflow-scheduler")
    data = yaml.safe_load(path.read_text())
    from agent_traffic.config import interpolate as cfg_interpolate

    return parse_config(cfg_interpolate(data, env), base_dir=path.parent, source=str(path)), env


def test_config_connections_exist_and_parse() -> None:
    cfg, env = compose_config()
    conn_ids = {cfg.object_store.airflow_conn_id} | {d.secret.airflow_conn_id for _, d in cfg.destinations()}
    for conn_id in conn_ids:
        raw = env[f"AIRFLOW_CONN_{conn_id.upper()}"]
        conn = json.loads(raw)
        assert conn["conn_type"] and conn.get("password"), conn_id
    minio = json.loads(env["AIRFLOW_CONN_MINIO_S3"])
    assert minio["extra"]["endpoint_url"] == "http://minio:9000" == cfg.object_store.endpoint_url
    for _, dest in cfg.destinations():
        assert dest.endpoint_base in ("http://sandbox:8900",) or dest.endpoint_base.startswith("https://")


def test_minio_init_makes_every_bucket_the_config_uses() -> None:
    cfg, _ = compose_config()
    script = "\n".join(SERVICES["minio-init"]["command"])
    made = set(re.findall(r"mc mb --ignore-existing local/([a-z0-9.-]+)", script))
    used = {cfg.staging.split("/")[2]} | {s.url.split("/")[2] for s in cfg.sources}
    assert used <= made, f"buckets {used - made} are not created by minio-init"


def test_every_pool_the_dags_use_is_created(airflow_home: Path) -> None:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    pools = {t.pool for dag in bag.dags.values() for t in dag.tasks} - {"default_pool"}
    command = SERVICES["airflow-pools"]["command"]
    created = set(re.findall(r"airflow pools set (\S+)", command))
    assert pools and pools <= created, f"pools {pools - created} are not created"


def test_image_installs_the_pinned_requirements() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    base = re.search(r"^FROM apache/airflow:(\S+)-python(\S+)$", dockerfile, re.M)
    pinned = re.search(r"^apache-airflow==(\S+)$", (REPO / "requirements.txt").read_text(), re.M)
    assert base and pinned and base.group(1) == pinned.group(1) and base.group(2) == "3.11"
    assert "pip install --no-cache-dir -r /opt/agent-traffic/requirements.txt -c /opt/agent-traffic/constraints.txt" in dockerfile
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored


def test_every_airflow_service_shares_one_jwt_secret_and_a_required_fernet_key() -> None:
    """Without one shared JWT secret each service makes its own and every task fails with
    `Invalid auth token`; without a Fernet key Connections (vendor keys) are stored in plain text."""
    jwt = {env_of(s)["AIRFLOW__API_AUTH__JWT_SECRET"] for s in AIRFLOW_SERVICES}
    fernet = {env_of(s)["AIRFLOW__CORE__FERNET_KEY"] for s in AIRFLOW_SERVICES}
    assert jwt == {ENV_DEFAULTS["AIRFLOW_JWT_SECRET"]} and fernet == {ENV_DEFAULTS["AIRFLOW_FERNET_KEY"]}
    from cryptography.fernet import Fernet

    Fernet(fernet.pop())  # a valid key
    common = COMPOSE["x-airflow-common"]["environment"]
    for var, name in (("AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW_JWT_SECRET"),
                      ("AIRFLOW__CORE__FERNET_KEY", "AIRFLOW_FERNET_KEY")):
        unset = {k: v for k, v in ENV_DEFAULTS.items() if k != name}
        with pytest.raises(ValueError, match=f"{name} must be set"):
            interpolate(common[var], unset)
    example = (REPO / ".env.example").read_text()
    assert "AIRFLOW_JWT_SECRET=" in example and "AIRFLOW_FERNET_KEY=" in example and "Fernet.generate_key" in example


def test_the_cluster_dependencies_are_pinned_as_the_official_image_has_them(airflow_home) -> None:
    """celery 5.7.0 breaks apache-airflow-providers-celery 3.26.0: the scheduler cannot load its executor."""
    pins = dict(line.split("==", 1) for line in (REPO / "constraints.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    for name in ("celery", "kombu", "redis", "psycopg2-binary", "apache-airflow-providers-celery",
                 "apache-airflow-providers-postgres", "apache-airflow-providers-fab"):
        assert name in pins, name
    assert not pins["celery"].startswith("5.7.")
    from airflow.providers.celery.executors.celery_executor import app  # the executor loads

    assert app.main
