"""Delivery leases: two workers never send one chunk at the same time, and a dead one's chunks are
taken over. Real local store, real planner, real HTTP to the local receiver.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from agent_traffic.delivery.deliver import deliver_group
from agent_traffic.delivery.leases import Leases
from agent_traffic.delivery.ledger import Ledger
from agent_traffic.delivery.plan import ChunkGroup, plan_deliveries
from agent_traffic.devtools.samples import write_day
from agent_traffic.ingest.storage import Store
from agent_traffic.run.runner import run
from agent_traffic.run.runtime import Runtime
from agent_traffic.run.steps import discover_objects, process_object
from agent_traffic.secrets import Secret, env_resolver
from tests.conftest import write_config

DAY = date(2026, 11, 21)
SITE_ID = "01JDEM0SANDB0X0000000000AA"


@pytest.fixture
def planned(tmp_path: Path, sandbox) -> tuple[Runtime, ChunkGroup]:
    """A day of sample logs staged and planned into several Scrunch chunks (one group)."""
    logs = tmp_path / "logs"
    write_day(logs, DAY, lines=1500, files=1, tag="l")
    cfg = write_config(tmp_path / "cfg.yaml", staging=str(tmp_path / "staging"),
                       source_url=str(logs) + "/{date:%Y/%m/%d}/*.log.gz", base_url=sandbox.url,
                       delivery={"concurrency": 2}, extra_dest={"max_batch_events": 40})
    rt = Runtime.load(str(cfg), "plan")
    for ref in discover_objects(rt, [DAY]).objects:
        assert process_object(rt, ref).status == "staged"
    (group,) = plan_deliveries(rt.cfg, rt.store, [DAY.isoformat()]).groups
    assert len(group.chunk_ids) >= 4
    return rt, group


@pytest.fixture
def live_pid():
    """The pid of a live process on this machine: another worker whose lease must be respected."""
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"]) as proc:
        try:
            yield proc.pid
        finally:
            proc.kill()


def _prefix(group: ChunkGroup) -> str:
    return f"_delivery/{group.destination}/site={group.site}/date={group.date}"  # the stored layout


def _seqs_of(store: Store, group: ChunkGroup, cid: str) -> set[str]:
    ch = Ledger.of(store, group).find_chunk(cid)
    return {json.loads(line)["url"].rsplit("seq=", 1)[1] for line in ch.body.splitlines()}


def _received(sandbox) -> Counter[str]:
    return Counter(e["url"].rsplit("seq=", 1)[1] for e in sandbox.accepted("scrunch", SITE_ID))


def _lease(store: Store, group: ChunkGroup, cid: str, *, gen: int = 0, host: str = "worker-2", pid: int = 4242,
           expires_in: timedelta = timedelta(minutes=10)) -> str:
    """Another worker's lease on a chunk, as its `Leases.claim` writes it."""
    now = datetime.now(UTC)
    key = Ledger.of(store, group).lease_key(cid, gen)
    assert store.create_exclusive(key, orjson.dumps({
        "chunk_id": cid, "gen": gen, "run_id": "other-run", "host": host, "pid": pid,
        "claimed_at": now.isoformat(timespec="seconds"),
        "expires_at": (now + expires_in).isoformat(timespec="seconds")}))
    return key


def test_a_chunk_leased_by_a_live_worker_is_left_to_it_and_counted_pending(planned, sandbox, api_key,
                                                                           live_pid) -> None:
    rt, group = planned
    cid = group.chunk_ids[1]
    theirs = _seqs_of(rt.store, group, cid)
    key = _lease(rt.store, group, cid, host=socket.gethostname(), pid=live_pid)  # it sends them
    s = run(rt, DAY, DAY, resolver=env_resolver({"SCRUNCH_API_KEY_EXAMPLE": api_key}), progress=lambda _m: None)
    got = _received(sandbox)
    assert not theirs & set(got), "a chunk leased by another live worker was sent"
    assert got and max(got.values()) == 1
    dest = s["destinations"][0]
    assert dest["pending"] == len(theirs) and dest["delivered"] == sum(got.values()) and dest["balanced"]
    assert s["this_run"]["leased_elsewhere_events"] == len(theirs)
    assert s["ok"], s["problems"]  # not a problem: the other worker sends them
    assert any("another worker" in n for n in s["notes"])
    assert rt.store.list(f"{_prefix(group)}/leases/") == [key]  # theirs stays; ours were released


