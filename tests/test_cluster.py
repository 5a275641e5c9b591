"""The nightly DAG on the layout users run: the compose file's Airflow services as processes
(api-server, scheduler, dag-processor, triggerer, two Celery workers on hostnames of their own)
on PostgreSQL and Redis, an S3 server and the sandbox receiver, `config/compose.yaml` as it is.
Runs are triggered by the scheduler, the REST API, the command line and a backfill; every
assertion is against what the receiver got and what the run left in the staging store. The logs
are messy where users' are: one object carries hostile content in every field and lines no parser
can take, and one grows between runs.

`make cluster-test` runs it (CI too); about 20 minutes on two cores. The scenarios build on each
other, in order.
"""

from __future__ import annotations

import gzip
import json
import re
import socketserver
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent_traffic.devtools.cluster import REPO, Cluster
from agent_traffic.devtools.samples import combined_lines

pytestmark = pytest.mark.cluster

DAG = "agent_traffic_nightly"
SITE_ID = "01JDEM0SANDB0X0000000000AA"  # the compose file's default SCRUNCH_SITE_ID_EXAMPLE
NEW_SITE_ID = "01JDEM0SANDB0X0000000000BB"
TODAY = datetime.now(UTC).date()
SEQ = re.compile(r"seq=([A-Za-z0-9-]+)")


class SmtpSink(socketserver.ThreadingTCPServer):
    """Just enough SMTP on loopback to receive the failure alerts."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        self.messages: list[str] = []
        super().__init__(("127.0.0.1", 0), _SmtpHandler)


class _SmtpHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(b"220 sink\r\n")
        while line := self.rfile.readline():
            cmd = line.strip().upper()
            if cmd.startswith((b"EHLO", b"HELO")):
                self.wfile.write(b"250 sink\r\n")
            elif cmd == b"DATA":
                self.wfile.write(b"354 end with .\r\n")
                body = []
                while (part := self.rfile.readline()) not in (b".\r\n", b""):
                    body.append(part.decode(errors="replace"))
                self.server.messages.append("".join(body))  # type: ignore[attr-defined]
                self.wfile.write(b"250 queued\r\n")
            elif cmd == b"QUIT":
                self.wfile.write(b"221 bye\r\n")
                return
            else:
                self.wfile.write(b"250 ok\r\n")


@pytest.fixture(scope="module")
def smtp() -> Iterator[SmtpSink]:
    with SmtpSink() as sink:
        threading.Thread(target=sink.serve_forever, daemon=True).start()
        yield sink
        sink.shutdown()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, smtp: SmtpSink) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("cluster")
    config = root / "compose.yaml"  # config/compose.yaml as it is; scenario 7 adds a destination
    config.write_bytes((REPO / "config" / "compose.yaml").read_bytes())
    c = Cluster(root, config=config)
    c.env["AIRFLOW_CONN_AGENT_TRAFFIC_ALERTS"] = json.dumps({
        "conn_type": "smtp", "host": "127.0.0.1", "port": smtp.server_address[1],
        "extra": {"to": "ops@example.com", "from_email": "agent-traffic@example.com",
                  "disable_tls": True, "disable_ssl": True}})
    with c:
        c.wait_dag(DAG)
        yield c
        print(f"cluster logs: {root}/logs")


# ------------------------------------------------------------------------------------------------
# helpers


def ai_seqs(lines: list[str]) -> set[str]:
    """The seqs of the lines the catalog calls AI: what the receiver must get."""
    from agent_traffic.annotate.catalog import load_catalog
    from agent_traffic.annotate.classify import Classifier

    clf = Classifier(load_catalog())
    return {m.group(1) for line in lines if (m := SEQ.search(line)) and clf.classify(line.rsplit('"', 2)[-2]).is_ai}


def upload(c: Cluster, day: date, *, objects: int = 2, lines: int = 800) -> set[str]:
    """Sample combined logs for the day in the logs bucket; returns the AI events' seqs."""
    s3 = c.s3_client()
    want = set()
    for i in range(objects):
        body = list(combined_lines(day, lines, seed=i + day.toordinal(), tag=f"{day:%m%d}o{i}"))
        s3.put_object(Bucket="access-logs", Key=f"example.com/{day:%Y/%m/%d}/access-{i}.log.gz",
                      Body=gzip.compress("".join(line + "\n" for line in body).encode()))
        want |= ai_seqs(body)
    assert want
    return want


AI_UA = "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; ClaudeBot/1.0; +claudebot@anthropic.com)"
HUMAN_UA = "Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0"


