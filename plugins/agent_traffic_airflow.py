"""The Airflow side of the pipeline, shared by the DAGs and the UI plugin: the config file,
object-store options and destination keys through Airflow Connections, the days a run
processes, mapped task results, failure alerts and the errors that no retry can fix.

It lives in the plugins folder because Airflow puts that folder on `sys.path` in every
component (`airflow.settings.initialize`: API server, scheduler, DAG processor, workers,
triggerer), while the DAGs folder is only on it where DAGs are parsed or run, never in the API
server that serves the plugin's pages. Not a plugin itself (listed in `plugins/.airflowignore`)."""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from airflow.sdk import Asset, BaseHook, get_current_context
from airflow.sdk.exceptions import AirflowFailException

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "config" / "agent-traffic.yaml"
#: The IP-range snapshots: `agent_traffic_refresh_ranges` updates them, nightly parsing reads them.
IP_RANGES = Asset("agent_traffic_ip_ranges")
#: The Airflow Connection that turns failure e-mails on (type smtp; extra {"to": "a@x, b@y"}).
ALERTS_CONN_ID = "agent_traffic_alerts"


def config_path() -> str:
    """The pipeline's config file: `AGENT_TRAFFIC_CONFIG`, else `config/agent-traffic.yaml`."""
    return os.environ.get("AGENT_TRAFFIC_CONFIG", str(DEFAULT_CONFIG))


def staging_store():
    """The staging store of the config, with the object-store credentials of its Connections."""
    from agent_traffic.config import load_config
    from agent_traffic.ingest.storage import Store

    cfg = load_config(config_path())
    return Store(cfg.staging, store_options(cfg))


def store_options(cfg):
    """The config's object-store options overlaid with its Airflow Connections (S3, GCS, Azure).

    An `aws` Connection is resolved by the Amazon provider, as every Airflow AWS hook does:
    keys, `role_arn` (an assumed role), web identity, profiles, session tokens. Credentials of an
    assumed role last its session (one hour by default: `assume_role_kwargs` in the extra)."""
    from dataclasses import replace

    from agent_traffic.ingest.storage import StoreOptions

    options = StoreOptions.from_config(cfg.object_store)
    for conn_id in cfg.object_store.airflow_conn_ids:
        conn = BaseHook.get_connection(conn_id)
        extra = conn.extra_dejson or {}
        if conn.conn_type != "aws":
            options = options.with_connection(conn.conn_type, conn.login, conn.password, extra)
            continue
        from airflow.providers.amazon.aws.hooks.base_aws import AwsGenericHook

        creds = AwsGenericHook(aws_conn_id=conn_id, client_type="s3").get_credentials()
        options = replace(options.with_connection("aws", creds.access_key, creds.secret_key, extra),
                          token=creds.token)
    return options


def runtime():
    """The pipeline runtime for this task: config, object-store credentials, run id."""
    from agent_traffic.config import load_config
    from agent_traffic.run.runtime import Runtime

    path = config_path()
    cfg = load_config(path)
    run_id = "".join(c if c.isalnum() or c in "-_." else "_" for c in get_current_context()["run_id"])
    return Runtime(cfg, store_options(cfg), run_id, path)


def mask_keys() -> None:
    """Every key the pipeline resolves (a Connection's or an environment variable's) goes to
    Airflow's secret masker, so task logs blank it."""
    from airflow.sdk.log import mask_secret

    from agent_traffic.redact import on_register

    on_register(mask_secret)


def secret(dest):
    """Airflow Connection first (its password), then the environment variable."""
    from agent_traffic.errors import SecretMissing
    from agent_traffic.secrets import Secret, env_resolver

    mask_keys()

    if dest.secret.airflow_conn_id:
        try:
            conn = BaseHook.get_connection(dest.secret.airflow_conn_id)
        except Exception as exc:  # noqa: BLE001 - the hook raises several types for "not found"
            if not dest.secret.env:
                raise SecretMissing(
                    f"destination {dest.name!r}: Airflow Connection {dest.secret.airflow_conn_id!r} "
                    f"not found ({type(exc).__name__}); create it with the API key as its password"
                ) from None
        else:
            if conn.password:
                return Secret(conn.password)
    return env_resolver()(dest)