def test_a_lease_held_on_another_host_leaves_the_run_failed_with_the_command_that_sends_it(
        planned, sandbox, api_key) -> None:
    """A holder on another host may be dead (a lost Celery worker): its events are not delivered,
    so the run is not OK, and the summary says how many are left and how to send them."""
    rt, group = planned
    cid = group.chunk_ids[1]
    theirs = _seqs_of(rt.store, group, cid)
    _lease(rt.store, group, cid)  # worker-2: alive or not, nobody here can tell
    s = run(rt, DAY, DAY, resolver=env_resolver({"SCRUNCH_API_KEY_EXAMPLE": api_key}), progress=lambda _m: None,
            resend_command="agent-traffic run --config c.yaml --date 2026-11-21")
    assert not theirs & set(_received(sandbox))
    dest = s["destinations"][0]
    assert dest["pending"] == len(theirs) and dest["balanced"]
    assert not s["ok"]
    assert any(f"{len(theirs)} event(s) pending, not delivered; send them with: agent-traffic run --config c.yaml "
               "--date 2026-11-21" in p for p in s["problems"]), s["problems"]


def test_group_result_line_says_pending_and_who_has_it(planned, sandbox, api_key, live_pid) -> None:
    rt, group = planned
    cid = group.chunk_ids[0]
    n = len(_seqs_of(rt.store, group, cid))
    _lease(rt.store, group, cid, host=socket.gethostname(), pid=live_pid)
    r = deliver_group(rt.cfg, rt.store, group, Secret(api_key), run_id="w1")
    assert r.chunks_leased_elsewhere == 1 and r.leased_elsewhere_events == n
    assert r.chunks_sent == len(group.chunk_ids) - 1 and r.pending_events == 0
    assert f"{n} pending ({n} being sent by another worker)" in r.line()


def test_a_later_try_of_the_same_task_takes_over_its_leases_on_any_host(planned, sandbox, api_key) -> None:
    """Airflow retries a task whose worker died on another machine: the retry (same run, task and
    map index, a higher try) takes over the dead try's leases at once; another task's are kept."""
    from agent_traffic.delivery.leases import LeaseOwner

    rt, group = planned
    dead, other = group.chunk_ids[0], group.chunk_ids[1]
    owner = LeaseOwner("scheduled__2026-11-21", "deliver_scrunch[0]", 2)
    for cid, task in ((dead, owner.task), (other, "deliver_scrunch[1]")):
        now = datetime.now(UTC)
        assert rt.store.create_exclusive(Ledger.of(rt.store, group).lease_key(cid, 0), orjson.dumps({
            "gen": 0, "run_id": "x", "host": "worker-gone", "pid": 7, "owner_run": owner.run_id,
            "owner_task": task, "owner_try": 1, "expires_at": (now + timedelta(minutes=16)).isoformat()}))
    r = deliver_group(rt.cfg, rt.store, group, Secret(api_key), run_id="x", lease_owner=owner)
    assert r.chunks_sent == len(group.chunk_ids) - 1
    assert r.pending_events == len(_seqs_of(rt.store, group, other)) and r.leased_elsewhere_events == 0
    assert _seqs_of(rt.store, group, dead) <= set(_received(sandbox))
    assert rt.store.exists(f"{_prefix(group)}/acks/{dead}.json")
    assert not rt.store.exists(f"{_prefix(group)}/acks/{other}.json")