def hostile_object(day: date, tag: str) -> tuple[bytes, set[str], dict[str, int]]:
    """A log of human lines with, between them, AI requests carrying hostile content in every field
    (delivered, each once) and lines no parser can take (quarantined with their reason, or skipped
    when blank). Returns the object's bytes, the AI events' seqs and the junk {reason: lines}."""
    t = f"{day:%d/%b/%Y}"
    lines = [f'198.51.100.{i + 1} - - [{t}:06:00:{i:02d} +0000] "GET /docs/{i} HTTP/1.1" 200 {100 + i} "-" "{HUMAN_UA}"'
             .encode() for i in range(30)]
    ai = {
        "1": b'203.0.113.7 - - [%s:12:00:01 +0000] "GET /a\\"b?q=<script>alert(1)</script>&seq=%s-1 HTTP/1.1" 200 5 "javascript:alert(1)" "%s"',
        "2": b'203.0.113.7 - - [%s:12:00:02 +0000] "GET /caf\\xC3\\xA9?seq=%s-2 HTTP/1.1" 200 5 "-" "%s"',
        "3": b'203.0.113.7 - - [%s:12:00:03 +0000] "PROPFIND /dav?seq=%s-3 HTTP/1.1" 207 5 "-" "%s"',
        "4": b'2001:db8::7 - - [%s:12:00:04 +0200] "get /v6?seq=%s-4 HTTP/2.0" 200 - "-" "%s"',
        "5": b'203.0.113.7 - - [%s:12:00:05 +0000] "GET /esc?seq=%s-5 HTTP/1.1" 200 5 "\x1b[31mred" "%s \x1b]0;title\x07"',
        "6": b'203.0.113.7 - - [%s:12:00:06 +0000] "GET /long?x=' + b"A" * 4000 + b'&seq=%s-6 HTTP/1.1" 200 5 "-" "%s"',
        "7": b'203.0.113.7 - - [%s:12:00:07 +0000] "GET /crlf?seq=%s-7 HTTP/1.1" 200 5 "-" "%s"\r',
        "8": b'203.0.113.7 - - [%s:12:00:08 +0000] "GET /uni?seq=%s-8 HTTP/1.1" 200 5 "https://\xe4\xbe\x8b\xe3\x81\x88.jp/" "%s"',
    }
    junk = {
        "does not match format combined": [
            b'203.0.113.9 - - [%s:12:01:00 +0000] "GET /half' % t.encode(),
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        ],
        "timestamp out of range (before 1900 or after 2199)": [
            b'203.0.113.9 - - [21/Nov/1800:12:01:01 +0000] "GET /old HTTP/1.1" 200 5 "-" "curl/8"'],
        "status not in 100-599": [
            b'203.0.113.9 - - [%s:12:01:02 +0000] "GET /s HTTP/1.1" 999 5 "-" "curl/8"' % t.encode()],
        "line longer than 65536 bytes": [
            b'203.0.113.9 - - [%s:12:01:03 +0000] "GET /' % t.encode() + b"L" * 70_000 + b' HTTP/1.1" 200 5 "-" "x"'],
    }
    odd = [  # parsed as human events: bytes repaired, a NUL kept
        b'203.0.113.9 - - [%s:12:02:00 +0000] "GET /bad HTTP/1.1" 200 5 "-" "Mozilla \xff\xfe"' % t.encode(),
        b'203.0.113.9 - - [%s:12:02:01 +0000] "GET /n\x00ul HTTP/1.1" 200 5 "-" "curl/8"' % t.encode(),
    ]
    out = list(lines)
    for v in ai.values():
        out.append(v % (t.encode(), tag.encode(), AI_UA.encode()))
        out.append(b"")  # blank lines between
    for group in junk.values():
        out.extend(group)
    out.extend(odd)
    return b"\n".join(out) + b"\n", {f"{tag}-{k}" for k in ai}, {r: len(v) for r, v in junk.items()}


def upload_hostile(c: Cluster, day: date) -> tuple[set[str], dict[str, int]]:
    """The hostile object for the day in the logs bucket: (AI seqs, junk lines by reason)."""
    data, want, junk = hostile_object(day, f"{day:%m%d}oh")  # of_day: the day's seqs start "MMDDo"
    c.s3_client().put_object(Bucket="access-logs", Key=f"example.com/{day:%Y/%m/%d}/hostile.log.gz",
                             Body=gzip.compress(data))
    return want, junk


def received(c: Cluster, site_id: str = SITE_ID) -> Counter[str]:
    return Counter(SEQ.search(e["url"]).group(1) for e in c.sandbox.accepted("scrunch", site_id))


