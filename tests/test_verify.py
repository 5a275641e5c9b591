"""IP verification: range lookups, the three verdicts, and the shipped range files' provenance."""

from __future__ import annotations

import ipaddress
import json
from collections import Counter
from datetime import date
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from agent_traffic.annotate.annotator import Annotator
from agent_traffic.annotate.catalog import load_catalog
from agent_traffic.annotate.ranges import RangeSet, Snapshot, parse_range_file, shipped_snapshots
from agent_traffic.annotate.verify import SPOOFED, UNVERIFIABLE, VERIFIED, Verifier, parse_ip

DAY = date(2026, 11, 21)
GPTBOT_UA = "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2; +https://openai.com/gptbot)"


def _snap(list_id: str, cidrs: list[str], *, day: date = DAY, complete: bool = True) -> Snapshot:
    return Snapshot(list_id, RangeSet(ipaddress.ip_network(c) for c in cidrs), day, complete, "test")


def _write(path: Path, doc: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


# -- RangeSet ------------------------------------------------------------------------------------


def test_rangeset_boundaries_and_merging() -> None:
    rs = RangeSet(ipaddress.ip_network(c) for c in
                  ["10.0.0.0/25", "10.0.0.128/25", "10.0.1.0/24", "192.0.2.8/29", "2001:db8::/64"])
    assert rs.networks == 5
    for inside in ["10.0.0.0", "10.0.0.127", "10.0.0.128", "10.0.1.255", "192.0.2.8", "192.0.2.15",
                   "2001:db8::1", "2001:db8::ffff:ffff:ffff:ffff"]:
        assert ipaddress.ip_address(inside) in rs, inside
    for outside in ["9.255.255.255", "10.0.2.0", "192.0.2.7", "192.0.2.16", "2001:db8:0:1::",
                    "::a00:1"]:
        assert ipaddress.ip_address(outside) not in rs, outside

def test_rangeset_vectorized_lookups_agree_with_the_integer_search() -> None:
    """contains_v4 / contains_v6 (numpy, the pipeline's path) answer what contains_int answers,
    at every range edge and for random addresses, including ranges whose bytes end in zeros."""
    import random

    nets = [ipaddress.ip_network(c) for c in
            ["10.0.0.0/25", "10.0.1.0/24", "192.0.2.8/29", "2001:db8::/64", "2001:db8:1::/48",
             "2600:1f00::/24", "fe80::/10", "::/112"]]
    rs = RangeSet(nets)
    rng = random.Random(7)
    probes: dict[int, set[int]] = {4: set(), 6: set()}
    for net in nets:
        for n in (int(net.network_address), int(net.broadcast_address)):
            probes[net.version].update({n - 1, n, n + 1})
    probes[4].update(rng.getrandbits(32) for _ in range(2000))
    probes[6].update(rng.getrandbits(128) for _ in range(2000))
    probes[6].update(int(ipaddress.ip_address("2001:db8::")) + rng.getrandbits(65) for _ in range(2000))
    v4 = sorted(n for n in probes[4] if 0 <= n < 2**32)
    v6 = sorted(n for n in probes[6] if 0 <= n < 2**128)
    assert rs.contains_v4(np.array(v4, dtype=np.int64)).tolist() == [rs.contains_int(4, n) for n in v4]
    packed = np.array([n.to_bytes(16, "big") for n in v6], dtype="S16")
    expected = [rs.contains_int(6, n) for n in v6]
    assert rs.contains_v6(packed).tolist() == expected
    assert 100 < sum(expected) < len(v6)  # both answers are exercised
    assert not RangeSet([]).contains_v6(packed).any()



def test_parse_ip_accepts_log_forms_and_rejects_junk() -> None:
    assert parse_ip("74.7.227.5") == ipaddress.ip_address("74.7.227.5")
    assert parse_ip(" ::ffff:74.7.227.5 ") == ipaddress.ip_address("74.7.227.5")
    assert parse_ip("[2001:db8::1]") == ipaddress.ip_address("2001:db8::1")
    for junk in [None, "", "-", "unknown", "1.2.3.4:80", "1.2.3.4, 5.6.7.8", "999.1.1.1"]:
        assert parse_ip(junk) is None, junk


# -- verdicts ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


def test_three_verdicts(catalog) -> None:
    v = Verifier(catalog, {"openai-gptbot": _snap("openai-gptbot", ["74.7.227.0/25"])})
    assert v.verify("GPTBot", "74.7.227.5", DAY) == VERIFIED
    assert v.verify("GPTBot", "203.0.113.9", DAY) == SPOOFED
    assert v.verify("GPTBot", None, DAY) == UNVERIFIABLE  # no IP
    assert v.verify("GPTBot", "garbage", DAY) == UNVERIFIABLE
    # an operator that publishes no list: never spoofed, whatever the IP
    assert v.verify("meta-externalagent", "203.0.113.9", DAY) == UNVERIFIABLE
    # a list the catalog names but no snapshot is loaded for
    assert v.verify("OAI-SearchBot", "203.0.113.9", DAY) == UNVERIFIABLE
    # no claim, no verdict
    assert v.verify("human", "203.0.113.9", DAY) is None
    assert v.verify("unknown", "203.0.113.9", DAY) is None


def test_partial_or_stale_lists_never_make_spoofing(catalog) -> None:
    partial = Verifier(catalog, {"anthropic-bots": _snap("anthropic-bots", ["216.73.216.0/22"], complete=False)})
    assert partial.verify("ClaudeBot", "216.73.217.16", DAY) == VERIFIED
    assert partial.verify("ClaudeBot", "203.0.113.9", DAY) == UNVERIFIABLE
    old = Verifier(catalog, {"openai-gptbot": _snap("openai-gptbot", ["74.7.227.0/25"], day=date(2026, 2, 11))},
                   max_age_days=30)
    assert old.verify("GPTBot", "74.7.227.5", DAY) == VERIFIED  # inside an old list still verifies
    assert old.verify("GPTBot", "203.0.113.9", DAY) == UNVERIFIABLE
    assert old.verify("GPTBot", "203.0.113.9", date(2026, 3, 1)) == SPOOFED  # fresh for that day


def test_agent_with_two_lists_needs_both_for_spoofing(catalog) -> None:
    agent = catalog.get("FeedFetcher-Google")
    assert agent is not None and len(agent.ip_ranges) == 2
    first, second = agent.ip_ranges
    one = Verifier(catalog, {first: _snap(first, ["192.0.2.0/24"])})
    assert one.verify(agent.name, "192.0.2.1", DAY) == VERIFIED
    assert one.verify(agent.name, "198.51.100.1", DAY) == UNVERIFIABLE
    both = Verifier(catalog, {first: _snap(first, ["192.0.2.0/24"]), second: _snap(second, ["2001:db8::/32"])})
    assert both.verify(agent.name, "2001:db8::5", DAY) == VERIFIED
    assert both.verify(agent.name, "198.51.100.1", DAY) == SPOOFED


def test_catalog_can_declare_a_list_incomplete(tmp_path: Path) -> None:
    from agent_traffic.annotate.ranges import load_snapshots

    user = _write(tmp_path / "mine.yaml", {"version": 1, "ip_ranges": {"openai-gptbot": {"complete": False}}})
    cat = load_catalog([user])
    snaps = load_snapshots(cat)  # the shipped copy of gptbot.json is complete on its own
    assert shipped_snapshots()["openai-gptbot"].complete and not snaps["openai-gptbot"].complete
    v = Verifier(cat, snaps, max_age_days=3650)
    assert v.verify("GPTBot", "203.0.113.9", DAY) == UNVERIFIABLE


# -- the shipped range files -----------------------------------------------------------------------


def _index() -> dict:
    return json.loads(resources.files("agent_traffic").joinpath("data/ip_ranges/index.json").read_text("utf-8"))


def test_shipped_files_have_provenance_and_parse(catalog) -> None:
    lists = _index()["lists"]
    assert {"openai-gptbot", "openai-searchbot", "openai-chatgpt-user", "google-common-crawlers",
            "microsoft-bingbot", "perplexity-bot", "perplexity-user", "anthropic-bots"} <= set(lists)
    folder = resources.files("agent_traffic").joinpath("data/ip_ranges")
    for list_id, meta in lists.items():
        assert list_id in catalog.ip_ranges, list_id
        assert meta["source_url"].startswith("https://"), list_id
        date.fromisoformat(meta["retrieved"])
        taken = meta["taken_from"]
        assert "/" in taken["repo"] and taken["path"] and len(taken["commit"]) == 40, list_id
        assert isinstance(meta["complete"], bool)
        rs = parse_range_file(folder.joinpath(meta["file"]).read_bytes())
        assert rs.networks > 0
    on_disk = {p.name for p in folder.iterdir() if p.name.endswith(".json")} - {"index.json"}
    assert on_disk == {m["file"] for m in lists.values()}  # no file without provenance


def test_shipped_ranges_verify_documented_addresses(catalog) -> None:
    """Addresses inside the operators' lists (checked against the same public copies)."""
    v = Verifier(catalog, shipped_snapshots(), max_age_days=3650)
    assert v.verify("GPTBot", "20.171.206.10", date(2026, 2, 11)) == VERIFIED
    assert v.verify("ChatGPT-User", "23.98.142.180", date(2026, 2, 11)) == VERIFIED
    assert v.verify("OAI-SearchBot", "51.8.102.7", date(2026, 2, 11)) == VERIFIED
    assert v.verify("Googlebot", "66.249.66.1", date(2026, 2, 11)) == VERIFIED
    assert v.verify("Googlebot", "2001:4860:4801:10::1", date(2026, 2, 11)) == VERIFIED
    assert v.verify("bingbot", "157.55.39.1", date(2026, 2, 11)) == VERIFIED
    assert v.verify("ClaudeBot", "216.73.217.16", date(2026, 8, 12)) == VERIFIED
    # The classic spoof: a Googlebot UA from an address Google does not crawl from.
    assert v.verify("Googlebot", "203.0.113.50", date(2026, 2, 11)) == SPOOFED
    # Anthropic's shipped copy may be partial: outside it is not proof.
    assert v.verify("ClaudeBot", "203.0.113.50", date(2026, 8, 12)) == UNVERIFIABLE


def test_every_agent_list_is_in_the_catalog(catalog) -> None:
    for agent in catalog:
        for list_id in agent.ip_ranges:
            assert list_id in catalog.ip_ranges, (agent.name, list_id)
        assert not (agent.robots_only and agent.ip_ranges)
    named = {lid for a in catalog for lid in a.ip_ranges}
    assert named == set(catalog.ip_ranges)  # every list verifies some agent


# -- in the pipeline path ------------------------------------------------------------------------


def test_annotate_verifies_distinct_claims_once(catalog, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_enrich import events_table

    ann = Annotator.build(catalog=catalog, snapshots={"openai-gptbot": _snap("openai-gptbot", ["74.7.227.0/25"])})
    rows = [{"user_agent": GPTBOT_UA, "client_ip": "74.7.227.5"}] * 500 + \
           [{"user_agent": GPTBOT_UA, "client_ip": "203.0.113.9"}] * 300 + \
           [{"user_agent": GPTBOT_UA, "client_ip": None}] * 7 + \
           [{"user_agent": "Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0",
             "client_ip": "203.0.113.9"}] * 11
    asked: list[str] = []  # every IP the verifier was asked about
    many = ann.verifier.verdict_codes

    def recording(agent, ip4, texts, days):
        asked.extend(str(ipaddress.IPv4Address(int(i))) if i >= 0 else texts[k].as_py() for k, i in enumerate(ip4))
        return many(agent, ip4, texts, days)

    monkeypatch.setattr(ann.verifier, "verdict_codes", recording)
    out = ann.annotate(events_table(rows))
    assert out.num_rows == len(rows)
    assert out["line_number"].to_pylist() == list(range(1, len(rows) + 1))
    got = Counter(out["verification"].to_pylist())
    assert got == {"verified": 500, "spoofed": 300, "unverifiable": 7, None: 11}
    assert sorted(asked) == ["203.0.113.9", "74.7.227.5"]  # two distinct claims, not 807 rows


def test_vectorized_ipv4_and_one_by_one_paths_agree(catalog) -> None:
    """The pipeline's path (dotted IPv4 in numpy, IPv6 and mapped as integers, odd spellings and
    zone ids through `verify`) gives what `verify` gives for each claim alone."""
    from tests.test_enrich import events_table

    snaps = {"openai-gptbot": _snap("openai-gptbot", ["74.7.227.0/25", "2001:db8:1::/48"])}
    ann = Annotator.build(catalog=catalog, snapshots=snaps)
    ips = ["74.7.227.5", "74.7.227.200", "::ffff:74.7.227.5", " 74.7.227.6 ", "[2001:db8:1::7]",
           "2001:db8:2::7", "074.7.227.5", "not-an-ip", "74.7.227.127", "74.7.227.128", "255.255.255.255",
           "2001:DB8:1:FFFF:FFFF:FFFF:FFFF:FFFF", "2001:db8:0:ffff::1", "::ffff:203.0.113.9",
           "fe80::1%eth0", "::", "2001:db8:1::7::1", "2001:db8:1::7\x00", "74.7.227.5\x00x", "2001:DB8:1::8"]
    out = ann.annotate(events_table([{"user_agent": GPTBOT_UA, "client_ip": ip} for ip in ips]))
    day = out["ts"][0].as_py().date()
    assert out["verification"].to_pylist() == [ann.verifier.verify("GPTBot", ip, day) for ip in ips]
    assert out["verification"].to_pylist() == [
        "verified", "spoofed", "verified", "verified", "verified",
        "spoofed", "unverifiable", "unverifiable", "verified", "spoofed", "spoofed",
        "verified", "spoofed", "spoofed", "spoofed", "spoofed", "unverifiable", "unverifiable", "unverifiable",
        "verified"]


def test_list_freshness_is_judged_per_claim_day_in_the_pipeline_path(catalog) -> None:
    """The same outside address is spoofed on a day the list is fresh for, unverifiable 40 days on."""
    from datetime import UTC, datetime

    from tests.test_enrich import events_table

    ann = Annotator.build(catalog=catalog, snapshots={
        "openai-gptbot": _snap("openai-gptbot", ["74.7.227.0/25", "2001:db8:1::/48"])})
    fresh, stale = datetime(2026, 11, 21, 12, tzinfo=UTC), datetime(2026, 12, 31, 12, tzinfo=UTC)
    rows = [{"user_agent": GPTBOT_UA, "client_ip": ip, "ts": ts}
            for ts in (fresh, stale) for ip in ("203.0.113.9", "2001:db8:2::7", "74.7.227.5", "2001:db8:1::9")]
    out = ann.annotate(events_table(rows))
    assert out["verification"].to_pylist() == [
        "spoofed", "spoofed", "verified", "verified", "unverifiable", "unverifiable", "verified", "verified"]
    assert out["verification"].to_pylist() == [
        ann.verifier.verify("GPTBot", r["client_ip"], r["ts"].date()) for r in rows]


def test_ipv6_read_in_c_is_socket_inet_pton() -> None:
    """`shape.ipv6_packed` (inet_pton in C over the Arrow column) against `_ipv6_bytes` one by one,
    over random addresses in every spelling and near misses: where C answers it agrees, and it
    answers for every plain one (the rest are left to Python, which decides them as before)."""
    import random

    import pyarrow as pa

    from agent_traffic.annotate.verify import _ipv6_bytes
    from agent_traffic.ingest.shape import ipv6_packed

    rng = random.Random(6)
    texts: list[str | None] = []
    for _ in range(3000):
        addr = ipaddress.IPv6Address(rng.getrandbits(128) if rng.random() < 0.5 else
                                     rng.getrandbits(16) << 112 | rng.getrandbits(16))
        spell = rng.choice([str(addr), addr.exploded, addr.exploded.upper(), f"::ffff:{rng.randint(0, 255)}.1.2.3",
                            f"[{addr}]", f" {addr}", f"{addr}%eth0", str(addr) + ":1", str(addr)[:-1] + "g",
                            "1.2.3.4", "", "::", ":::", "ü::1", str(addr) + "\x00"])
        texts.append(spell)
    texts.append(None)
    got = ipv6_packed(pa.array(texts))
    if got is None:
        pytest.skip("the C extension is not built")
    packed, ok = got
    want = [_ipv6_bytes(t or "") for t in texts]
    for t, p, k, w in zip(texts, packed.tolist(), ok.tolist(), want, strict=True):
        plain = t is not None and t.strip().strip("[]") == t and t.isascii() and t.isprintable()
        assert k == (plain and w is not None), t
        if k:
            assert p.ljust(16, b"\0") == w, t
    assert 500 < ok.sum() < len(texts) - 500