def test_an_expired_lease_is_taken_over(planned, sandbox, api_key) -> None:
    rt, group = planned
    cid = group.chunk_ids[2]
    theirs = _seqs_of(rt.store, group, cid)
    _lease(rt.store, group, cid, expires_in=timedelta(seconds=-5))  # its worker died 5 s ago
    r = deliver_group(rt.cfg, rt.store, group, Secret(api_key), run_id="w1")
    assert r.chunks_sent == len(group.chunk_ids) and r.leased_elsewhere_events == 0
    got = _received(sandbox)
    assert theirs <= set(got) and max(got.values()) == 1
    assert rt.store.exists(f"{_prefix(group)}/acks/{cid}.json")
    assert rt.store.list(f"{_prefix(group)}/leases/") == []  # the dead lease and our gen-1 one are gone


def test_a_lease_of_a_killed_process_on_this_machine_is_taken_over_at_once(planned, sandbox, api_key) -> None:
    rt, group = planned
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # its pid now names no process: a command-line run killed with SIGKILL
    cid = group.chunk_ids[0]
    theirs = _seqs_of(rt.store, group, cid)
    _lease(rt.store, group, cid, host=socket.gethostname(), pid=proc.pid)  # not expired for 10 min
    r = deliver_group(rt.cfg, rt.store, group, Secret(api_key), run_id="w1")
    assert r.chunks_sent == len(group.chunk_ids) and r.chunks_leased_elsewhere == 0
    got = _received(sandbox)
    assert theirs <= set(got) and max(got.values()) == 1
    assert rt.store.list(f"{_prefix(group)}/leases/") == []


def test_a_lease_of_a_live_process_on_this_machine_is_respected(planned, sandbox, api_key) -> None:
    rt, group = planned
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as proc:
        try:
            cid = group.chunk_ids[0]
            _lease(rt.store, group, cid, host=socket.gethostname(), pid=proc.pid)
            r = deliver_group(rt.cfg, rt.store, group, Secret(api_key), run_id="w1")
        finally:
            proc.kill()
    assert r.chunks_leased_elsewhere == 1 and r.chunks_sent == len(group.chunk_ids) - 1


def test_a_chunk_finished_between_first_look_and_claim_is_not_resent(planned, sandbox, api_key) -> None:
    rt, group = planned
    cid = group.chunk_ids[0]
    key = Ledger.of(rt.store, group).lease_key(cid, 0)
    theirs = _seqs_of(rt.store, group, cid)
    other = Store(rt.store.root_url)  # the other worker's own connection to the same store

    class Racing(Store):
        """Our worker's store: just before our claim of `cid`, the other worker sends that chunk
        (all of it, through the real deliver_group: claim, send, ack, release)."""

        raced = False

        def create_exclusive(self, k: str, data: bytes, **kw: bool) -> bool:
            if k == key and not self.raced:
                self.raced = True
                only = ChunkGroup(group.destination, group.vendor, group.site, group.date, (cid,), 0)
                w2 = deliver_group(rt.cfg, other, only, Secret(api_key), run_id="w2")
                assert w2.chunks_sent == 1
            return super().create_exclusive(k, data, **kw)

    ours = Racing(rt.store.root_url)
    r = deliver_group(rt.cfg, ours, group, Secret(api_key), run_id="w1")
    assert ours.raced
    assert r.chunks_already_acked == 1 and r.chunks_sent == len(group.chunk_ids) - 1
    got = _received(sandbox)
    assert theirs <= set(got) and max(got.values()) == 1, "the chunk was sent twice"
    assert rt.store.get_json(f"{_prefix(group)}/acks/{cid}.json")["run_id"] == "w2"
    assert rt.store.list(f"{_prefix(group)}/leases/") == []


