"""Three vendors, two sites, one run, over real HTTP to the local receiver.

Every staged event ends in exactly one counted outcome per destination (not selected, not
eligible, too old, delivered, failed, pending), the counts add up, and what the receiver holds is
exactly what the ledger says was delivered.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent_traffic.devtools.sandbox import Sandbox
from agent_traffic.run.runner import run
from agent_traffic.run.runtime import Runtime
from agent_traffic.run.summary import render
from agent_traffic.secrets import env_resolver
from tests.vendor_fixtures import (
    DAY,
    FRESH,
    HK_BLOG,
    KEY_ENVS,
    MAIN_LINES,
    expected_lines,
    fast_hitkeep,
    keys,
    received,
    three_vendor_config,
    wanted,
)


@pytest.fixture
def dest_keys() -> dict[str, str]:
    return keys()


@pytest.fixture
def receiver(tmp_path: Path, dest_keys: dict[str, str]):
    with Sandbox(api_keys=dest_keys.values(), seed=11) as sb:
        sb.retry_after = 0
        fast_hitkeep(sb)
        yield sb


def _run(config: Path, dest_keys: dict[str, str], *, now: datetime = FRESH, run_id: str = "r1", **kw):
    env = {KEY_ENVS[d]: k for d, k in dest_keys.items()}
    rt = Runtime.load(str(config), run_id)
    return run(rt, DAY, DAY, resolver=env_resolver(env), progress=lambda _m: None, now=now, **kw)


def _by_dest(summary: dict) -> dict[str, dict]:
    return {d["destination"]: d for d in summary["destinations"]}


def test_three_vendors_two_sites_every_event_one_outcome(tmp_path: Path, receiver, dest_keys) -> None:
    cfg = three_vendor_config(tmp_path / "c.yaml", tmp_path, receiver.url)
    s = _run(cfg, dest_keys)
    assert s["ok"], s["problems"]
    got, want = received(receiver), wanted()
    for name, seqs in want.items():
        assert set(got[name]) == seqs, name
        assert max(got[name].values()) == 1, f"{name} got duplicates"
    st = _by_dest(s)
    assert set(st) == set(want)
    main = expected_lines("a", MAIN_LINES)
    for name, d in st.items():
        assert d["balanced"], name
        assert d["delivered"] == len(want[name]) and d["failed"] == d["pending"] == d["too_old"] == 0
        assert sum(d["not_selected"].values()) == d["events_staged"] - sum(
            1 for x in (main if name.endswith("example") else expected_lines("b", 800, seed=1)) if x.is_ai)
    # HitKeep: agents its classifier refuses are counted per agent, never sent, never failures.
    hk = st["hitkeep-example"]
    refused = [x for x in main if x.is_ai and not x.hitkeep_ok]
    assert sum(hk["not_eligible"].values()) == len(refused) > 0
    assert set(hk["not_eligible"]) == {"not eligible for HitKeep (OAI-SearchBot)",
                                       "not eligible for HitKeep (Claude-User)",
                                       "not eligible for HitKeep (Perplexity-User)"}
    assert receiver.requests_seen["hitkeep"] == {"202": len(want["hitkeep-example"]) + len(want["hitkeep-blog"])}
    # What each vendor received is its own protocol: no IP for HitKeep, the IP header for Known Agents.
    assert all("ip" not in e and set(e) <= {"path", "hostname", "status_code", "content_type", "response_ms",
                                           "bytes_served", "user_agent"} for e in receiver.accepted("hitkeep"))
    assert all("x-forwarded-for" in e["request_headers"] for e in receiver.accepted("known_agents"))
    assert all("ip" in e for e in receiver.accepted("scrunch"))
    # The table shows every site and destination with every outcome column.
    table = render(s)
    assert "not elig." in table and "too old" in table
    for name, d in st.items():
        assert any(line.startswith(name) and d["site"] in line for line in table.splitlines())


def test_too_old_is_counted_and_sent_only_when_asked(tmp_path: Path, receiver, dest_keys) -> None:
    now = datetime(2026, 11, 22, 12, tzinfo=UTC)  # with a 24 h max age: the first half of DAY is too old
    age = {"max_age_hours": 24}
    cfg = three_vendor_config(tmp_path / "c.yaml", tmp_path, receiver.url, hitkeep=age, knownagents=age)
    s = _run(cfg, dest_keys, now=now)
    assert s["ok"], s["problems"]
    got, want, everything = received(receiver), wanted(timedelta(hours=24), now), wanted()
    for name in want:
        assert set(got[name]) == want[name], name
    st = _by_dest(s)
    for name in ("hitkeep-example", "knownagents-example", "hitkeep-blog", "knownagents-blog"):
        old = len(everything[name]) - len(want[name])
        assert old > 0 and st[name]["too_old"] == old and st[name]["balanced"], name
    assert st["scrunch-example"]["too_old"] == 0  # Scrunch keeps each event's time: it takes a backfill
    assert any("send_older_events: true" in n for n in s["notes"]) and "NOTE" in render(s)

    # The user asks for the older events: they are sent, and nothing delivered before is sent again.
    opt_in = {**age, "send_older_events": True}
    cfg = three_vendor_config(tmp_path / "c.yaml", tmp_path, receiver.url, hitkeep=opt_in, knownagents=opt_in)
    s2 = _run(cfg, dest_keys, now=now + timedelta(days=30), run_id="r2")
    assert s2["ok"], s2["problems"]
    got = received(receiver)
    for name, seqs in everything.items():
        assert set(got[name]) == seqs and max(got[name].values()) == 1, name
        d = _by_dest(s2)[name]
        assert d["delivered"] == len(seqs) and d["too_old"] == 0 and d["balanced"]


def test_keys_are_per_destination_and_events_that_age_while_failed_are_not_sent(
    tmp_path: Path, receiver, dest_keys
) -> None:
    cfg = three_vendor_config(tmp_path / "c.yaml", tmp_path, receiver.url)
    wrong = {**dest_keys, "hitkeep-blog": "wrong-" + dest_keys["hitkeep-blog"],
             "knownagents-example": "wrong-" + dest_keys["knownagents-example"]}
    s = _run(cfg, wrong)
    assert not s["ok"]
    got, want, st = received(receiver), wanted(), _by_dest(s)
    for name in ("scrunch-example", "hitkeep-example", "knownagents-blog"):
        assert set(got[name]) == want[name] and st[name]["delivered"] == len(want[name])
    for name in ("hitkeep-blog", "knownagents-example"):
        d = st[name]
        assert not got[name] and d["delivered"] == 0 and d["balanced"]
        assert d["failed"] > 0 and d["failed"] + d["pending"] == len(want[name])  # 401 stops the destination
        assert any(p.startswith(f"{name} ") and "HTTP 401" in p for p in s["problems"])
    # Three days later the keys are fixed: for vendors that stamp receive time, those events are now
    # too old to be sent as today's traffic. They are counted, not sent, not failures.
    s2 = _run(cfg, dest_keys, now=FRESH + timedelta(days=3), run_id="r2")
    assert s2["ok"], s2["problems"]
    got, st = received(receiver), _by_dest(s2)
    for name in ("hitkeep-blog", "knownagents-example"):
        assert not got[name]
        d = st[name]
        assert d["too_old"] == len(want[name]) and d["failed"] == d["pending"] == 0 and d["balanced"]
    assert list((tmp_path / "staging" / "_delivery" / "hitkeep-blog").rglob("too_old/*.json"))
    assert not list((tmp_path / "staging" / "_delivery").rglob("dead/*.json"))


def test_rejections_are_dead_lettered_with_the_answer_and_resent(tmp_path: Path, receiver, dest_keys) -> None:
    cfg = three_vendor_config(tmp_path / "c.yaml", tmp_path, receiver.url)
    receiver.inject("422")
    s = _run(cfg, dest_keys, destinations=["knownagents-example"])
    assert not s["ok"]
    (dead,) = (tmp_path / "staging" / "_delivery" / "knownagents-example").rglob("dead/*.json")
    rec = json.loads(dead.read_text())
    assert rec["status"] == 422 and "validation failed" in rec["vendor_answer"] and rec["attempts"] == 1
    s2 = _run(cfg, dest_keys, destinations=["knownagents-example"], run_id="r2")
    assert s2["ok"] and not list((tmp_path / "staging" / "_delivery").rglob("dead/*.json"))
    got = received(receiver)["knownagents-example"]
    assert set(got) == wanted()["knownagents-example"] and max(got.values()) == 1


def test_a_wrong_site_id_stops_that_destination(tmp_path: Path, receiver, dest_keys) -> None:
    cfg = three_vendor_config(tmp_path / "c.yaml", tmp_path, receiver.url)
    text = cfg.read_text().replace(HK_BLOG, "not-a-uuid")
    cfg.write_text(text)
    s = _run(cfg, dest_keys, destinations=["hitkeep-blog"])
    d = _by_dest(s)["hitkeep-blog"]
    assert 1 <= d["failed"] <= 3 and d["failed"] + d["pending"] == len(wanted()["hitkeep-blog"]) and d["balanced"]
    assert "HTTP 404" in d["last_failure"] and "site not found" in d["last_failure"]
    # the requests in flight when the first 404 came back (concurrency 3), not one per event
    assert receiver.requests_seen["hitkeep"] == {"404": d["failed"]}