def connection_base_url(dest) -> str | None:
    """The base URL a destination's Airflow Connection names in its host (an `http` Connection:
    `https://webhooks.scrunchai.com`, or host + schema + port), which wins over the config's."""
    if not dest.secret.airflow_conn_id:
        return None
    try:
        conn = BaseHook.get_connection(dest.secret.airflow_conn_id)
    except Exception:  # noqa: BLE001 - no Connection: the config's base_url (or the vendor's)
        return None
    host = (conn.host or "").strip().rstrip("/")
    if not host:
        return None
    if "://" in host:
        return host
    return f"{conn.schema or 'https'}://{host}" + (f":{conn.port}" if conn.port else "")


def with_base_url(cfg, name: str, base_url: str | None):
    """The config with one destination's base URL replaced (the models are frozen: copies)."""
    if not base_url:
        return cfg
    sites = tuple(site.model_copy(update={"destinations": tuple(
        d.model_copy(update={"base_url": base_url}) if d.name == name else d for d in site.destinations)})
        for site in cfg.sites)
    return cfg.model_copy(update={"sites": sites})


def run_days() -> list[str]:
    """This run's dates (see `agent_traffic.run.steps.run_days`)."""
    from agent_traffic.run.steps import run_days as days

    ctx = get_current_context()
    params = ctx["params"]
    return [d.isoformat() for d in days(params.get("date_from"), params.get("date_to"),
                                        ctx.get("logical_date"), ctx["dag_run"].run_after)]


def task_states() -> dict[str, str]:
    """{task_id or task_id_<map index>: state} of this DAG run's task instances, from the API server."""
    ctx = get_current_context()
    ti = ctx["ti"]
    return ti.get_task_states(dag_id=ti.dag_id, run_ids=[ti.run_id]).get(ti.run_id, {})


def mapped_results(task_id: str, states: dict[str, str]) -> list[Any]:
    """The results of a mapped task's instances that succeeded in this run's current expansion.

    Pulled by map index: removed instances (a clear, a re-run whose discovery found less) keep
    their XComs and would be counted again; failed and skipped ones have none to read.
    """
    prefix = f"{task_id}_"
    indexes = sorted(int(k[len(prefix):]) for k, state in states.items()
                     if k.startswith(prefix) and k[len(prefix):].isdigit() and state == "success")
    if not indexes:
        return []
    ti = get_current_context()["ti"]
    return [r for r in ti.xcom_pull(task_ids=task_id, map_indexes=indexes) if r is not None]


def failed_tasks(states: dict[str, str], *, ignore: tuple[str, ...]) -> list[str]:
    """Task instances of this run that failed or could not run because an upstream one failed."""
    bad = [(state != "failed", k, state) for k, state in states.items()
           if state in ("failed", "upstream_failed") and re.sub(r"_\d+$", "", k) not in ignore]
    return [f"{k} ({state})" for _, k, state in sorted(bad)]  # the failed ones first: the cause


def fail_fast(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Errors that no retry can fix (a bad config, a missing key) fail the task at once."""
    from agent_traffic.errors import ConfigError, SecretMissing

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (ConfigError, SecretMissing) as exc:
            raise AirflowFailException(f"{type(exc).__name__}: {exc} (not retried: fix it, then clear the task)") from None

    return wrapper


def alert_on_failure(context: dict[str, Any]) -> None:
    """DAG failure callback: an e-mail through the `agent_traffic_alerts` Connection (type smtp,
    extra `to`), when that Connection exists; otherwise only the log line says it is off."""
    try:
        conn = BaseHook.get_connection(ALERTS_CONN_ID)
    except Exception:  # noqa: BLE001 - not configured: alerts are off
        print(f"agent-traffic: no Airflow Connection {ALERTS_CONN_ID!r}, so no failure alert is sent")
        return
    to = (conn.extra_dejson or {}).get("to")
    if not to:
        print(f"agent-traffic: Connection {ALERTS_CONN_ID!r} has no extra 'to'; no failure alert is sent")
        return
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    run = context.get("dag_run")
    SmtpNotifier(
        to=to, smtp_conn_id=ALERTS_CONN_ID, from_email=(conn.extra_dejson or {}).get("from_email"),
        subject=f"agent-traffic: run {getattr(run, 'run_id', '?')} failed",
        html_content=("<p>The agent-traffic run {{ dag_run.run_id }} failed. Its <code>report</code> task's "
                      "log says what is left and the command that sends it.</p>"),
    ).notify(context)