def test_two_workers_racing_for_a_chunk_one_wins(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "st"))
    a = Leases(Ledger(store, "d", "s", "2026-11-21"), "run-a", 60)
    b = Leases(Ledger(store, "d", "s", "2026-11-21"), "run-b", 60)
    assert a.claim("c1") and not b.claim("c1")
    a.release("c1")
    assert b.claim("c1") and not a.claim("c1")
    b.release("c1")
    assert store.list("_delivery/") == []


def test_lease_outlives_the_longest_send(tmp_path: Path) -> None:
    from agent_traffic.config import DeliveryPolicy

    p = DeliveryPolicy()
    assert p.longest_send_s == 6 * (30 + 120) and p.lease_s == p.longest_send_s + 60
    assert DeliveryPolicy(lease_seconds=2000).lease_s == 2000
    with pytest.raises(ValueError, match="must exceed the longest a send may take"):
        DeliveryPolicy(lease_seconds=60)


def test_a_claim_whose_answer_was_lost_finds_its_own_lease(tmp_path: Path) -> None:
    class LostAnswer(Store):
        """S3 through a flaky network: the conditional PUT succeeds, its answer is lost, the
        client retries it and gets 412 (the object exists now): create_exclusive says False."""

        def create_exclusive(self, key: str, data: bytes, **kw: bool) -> bool:
            super().create_exclusive(key, data, **kw)
            return False

    store = LostAnswer(str(tmp_path / "st"))
    mine = Leases(Ledger(store, "d", "s", "2026-11-21"), "run-a", 60)
    assert mine.claim("c1")  # recognised by its token, not left stuck until it expires
    other = Leases(Ledger(Store(str(tmp_path / "st")), "d", "s", "2026-11-21"), "run-b", 60)
    assert not other.claim("c1")
    mine.release("c1")
    assert store.list("_delivery/") == []


def _known_agents_planned(tmp_path: Path, url: str, *, lines: int, files: int, batch: int,
                          chunks_per_group: int = 20) -> tuple[Runtime, list[ChunkGroup]]:
    """Sample logs staged and planned for one Known Agents destination (every event, small batches)."""
    logs = tmp_path / "logs"
    write_day(logs, DAY, lines=lines, files=files, tag="k")
    cfg = write_config(tmp_path / "cfg.yaml", staging=str(tmp_path / "staging"),
                       source_url=str(logs) + "/{date:%Y/%m/%d}/*.log.gz", base_url=url, select="all",
                       delivery={"chunks_per_group": chunks_per_group},
                       extra_dest={"name": "ka", "vendor": "knownagents", "site_id": None, "max_batch_events": batch,
                                   "send_older_events": True, "secret": {"env": "KA_KEY"}})
    rt = Runtime.load(str(cfg), "plan")
    for ref in discover_objects(rt, [DAY]).objects:
        assert process_object(rt, ref).status == "staged"
    return rt, plan_deliveries(rt.cfg, rt.store, [DAY.isoformat()]).groups


