"""Packs are written without fsync: a missing or torn one (an OS crash) is detected by the chunks'
hashes and rebuilt from the staged events in the same delivery, never sent damaged, never lost;
a pack goes once every chunk in it is acknowledged."""

from __future__ import annotations

import time
from collections import Counter

from agent_traffic.delivery import deliver
from agent_traffic.delivery.deliver import deliver_group
from agent_traffic.delivery.ledger import Ledger
from agent_traffic.delivery.plan import plan_deliveries
from agent_traffic.secrets import Secret
from tests.test_leases import DAY, SITE_ID, _prefix, planned  # noqa: F401 - the fixture


def _received(sandbox) -> Counter[str]:
    return Counter(e["url"].rsplit("seq=", 1)[1] for e in sandbox.accepted("scrunch", SITE_ID))


def _plan(rt, group) -> tuple[str, dict]:
    ((key, plan),) = rt.store.iter_json(f"{_prefix(group)}/plans/")
    return key, plan


def test_a_torn_pack_is_rebuilt_and_every_event_sent_once(planned, sandbox, api_key) -> None:  # noqa: F811
    rt, group = planned
    prefix = _prefix(group)
    expected = sum(Ledger.of(rt.store, group).find_chunk(cid).events for cid in group.chunk_ids)
    _key, plan = _plan(rt, group)
    data = rt.store.get_bytes(Ledger.of(rt.store, group).pack_key(plan["pack"]))
    rt.store.put_bytes(Ledger.of(rt.store, group).pack_key(plan["pack"]), data[: len(data) - 200])  # a torn tail: the last chunk
    r = deliver_group(rt.cfg, rt.store, group, Secret(api_key), run_id="heal")
    got = _received(sandbox)
    assert r.delivered_events == group.events == expected
    assert r.pending_events == 0 and r.failed_events == 0
    assert sum(got.values()) == expected and max(got.values()) == 1  # every event once, none damaged
    assert not plan_deliveries(rt.cfg, rt.store, [DAY.isoformat()]).groups  # nothing left to send
    assert rt.store.list(f"{prefix}/packs/") == []  # every chunk acknowledged: no pack left


def test_a_missing_pack_is_rebuilt(planned, sandbox, api_key) -> None:  # noqa: F811
    rt, group = planned
    _key, plan = _plan(rt, group)
    rt.store.delete(Ledger.of(rt.store, group).pack_key(plan["pack"]))
    r = deliver_group(rt.cfg, rt.store, group, Secret(api_key), run_id="heal")
    got = _received(sandbox)
    assert r.delivered_events == group.events and r.pending_events == 0
    assert sum(got.values()) == group.events and max(got.values()) == 1


def test_a_pack_offset_pointing_at_another_chunk_is_not_sent(planned, sandbox, api_key) -> None:  # noqa: F811
    rt, group = planned
    key, plan = _plan(rt, group)
    a, b = plan["chunks"][:2]
    a["offset"], a["length"] = b["offset"], b["length"]  # a's entry now reads b's bytes
    rt.store.put_json(key, plan)
    r = deliver_group(rt.cfg, rt.store, group, Secret(api_key), run_id="heal")
    got = _received(sandbox)
    assert r.delivered_events == group.events
    assert max(got.values()) == 1  # b's events were not sent twice under a's id


def test_a_pack_stays_while_a_chunk_in_it_failed(planned, sandbox, api_key) -> None:  # noqa: F811
    rt, group = planned
    prefix = _prefix(group)
    _key, plan = _plan(rt, group)
    sandbox.inject("422")  # the first request is refused: a dead letter, resent by the next run
    r = deliver_group(rt.cfg, rt.store, group, Secret(api_key), run_id="one")
    assert r.failed_events > 0 and rt.store.exists(Ledger.of(rt.store, group).pack_key(plan["pack"]))
    (again,) = plan_deliveries(rt.cfg, rt.store, [DAY.isoformat()]).groups
    r2 = deliver_group(rt.cfg, rt.store, again, Secret(api_key), run_id="two")
    assert r2.delivered_events == r.failed_events and r2.failed_events == 0
    assert rt.store.list(f"{prefix}/packs/") == []


def test_a_pack_changed_after_this_process_wrote_it_is_checked_again(planned, sandbox, api_key,  # noqa: F811
                                                                       monkeypatch) -> None:
    """The planning process trusts its own unchanged packs (no second hash of every body); a
    byte changed in place afterwards (same size) is caught by the hashes, never sent."""
    monkeypatch.setattr(deliver, "TRUST_MIN_BYTES", 0)  # these test chunks are small: trust them all
    rt, group = planned
    ledger = Ledger.of(rt.store, group)
    _key, plan = _plan(rt, group)
    assert ledger.pack_written_here(plan["pack"])
    path = rt.store.path(ledger.pack_key(plan["pack"]))
    first = plan["chunks"][0]
    time.sleep(0.05)  # past the file system's timestamp tick: the edit gets its own mtime
    with open(path, "r+b") as f:
        f.seek(first["offset"])
        record = f.read(first["length"])
        at = record.index(b'"method":"GET"')
        f.seek(first["offset"] + at)
        f.write(b'"method":"PUT"')  # still valid JSON, the same size: only a hash tells
    assert not ledger.pack_written_here(plan["pack"])
    r = deliver_group(rt.cfg, rt.store, group, Secret(api_key), run_id="edited")
    got = _received(sandbox)
    assert r.delivered_events == group.events and r.pending_events == 0
    assert sum(got.values()) == group.events and max(got.values()) == 1
    assert all(e["method"] != "PUT" for e in sandbox.accepted("scrunch", SITE_ID))
