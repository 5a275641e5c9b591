"""A vendor is one spec, one protocol class and one receiver handler: a vendor this test makes up
is validated by the config, delivered by `agent-traffic run` over real HTTP to the local receiver,
and given its tasks by the DAG, with no line of config, delivery or DAG code naming it."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pytest
import yaml

from agent_traffic.config import Destination, Site, parse_config
from agent_traffic.delivery.vendors import SPECS, VendorSpec, register, vendor
from agent_traffic.delivery.vendors import json_columns as jc
from agent_traffic.delivery.vendors.base import Vendor, path_with_query
from agent_traffic.delivery.vendors.json_columns import Field
from agent_traffic.devtools.samples import write_day
from agent_traffic.devtools.sandbox import Outcome, Protocol, Sandbox
from agent_traffic.errors import ConfigError
from agent_traffic.secrets import Secret
from tests.conftest import REPO
from tests.vendor_fixtures import DAY, SEQ, expected_lines

SITE_ID = "shop-1"
LINES = 600


class Echo(Vendor):
    """A made-up vendor: a JSON array of events per request, 201 on success, a bearer token."""

    success = frozenset({201})
    columns = ("path", "query", "status", "user_agent")
    separator = b","

    def fields(self, table: pa.Table, site: Site, dest: Destination) -> list[Field]:
        col = partial(jc.column, table)
        return [("path", jc.required(jc.text(path_with_query(table)))),
                ("status", jc.integer(col("status", pa.int64()))),
                ("user_agent", jc.required(jc.text(col("user_agent")))),
                ("ts_us", jc.integer(col("ts_us", pa.int64())))]

    def body(self, joined: bytes, events: int) -> tuple[bytes, str]:
        return b"[" + joined[:-1] + b"]", "application/json"

    def url(self, dest: Destination) -> str:
        return f"{dest.endpoint_base}/v2/events/{dest.site_id}"

    def auth_headers(self, secret: Secret) -> dict[str, str]:
        return {"Authorization": f"Bearer {secret.reveal()}"}

    def limits(self, dest: Destination) -> tuple[int, int]:
        return dest.max_batch_bytes - 1, dest.max_batch_events  # the brackets


ECHO = VendorSpec(name="echo", title="Echo", protocol=f"{__name__}:Echo", base_url="https://ingest.echo.invalid",
                  site_id="project slug", defaults={"ip_policy": "omit", "max_batch_events": 40,
                                                    "max_batch_bytes": 20_000},
                  parallel_deliveries=2)


def _echo_handle(content_type: str, body: bytes) -> Outcome:
    """The receiver's side: an array of complete events, else 422."""
    if content_type != "application/json":
        return Outcome(415, {"message": "application/json only"})
    events = orjson.loads(body)
    if not isinstance(events, list) or not events or not all(
            isinstance(e, dict) and {"path", "status", "user_agent", "ts_us"} <= e.keys() for e in events):
        return Outcome(422, {"message": "a non-empty array of events with path, status, user_agent, ts_us"})
    return Outcome(201, {"stored": len(events)}, tuple(events))


ECHO_HANDLER = Protocol(name="echo", route=re.compile(r"^/v2/events/(?P<site_id>[a-z0-9-]+)$"), auth="bearer",
                        max_body=64_000, handle=_echo_handle, error=lambda m: {"message": m})


@pytest.fixture
def echo() -> Iterator[VendorSpec]:
    assert "echo" not in SPECS
    register(ECHO)
    yield ECHO
    del SPECS["echo"]


def _config(base_url: str, logs: str, **dest: Any) -> dict[str, Any]:
    d = {"name": "echo-shop", "vendor": "echo", "site_id": SITE_ID, "secret": {"env": "ECHO_KEY"}, **dest}
    if base_url:
        d["base_url"] = base_url
    return {"version": 1, "staging": "staging", "sources": [{"name": "web", "url": logs, "format": "combined",
                                                             "site": "example.com"}],
            "sites": [{"name": "example.com", "destinations": [d]}],
            "delivery": {"max_attempts": 4, "backoff_base_s": 0.01, "backoff_cap_s": 0.05, "retry_after_cap_s": 0.1,
                         "timeout_s": 5, "concurrency": 2}}


def test_the_config_knows_a_registered_vendor_by_its_spec(tmp_path: Path, echo: VendorSpec) -> None:
    cfg = parse_config(_config("", "l/{date:%Y}/*"), base_dir=tmp_path)
    d = cfg.destination("echo-shop")
    assert (d.max_batch_events, d.max_batch_bytes, d.ip_policy) == (40, 20_000, "omit")
    assert d.endpoint_base == "https://ingest.echo.invalid" and vendor("echo").url(d).endswith("/v2/events/shop-1")
    for extra, message in [({"max_age_hours": 5}, "`max_age_hours` does not apply to echo (Echo keeps each "
                            "event's own timestamp)"),
                           ({"rate_limit_per_s": 5}, "`rate_limit_per_s` does not apply to echo"),
                           ({"eligible_user_agents": ["x"]}, "only HitKeep refuses agents it does not know"),
                           ({"site_id": None}, "`site_id` is required: the echo project slug"),
                           ({"vendor": "ecko"}, "Input should be 'scrunch', 'hitkeep', 'knownagents' or 'echo' "
                            "(did you mean 'echo'?)")]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            parse_config(_config("", "l/{date:%Y}/*", **extra), base_dir=tmp_path)


def test_an_unregistered_vendor_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape("vendor: Input should be 'scrunch', 'hitkeep' or 'knownagents'")):
        parse_config(_config("", "l/{date:%Y}/*"), base_dir=tmp_path)


def test_agent_traffic_run_delivers_to_a_registered_vendor_over_http(
    tmp_path: Path, echo: VendorSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agent_traffic.cli import main

    write_day(tmp_path / "logs", DAY, lines=LINES, files=1, tag="e")
    key = "echo-key-" + "k" * 16
    monkeypatch.setenv("ECHO_KEY", key)
    with Sandbox(api_keys=[key], seed=3) as sb:
        sb.register_protocol(ECHO_HANDLER)
        config = tmp_path / "c.yaml"
        config.write_text(yaml.safe_dump(_config(sb.url, str(tmp_path / "logs" / "{date:%Y/%m/%d}" / "*.log.gz"))))
        code = main(["run", "--config", str(config), "--date", str(DAY), "--quiet", "--json", str(tmp_path / "s.json")])
        got = Counter(SEQ.search(e["path"]).group(1) for e in sb.accepted("echo", SITE_ID))
        requests = sb.requests_seen["echo"]
    summary = json.loads((tmp_path / "s.json").read_text())
    assert code == 0 and summary["ok"], summary["problems"]
    ai = {x.seq for x in expected_lines("e", LINES) if x.is_ai}
    assert ai and set(got) == ai and max(got.values()) == 1
    assert requests == {"201": -(-len(ai) // ECHO.defaults["max_batch_events"])}
    (row,) = [d for d in summary["destinations"] if d["destination"] == "echo-shop"]
    assert row["delivered"] == len(ai)


@pytest.mark.airflow
def test_the_dag_gives_a_registered_vendor_its_tasks(airflow_home: Path, echo: VendorSpec) -> None:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags" / "agent_traffic_nightly.py"))
    assert bag.import_errors == {}
    dag = bag.get_dag("agent_traffic_nightly")
    assert dag.get_task("plan_echo")
    deliver = dag.get_task("deliver_echo")
    assert deliver.pool == "agent_traffic_echo" and deliver.max_active_tis_per_dagrun == 2