def of_day(got: Counter[str], day: date) -> Counter[str]:
    return Counter({s: n for s, n in got.items() if s.startswith(f"{day:%m%d}o")})


def trigger(c: Cluster, *, logical_date: date | None = None, conf: dict[str, Any] | None = None) -> str:
    body = {"logical_date": f"{logical_date}T00:00:00Z" if logical_date else None, "conf": conf or {}}
    return c.api("POST", f"/api/v2/dags/{DAG}/dagRuns", body)["dag_run_id"]


def summary(c: Cluster, run_id: str) -> dict[str, Any]:
    key = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in run_id)
    obj = c.s3_client().get_object(Bucket="agent-traffic", Key=f"staging/_runs/{key}.json")
    return json.loads(obj["Body"].read())


def scrunch_row(s: dict[str, Any], name: str = "scrunch-example") -> dict[str, Any]:
    (row,) = [d for d in s["destinations"] if d["destination"] == name]
    return row


def wait_for(what: str, check, timeout: float = 300, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(every)
    raise TimeoutError(what)


# ------------------------------------------------------------------------------------------------
# scenarios, in order


YESTERDAY, D2, D3, D4, D5, D6 = (TODAY - timedelta(days=n) for n in (1, 3, 4, 5, 6, 8))
WANT: dict[date, set[str]] = {}


def test_1_the_scheduled_run_processes_yesterday(cluster: Cluster) -> None:
    """Beside two clean objects, one with hostile content in every field and lines no parser can
    take: every AI event arrives once, every bad line is quarantined with its reason."""
    hostile, junk = upload_hostile(cluster, YESTERDAY)
    WANT[YESTERDAY] = upload(cluster, YESTERDAY) | hostile
    cluster.airflow("dags", "unpause", DAG)  # catchup off: the scheduler runs the last complete day
    run = wait_for("a scheduled run", lambda: next(
        (r for r in cluster.runs(DAG) if r["run_type"] == "scheduled"), None), timeout=180, every=2)
    assert cluster.wait_run(DAG, run["dag_run_id"]) == "success"
    got = of_day(received(cluster), YESTERDAY)
    assert set(got) == WANT[YESTERDAY] and max(got.values()) == 1
    s = summary(cluster, run["dag_run_id"])
    assert s["ok"] and s["dates"] == [str(YESTERDAY)] and scrunch_row(s)["delivered"] == len(got)
    lines = s["lines"]
    assert lines["balanced"] and lines["quarantine_reasons"] == junk and lines["quarantined"] == sum(junk.values())
    assert lines["skipped"] == {"blank": len(hostile)} and lines["invalid_utf8_repaired"] == 2, lines


def test_2_a_manual_run_processes_the_day_its_logical_date_names(cluster: Cluster) -> None:
    WANT[D2], WANT[D3] = upload(cluster, D2), upload(cluster, D3)
    cluster.airflow("dags", "unpause", DAG)  # done by the first scenario; again when run alone
    rest = trigger(cluster, logical_date=D2)  # the REST API (the UI's trigger form posts this)
    assert cluster.wait_run(DAG, rest) == "success"
    cli = f"cli-{D3}"
    cluster.airflow("dags", "trigger", DAG, "-l", f"{D3}T00:00:00+00:00", "-r", cli)
    assert cluster.wait_run(DAG, cli) == "success"
    got = received(cluster)
    for day, run_id in ((D2, rest), (D3, cli)):
        assert set(of_day(got, day)) == WANT[day] and max(of_day(got, day).values()) == 1, day
        assert summary(cluster, run_id)["dates"] == [str(day)]
    hosts = Counter(ti["hostname"] for r in cluster.runs(DAG) for ti in cluster.task_instances(DAG, r["dag_run_id"])
                    if ti["task_id"] in ("parse_and_stage", "deliver_scrunch") and ti["hostname"])
    assert set(hosts) == {"worker-a", "worker-b"}, hosts  # mapped tasks spread over both workers


def test_3_a_rerun_with_nothing_new_sends_nothing(cluster: Cluster) -> None:
    before = received(cluster)
    run_id = trigger(cluster, conf={"date_from": str(YESTERDAY)})
    assert cluster.wait_run(DAG, run_id) == "success"
    assert received(cluster) == before
    s = summary(cluster, run_id)
    assert s["ok"] and s["objects"]["processed"] == 0 and s["this_run"].get("delivered_events", 0) == 0
    assert scrunch_row(s)["delivered"] == len(WANT[YESTERDAY]) and scrunch_row(s)["pending"] == 0


def test_4_a_cleared_run_counts_only_what_it_did_again(cluster: Cluster) -> None:
    """Clearing a run leaves its earlier parse and delivery instances `removed`, with their
    XComs: the summary must not count them."""
    run_id = next(r["dag_run_id"] for r in cluster.runs(DAG) if r["run_type"] == "scheduled")
    before = received(cluster)
    cluster.api("POST", f"/api/v2/dags/{DAG}/clearTaskInstances",
                {"dag_run_id": run_id, "dry_run": False, "only_failed": False, "reset_dag_runs": True})
    wait_for("the cleared run to start", lambda: cluster.api(
        "GET", f"/api/v2/dags/{DAG}/dagRuns/{run_id}")["state"] != "success", timeout=60)
    assert cluster.wait_run(DAG, run_id) == "success"
    s = summary(cluster, run_id)
    assert s["objects"]["processed"] == 0 and s["this_run"].get("requests", 0) == 0, s["objects"]
    assert received(cluster) == before
    states = Counter(ti["state"] for ti in cluster.task_instances(DAG, run_id) if ti["task_id"] == "parse_and_stage")
    assert states.get("removed") or states.get("skipped"), states
    assert "XCom not found" not in cluster.task_logs(DAG, run_id, "report")


def test_5_a_log_that_grows_delivers_only_its_new_lines(cluster: Cluster) -> None:
    """The server appended to yesterday's first object (a new version of the same key): the next
    run parses that object again and sends only the AI events of its new lines, each once."""
    s3 = cluster.s3_client()
    key = f"example.com/{YESTERDAY:%Y/%m/%d}/access-0.log.gz"
    old = gzip.decompress(s3.get_object(Bucket="access-logs", Key=key)["Body"].read())
    more = list(combined_lines(YESTERDAY, 60, seed=5, tag=f"{YESTERDAY:%m%d}o0g"))
    new = ai_seqs(more)
    assert new
    s3.put_object(Bucket="access-logs", Key=key, Body=gzip.compress(old + "".join(m + "\n" for m in more).encode()))
    before = received(cluster)
    run_id = trigger(cluster, conf={"date_from": str(YESTERDAY)})
    assert cluster.wait_run(DAG, run_id) == "success"
    got = received(cluster)
    assert got - before == Counter(new)  # the new AI lines, once each; nothing old again
    WANT[YESTERDAY] |= new
    s = summary(cluster, run_id)
    assert s["ok"] and s["objects"]["processed"] == 1 and s["this_run"]["delivered_events"] == len(new)
    assert scrunch_row(s)["delivered"] == len(WANT[YESTERDAY]) and scrunch_row(s)["pending"] == 0


def test_6_pending_events_fail_the_run_and_the_next_run_sends_them(cluster: Cluster, smtp: SmtpSink) -> None:
    WANT[D4] = upload(cluster, D4)
    cluster.sandbox.set_fault_rates({"401": 1.0})  # a revoked key: the destination stops, chunks wait
    try:
        first = trigger(cluster, logical_date=D4)
        assert cluster.wait_run(DAG, first) == "failed"
    finally:
        cluster.sandbox.set_fault_rates({})
    s = summary(cluster, first)
    row = scrunch_row(s)  # the chunks that got the 401 failed, the rest wait: none delivered
    assert not s["ok"] and row["failed"] + row["pending"] == len(WANT[D4]) and row["delivered"] == 0
    assert not of_day(received(cluster), D4)
    command = f'airflow dags trigger agent_traffic_nightly -c \'{{"date_from": "{D4}", "date_to": "{D4}"}}\''
    told = [f"{row['failed']} event(s) failed: HTTP 401"] * bool(row["failed"]) + \
        [f"{row['pending']} event(s) pending, not delivered"] * bool(row["pending"])
    for what in told:
        assert any(what in p and p.endswith(f"send them with: {command}") for p in s["problems"]), s["problems"]
    assert "status    FAILED" in cluster.task_logs(DAG, first, "report")
    wait_for("the failure alert", lambda: any(f"run {first} failed" in m for m in smtp.messages), timeout=120)
    again = trigger(cluster, conf={"date_from": str(D4), "date_to": str(D4)})  # the command above
    assert cluster.wait_run(DAG, again) == "success"
    got = of_day(received(cluster), D4)
    assert set(got) == WANT[D4] and max(got.values()) == 1
    assert summary(cluster, again)["ok"]


def test_7_a_worker_killed_mid_delivery_loses_nothing(cluster: Cluster) -> None:
    WANT[D5] = upload(cluster, D5, objects=12, lines=500)  # a chunk per object
    cluster.sandbox.set_fault_rates({"slow:3": 1.0})
    try:
        run_id = trigger(cluster, logical_date=D5)

        def delivering() -> dict[str, Any] | None:
            if not of_day(received(cluster), D5):
                return None
            return next((ti for ti in cluster.task_instances(DAG, run_id)
                         if ti["task_id"] == "deliver_scrunch" and ti["state"] == "running"), None)

        ti = wait_for("delivery under way", delivering, timeout=600, every=0.3)
        victim = ti["hostname"]
        cluster.kill_worker(victim)
        sent_before_kill = sum(of_day(received(cluster), D5).values())
    finally:
        cluster.sandbox.set_fault_rates({})
    assert sent_before_kill < len(WANT[D5]), "killed too late: delivery had finished"
    state = cluster.wait_run(DAG, run_id, timeout=900)
    cluster.start_worker(victim)
    tries = [t for t in cluster.task_instances(DAG, run_id) if t["task_id"] == "deliver_scrunch"]
    assert any(t["try_number"] > 1 and t["hostname"] != victim for t in tries), tries  # retried elsewhere
    s = summary(cluster, run_id)
    got = of_day(received(cluster), D5)
    if state == "failed":  # then it says exactly what is left, and the next run sends it
        assert scrunch_row(s)["pending"] == len(WANT[D5] - set(got)) > 0
        rerun = trigger(cluster, conf={"date_from": str(D5)})
        assert cluster.wait_run(DAG, rerun) == "success"
        got = of_day(received(cluster), D5)
    assert set(got) == WANT[D5]  # nothing lost
    per_chunk = max(len(WANT[D5]) // 12 * 2, 1)
    duplicates = sum(got.values()) - len(got)
    assert duplicates <= 4 * per_chunk  # at most the requests in flight when the worker died


def test_8_a_destination_added_later_gets_its_history_from_a_backfill(cluster: Cluster) -> None:
    cfg_path = Path(cluster.env["AGENT_TRAFFIC_CONFIG"])
    cfg = yaml.safe_load(cfg_path.read_text())
    first = cfg["sites"][0]["destinations"][0]
    cfg["sites"][0]["destinations"].append({**first, "name": "scrunch-history", "site_id": NEW_SITE_ID})
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    before = received(cluster)
    cluster.airflow("backfill", "create", "--dag-id", DAG, "--from-date", str(D3), "--to-date", str(D2),
                    "--reprocess-behavior", "completed", "--max-active-runs", "1")
    runs = wait_for("the backfill's runs", lambda: [r for r in cluster.runs(DAG) if r["run_type"] == "backfill"]
                    if len([r for r in cluster.runs(DAG) if r["run_type"] == "backfill"]) >= 2 else None,
                    timeout=120, every=2)
    for r in runs:
        assert cluster.wait_run(DAG, r["dag_run_id"]) == "success", r
    got = received(cluster, NEW_SITE_ID)
    assert D3 - timedelta(days=1) == D4  # each run also plans its source's lookback day (1)
    for day in (D4, D3, D2):  # every day, each event once, including days whose runs existed
        assert set(of_day(got, day)) == WANT[day] and max(of_day(got, day).values()) == 1, day
    assert set(got) == WANT[D4] | WANT[D3] | WANT[D2]
    assert received(cluster) == before  # the first destination had them all already


def test_9_a_discovery_that_fails_fails_the_run(cluster: Cluster) -> None:
    s3 = cluster.s3_client()
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="access-logs").get("Contents", [])]
    for key in keys:
        s3.delete_object(Bucket="access-logs", Key=key)
    s3.delete_bucket(Bucket="access-logs")  # the logs bucket is gone (or the key lost its grant)
    try:
        run_id = trigger(cluster, logical_date=D6)
        assert cluster.wait_run(DAG, run_id, timeout=900) == "failed"
    finally:
        s3.create_bucket(Bucket="access-logs")
    states = {t["task_id"]: t["state"] for t in cluster.task_instances(DAG, run_id) if t["map_index"] == -1}
    assert states["discover"] == "failed" and states["report"] == "failed", states
    s = summary(cluster, run_id)
    assert not s["ok"] and any(p.startswith("task(s) failed or did not run: discover (failed), ")
                               for p in s["problems"]), s["problems"]
    assert "bucket s3://access-logs does not exist" in cluster.task_logs(DAG, run_id, "discover")