def test_known_agents_leases_runs_of_chunks_and_leaves_a_live_workers_run_to_it(tmp_path: Path, sandbox, api_key,
                                                                                live_pid) -> None:
    """Small-request vendors take one lease per `chunks_per_lease` consecutive chunks of an object:
    a run held by another live worker is left whole to it; every other chunk is sent once."""
    from agent_traffic.delivery.vendors import vendor
    from tests.vendor_fixtures import SEQ

    per = vendor("knownagents").chunks_per_lease
    assert per > 1
    rt, groups = _known_agents_planned(tmp_path, sandbox.url, lines=1500, files=1, batch=20)
    chunk_ids = [c for g in groups for c in g.chunk_ids]
    assert len(chunk_ids) > 2 * per
    prefix = _prefix(groups[0])
    ((_key, plan),) = rt.store.iter_json(f"{prefix}/plans/")
    theirs = [c for c in plan["chunks"] if c["index"] // per == 1]  # the second run of the object
    assert len(theirs) == per
    _lease(rt.store, groups[0], f"{plan['object_id']}.u1", host=socket.gethostname(), pid=live_pid)
    results = [deliver_group(rt.cfg, rt.store, g, Secret(api_key), run_id="mine") for g in groups]
    assert sum(r.chunks_leased_elsewhere for r in results) == per
    assert sum(r.leased_elsewhere_events for r in results) == sum(c["events"] for c in theirs)
    got = Counter(SEQ.search(v["request_path"]).group(1) for v in sandbox.accepted("known_agents"))
    held_back = {s for c in theirs for s in _visit_seqs(Ledger.of(rt.store, groups[0]), c["chunk_id"])}
    assert not held_back & set(got) and max(got.values()) == 1
    assert sum(got.values()) + len(held_back) == sum(g.events for g in groups)
    assert rt.store.list(f"{prefix}/leases/") == [f"{prefix}/leases/{plan['object_id']}.u1.0.json"]  # only theirs
    assert Ledger.of(rt.store, groups[0]).has_pack(plan["pack"])  # their chunks are not acknowledged yet


def _visit_seqs(ledger: Ledger, cid: str) -> set[str]:
    from tests.vendor_fixtures import SEQ

    return {SEQ.search(v["request_path"]).group(1) for v in json.loads(ledger.find_chunk(cid).body)}


def test_a_lease_is_renewed_before_the_next_send_could_outlast_it(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "st"))
    ledger = Ledger(store, "d", "s", "2026-11-21")
    mine = Leases(ledger, "run-a", ttl_s=10, longest_send_s=9.5)  # renewed with under 9.75 s left
    assert mine.claim("u1")
    first = store.get_json(ledger.lease_key("u1", 0))
    mine.keep("u1")
    assert store.get_json(ledger.lease_key("u1", 0)) == first  # plenty left: no write
    time.sleep(1.1)  # expiry has second resolution
    mine.keep("u1")
    renewed = store.get_json(ledger.lease_key("u1", 0))
    assert renewed["expires_at"] > first["expires_at"] and renewed["token"] == first["token"]
    other = Leases(Ledger(Store(str(tmp_path / "st")), "d", "s", "2026-11-21"), "run-b", 10)
    assert not other.claim("u1")
    mine.release("u1")
    assert store.list("_delivery/") == []


def test_groups_never_split_a_lease_run_so_side_by_side_tasks_all_send(tmp_path: Path, sandbox, api_key) -> None:
    """Mapped delivery tasks run side by side: if two groups shared a lease run, one task would
    leave its chunks pending. Groups end at run boundaries; run together, everything is sent."""
    from concurrent.futures import ThreadPoolExecutor

    from agent_traffic.delivery.ledger import lease_unit
    from agent_traffic.delivery.vendors import vendor

    per = vendor("knownagents").chunks_per_lease
    # 15 Known Agents chunks a group (3 x its group scale): not a multiple of the run
    rt, groups = _known_agents_planned(tmp_path, sandbox.url, lines=3000, files=2, batch=10, chunks_per_group=3)
    assert len(groups) >= 4
    metas = {c["chunk_id"]: c for _k, p in rt.store.iter_json(f"{_prefix(groups[0])}/plans/") for c in p["chunks"]}
    units = [{lease_unit(metas[c], per) for c in g.chunk_ids} for g in groups]
    assert all(not (a & b) for i, a in enumerate(units) for b in units[i + 1:]), "a lease run spans two groups"
    with ThreadPoolExecutor(len(groups)) as pool:
        results = list(pool.map(lambda g: deliver_group(rt.cfg, rt.store, g, Secret(api_key), run_id="side"), groups))
    assert sum(r.chunks_leased_elsewhere for r in results) == 0
    assert sum(r.delivered_events for r in results) == sum(g.events for g in groups)
    got = Counter(v["request_path"] for v in sandbox.accepted("known_agents"))
    assert sum(got.values()) == sum(g.events for g in groups)
