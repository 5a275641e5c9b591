"""Chunk files are written without fsync: a missing or torn one (an OS crash) is detected by its
hash and rebuilt from the staged events in the same delivery, never sent damaged, never lost."""

from __future__ import annotations

from collections import Counter

from agent_traffic.deliver import deliver_group
from agent_traffic.plan import decode_chunk, plan_deliveries
from agent_traffic.secrets import Secret
from tests.test_leases import DAY, SITE_ID, _prefix, planned  # noqa: F401 - the fixture


def _received(sandbox) -> Counter[str]:
    return Counter(e["url"].rsplit("seq=", 1)[1] for e in sandbox.accepted("scrunch", SITE_ID))


def test_missing_and_torn_chunk_files_are_rebuilt_and_sent_once(planned, sandbox, api_key) -> None:  # noqa: F811
    rt, group = planned
    prefix = _prefix(group)
    expected = sum(decode_chunk(rt.store.get_bytes(f"{prefix}/chunks/{cid}.chunk")).events
                   for cid in group.chunk_ids)
    gone, torn = group.chunk_ids[0], group.chunk_ids[2]
    rt.store.delete(f"{prefix}/chunks/{gone}.chunk")
    data = rt.store.get_bytes(f"{prefix}/chunks/{torn}.chunk")
    rt.store.put_bytes(f"{prefix}/chunks/{torn}.chunk", data[: len(data) - 200])  # a torn tail
    r = deliver_group(rt.cfg, rt.store, group, Secret(api_key), run_id="heal")
    got = _received(sandbox)
    assert r.delivered_events == group.events == expected
    assert r.pending_events == 0 and r.failed_events == 0
    assert sum(got.values()) == expected and max(got.values()) == 1  # every event once, none damaged
    assert not plan_deliveries(rt.cfg, rt.store, [DAY.isoformat()]).groups  # nothing left to send


def test_a_chunk_file_for_another_chunk_id_is_not_sent(planned, sandbox, api_key) -> None:  # noqa: F811
    rt, group = planned
    prefix = _prefix(group)
    a, b = group.chunk_ids[:2]
    rt.store.put_bytes(f"{prefix}/chunks/{a}.chunk", rt.store.get_bytes(f"{prefix}/chunks/{b}.chunk"))
    r = deliver_group(rt.cfg, rt.store, group, Secret(api_key), run_id="heal")
    got = _received(sandbox)
    assert r.delivered_events == group.events
    assert max(got.values()) == 1  # b's events were not sent twice under a's id
