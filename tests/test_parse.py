"""Parsing: every line read ends parsed, quarantined with its reason, or counted as skipped."""

from __future__ import annotations

import dataclasses
import ipaddress

import pyarrow as pa
import pytest

from agent_traffic.formats import detect_format, load_formats
from agent_traffic.ingest.parse import (
    BLANK,
    ParseContext,
    ParseStats,
    blank_lines,
    forwarded_client,
    parse_blocks,
)

FORMATS = load_formats()
GPT = "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2; +https://openai.com/gptbot)"


def ctx(fmt: str = "combined", site: str | None = "example.com", host_sites: dict | None = None,
        max_line: int = 65536) -> ParseContext:
    return ParseContext("obj0000000000001", "file:///logs/a.log", FORMATS[fmt], site,
                        site, "https", host_sites or {}, max_line)


def run(data: bytes, c: ParseContext, block_bytes: int = 1 << 20, pieces: int = 1):
    step = max(1, len(data) // pieces)
    chunks = [data[i : i + step] for i in range(0, len(data), step)]
    stats = ParseStats()
    events, quarantine = [], []
    for b in parse_blocks(iter(chunks), c, block_bytes):
        stats.add(b.stats)
        events.append(b.events)
        quarantine.append(b.quarantine)
    if not events:  # no bytes, no block
        return stats, [], []
    return stats, pa.concat_tables(events).to_pylist(), pa.concat_tables(quarantine).to_pylist()


def test_combined_line_to_canonical_event() -> None:
    line = f'203.0.113.9 - - [21/Nov/2026:10:00:00 +0130] "GET /docs/a?x=1&y=2 HTTP/1.1" 200 5120 "https://chatgpt.com/" "{GPT}"'
    stats, ev, q = run(line.encode() + b"\n", ctx())
    assert (stats.lines_read, stats.parsed, stats.quarantined) == (1, 1, 0) and q == []
    e = ev[0]
    assert e["ts"].isoformat() == "2026-11-21T08:30:00+00:00"  # every offset normalised to UTC
    assert (e["method"], e["path"], e["query"], e["status"], e["bytes"]) == ("GET", "/docs/a", "x=1&y=2", 200, 5120)
    assert e["url"] == "https://example.com/docs/a?x=1&y=2"
    assert (e["client_ip"], e["user_agent"], e["referer"]) == ("203.0.113.9", GPT, "https://chatgpt.com/")
    assert (e["site"], e["host"], e["line_number"], e["source_object"]) == ("example.com", "example.com", 1, "file:///logs/a.log")
    assert len(e["event_id"]) == 32


def test_event_ids_are_deterministic_and_unique() -> None:
    data = b"".join(
        f'1.2.3.4 - - [21/Nov/2026:10:00:{i % 60:02d} +0000] "GET /p{i} HTTP/1.1" 200 1 "-" "curl/8"\n'.encode()
        for i in range(500)
    )
    _, a, _ = run(data, ctx())
    _, b, _ = run(data, ctx(), block_bytes=1000, pieces=37)
    assert [e["event_id"] for e in a] == [e["event_id"] for e in b]
    assert len({e["event_id"] for e in a}) == 500


def test_quarantine_keeps_raw_bytes_line_number_and_reason() -> None:
    lines = [
        b'1.2.3.4 - - [21/Nov/2026:10:00:00 +0000] "GET / HTTP/1.1" 200 1 "-" "a"',
        b"",
        b"   ",
        b"not a log line",
        b'1.2.3.4 - - [21/Nov/2026:10:00:00 +0000] "-" 400 0 "-" "-"',
        b'1.2.3.4 - - [99/Nov/2026:10:00:00 +0000] "GET / HTTP/1.1" 200 1 "-" "a"',
        b'1.2.3.4 - - [21/Nov/2026:10:00:00 +0000] "GET / HTTP/1.1" 999 1 "-" "a"',
        b'1.2.3.4 - - [21/Nov/2026:10:00:00 +0000] "OPTIONS * HTTP/1.1" 200 1 "-" "a"',
        b'1.2.3.4 - - [21/Nov/2026:10:00:00 +0000] "GET /\xff\xfe HTTP/1.1" 200 1 "-" "a"',
        b"\x16\x03\x01\x02\x00\x01\xff\xfe binary junk",
    ]
    stats, ev, q = run(b"\r\n".join(lines) + b"\r\n", ctx())
    assert stats.lines_read == 10
    assert stats.lines_read == stats.parsed + stats.quarantined + sum(stats.skipped.values())
    assert stats.skipped == {"blank": 2}
    assert [e["line_number"] for e in ev] == [1, 9]
    assert stats.invalid_utf8 == 2  # repaired and kept, not fatal
    reasons = {r["line_number"]: r["reason"] for r in q}
    assert reasons == {
        4: "does not match format combined",
        5: "unparseable request line",
        6: "unparseable timestamp",
        7: "status not in 100-599",
        8: "request target is not a path",
        10: "does not match format combined",
    }
    raw = {r["line_number"]: r["raw"] for r in q}
    assert raw[4] == b"not a log line"
    assert raw[10] == lines[9]  # the exact bytes, invalid UTF-8 and all


def test_long_lines_are_quarantined_not_fatal() -> None:
    long_ua = "x" * 5000
    line = f'1.2.3.4 - - [21/Nov/2026:10:00:00 +0000] "GET / HTTP/1.1" 200 1 "-" "{long_ua}"\n'
    stats, ev, q = run(line.encode() * 3, ctx(max_line=1024))
    assert (stats.parsed, stats.quarantined) == (0, 3)
    assert q[0]["reason"] == "line longer than 1024 bytes"


def test_lines_split_across_blocks_keep_their_numbers() -> None:
    data = b"".join(
        f'1.2.3.4 - - [21/Nov/2026:10:00:00 +0000] "GET /n/{i} HTTP/1.1" 200 {i} "-" "a"\n'.encode()
        for i in range(1, 3001)
    )
    stats, ev, _ = run(data, ctx(), block_bytes=4096, pieces=101)
    assert stats.parsed == 3000
    assert all(e["line_number"] == e["bytes"] and e["path"] == f"/n/{e['bytes']}" for e in ev)


def test_quoted_user_agent_and_absolute_targets() -> None:
    line = rb'1.2.3.4 - - [21/Nov/2026:10:00:00 +0000] "GET http://proxy.example/a/b?c=d HTTP/1.1" 200 - "-" "say \"hi\" bot"'
    _, ev, _ = run(line + b"\n", ctx())
    assert ev[0]["user_agent"] == 'say "hi" bot'
    assert (ev[0]["path"], ev[0]["query"], ev[0]["bytes"]) == ("/a/b", "c=d", 0)


def test_common_log_format() -> None:
    line = b'1.2.3.4 - frank [10/Oct/2026:13:55:36 -0700] "GET /apache_pb.gif HTTP/1.0" 200 2326\n'
    _, ev, q = run(line, ctx("common"))
    assert q == [] and ev[0]["ts"].isoformat() == "2026-10-10T20:55:36+00:00"
    assert ev[0]["user_agent"] == "" and ev[0]["referer"] is None


def test_scrunch_backfill_csv() -> None:
    data = (
        b"timestamp,domain,user_agent,url,path,method,status_code,response_time_ms,ip_address\n"
        b'1700000000,example.com,"Mozilla/5.0 (compatible; GPTBot/1.0)",https://example.com/page,/page,GET,200,120,203.0.113.1\n'
        b"1700000060,example.com,curl/8,https://example.com/p?q=1,/p,GET,404,,\n"
        b"not,enough,columns\n"
    )
    stats, ev, q = run(data, ctx("scrunch_csv", site=None, host_sites={"example.com": "example.com"}))
    assert stats.skipped == {"header": 1} and stats.parsed == 2 and stats.quarantined == 1
    assert stats.lines_read == 4
    a, b = ev
    assert a["ts"].isoformat() == "2023-11-14T22:13:20+00:00" and a["duration_ms"] == 120.0
    assert (a["user_agent"], a["client_ip"], a["site"]) == ("Mozilla/5.0 (compatible; GPTBot/1.0)", "203.0.113.1", "example.com")
    assert (b["path"], b["status"], b["duration_ms"], b["client_ip"]) == ("/p", 404, None, None)
    assert q[0]["line_number"] == 4


def test_unknown_host_is_quarantined_with_reason() -> None:
    data = (b"timestamp,domain,user_agent,url,path,method,status_code,response_time_ms,ip_address\n"
            b"1700000000,other.org,curl/8,https://other.org/,/,GET,200,1,\n"
            b"1700000000,WWW.Example.com:443,curl/8,https://www.example.com/,/,GET,200,1,\n")
    _, ev, q = run(data, ctx("scrunch_csv", site=None, host_sites={"*.example.com": "example.com"}))
    assert [e["host"] for e in ev] == ["www.example.com"]
    assert q[0]["reason"] == "host matches no configured site"


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (['1.2.3.4 - - [21/Nov/2026:10:00:00 +0000] "GET / HTTP/1.1" 200 1 "-" "a"'], "combined"),
        (['1.2.3.4 - - [21/Nov/2026:10:00:00 +0000] "GET / HTTP/1.1" 200 1'], "common"),
        (["timestamp,domain,user_agent,url,path,method,status_code,response_time_ms,ip_address"], "scrunch_csv"),
    ],
)
def test_detect_format(lines: list[str], expected: str) -> None:
    fmt, why = detect_format(lines * 3, FORMATS)
    assert fmt.id == expected and expected in why


def test_pieces_cut_anywhere_even_inside_a_character() -> None:
    line = '1.2.3.4 - - [21/Nov/2026:10:00:00 +0000] "GET /caf\u00e9 HTTP/1.1" 200 1 "-" "B\u00fccherwurm/2"'
    data = ("\r\n".join([line] * 50)).encode()  # CRLF, and no newline after the last line
    for pieces in (1, 7, len(data)):
        stats, ev, q = run(data, ctx(), block_bytes=1024, pieces=pieces)
        assert (stats.lines_read, stats.parsed, q) == (50, 50, [])
        assert {e["path"] for e in ev} == {"/caf\u00e9"} and [e["line_number"] for e in ev] == list(range(1, 51))


def test_a_read_error_surfaces_after_the_lines_before_it() -> None:
    from agent_traffic.errors import ObjectReadError

    def pieces():
        yield b'1.2.3.4 - - [21/Nov/2026:10:00:00 +0000] "GET / HTTP/1.1" 200 1 "-" "a"\n' * 10
        raise ObjectReadError("truncated gzip stream: the object ends inside a member")

    with pytest.raises(ObjectReadError, match="truncated"):
        list(parse_blocks(pieces(), ctx(), 1 << 20))


def test_stopping_early_stops_the_reader_thread() -> None:
    import threading

    def endless():
        while True:
            yield b'1.2.3.4 - - [21/Nov/2026:10:00:00 +0000] "GET / HTTP/1.1" 200 1 "-" "a"\n' * 100

    before = threading.active_count()
    it = parse_blocks(endless(), ctx(), 4096)
    assert next(it).stats.parsed > 0
    it.close()
    assert threading.active_count() == before


def test_big_blocks_keep_line_order() -> None:
    data = b"".join(
        f'1.2.3.4 - - [21/Nov/2026:10:00:00 +0000] "GET /n/{i} HTTP/1.1" 200 {i} "-" "a"\n'.encode()
        for i in range(1, 60_001)
    )
    stats, ev, _ = run(data, ctx(), block_bytes=64 << 20)
    assert stats.parsed == 60_000 and [e["bytes"] for e in ev] == list(range(1, 60_001))


@pytest.mark.parametrize("data", [b"", b"\n", b"  ", b"\n \r\n\t\n  ", b"\x0b\x0c\r\n\r\n", b"\n" * 5000])
def test_blank_lines_counts_what_the_parser_counts_as_blank(data: bytes) -> None:
    """An object that is only blank lines is staged without a format (steps.py): the lines it
    reports must be the ones the parser itself would read and skip as blank."""
    stats, ev, q = run(data, ctx())
    assert ev == [] and q == [] and stats.skipped == ({BLANK: stats.lines_read} if stats.lines_read else {})
    assert blank_lines(data) == stats.lines_read


@pytest.mark.parametrize("data", [b"x", b"\n\n-\n", b" \x00\n", b"\xa0\n", b"\x1c\n"])
def test_blank_lines_refuses_any_other_byte(data: bytes) -> None:
    stats, _, _ = run(data, ctx())
    assert blank_lines(data) is None and stats.skipped.get(BLANK, 0) < stats.lines_read


NETS = [ipaddress.ip_network(n) for n in ("10.0.0.0/8", "2001:db8:ffff::/48")]


@pytest.mark.parametrize(("remote", "forwarded", "client"), [
    ("10.0.0.5", "203.0.113.9", "203.0.113.9"),  # one load balancer: the address it appended
    ("10.0.0.5", "20.15.240.64, 203.0.113.9", "203.0.113.9"),  # the client's own header is not believed
    ("10.0.0.5", "203.0.113.9, 10.9.9.9", "203.0.113.9"),  # two hops of your own proxies
    ("198.51.100.1", "203.0.113.9", "198.51.100.1"),  # not through your proxies: the header is the client's
    ("10.0.0.5", None, "10.0.0.5"),  # no header: the proxy itself made the request
    ("10.0.0.5", "10.1.1.1, 10.2.2.2", "10.1.1.1"),  # every hop yours: the first one
    ("10.0.0.5", "[2001:db8::7]:443, 203.0.113.9:5678", "203.0.113.9"),  # ports and brackets
    ("2001:db8:ffff::1", "2001:db8::7", "2001:db8::7"),
    ("::ffff:10.0.0.5", "203.0.113.9", "203.0.113.9"),  # an IPv4-mapped proxy address
    ("10.0.0.5", "unknown, 203.0.113.9", "203.0.113.9"),
    ("10.0.0.5", "203.0.113.9, unknown", "unknown"),  # no address: the walk ends (reads as unverifiable)
])
def test_the_client_behind_trusted_proxies(remote: str, forwarded: str | None, client: str) -> None:
    assert forwarded_client(remote, forwarded, NETS) == client


def test_a_source_with_trusted_proxies_stages_the_forwarded_client() -> None:
    line = (f'10.0.0.5 - - [21/Nov/2026:10:00:00 +0000] "GET / HTTP/1.1" 200 5 "-" "{GPT}" '
            '"20.15.240.64, 203.0.113.9"')
    data = (line + "\n" + line.replace('"20.15.240.64, 203.0.113.9"', '"-"') + "\n").encode()
    c = ctx("nginx_main")
    _, plain, _ = run(data, c)
    assert [e["client_ip"] for e in plain] == ["10.0.0.5", "10.0.0.5"]  # no proxies named: $remote_addr
    stats, ev, q = run(data, dataclasses.replace(c, trusted_proxies=("10.0.0.0/8",)))
    assert stats.parsed == 2 and q == [] and [e["client_ip"] for e in ev] == ["203.0.113.9", "10.0.0.5"]
    assert "forwarded_for" not in ev[0]  # events keep their schema


def test_nginx_json_reads_the_forwarded_client_past_trusted_proxies() -> None:
    import json

    line = {"time_iso8601": "2026-11-21T10:00:00+00:00", "remote_addr": "10.0.0.5", "request": "GET / HTTP/1.1",
            "status": "200", "body_bytes_sent": "5", "http_user_agent": GPT, "http_host": "example.com",
            "http_x_forwarded_for": "20.15.240.64, 203.0.113.9"}
    c = dataclasses.replace(ctx("nginx_json"), trusted_proxies=("10.0.0.0/8",))
    stats, ev, _ = run((json.dumps(line) + "\n").encode(), c)
    assert stats.parsed == 1 and ev[0]["client_ip"] == "203.0.113.9"


def test_forwarded_clients_line_up_across_many_batches() -> None:
    """DuckDB answers a block in several record batches: each row keeps its own client, rows
    without the header keep their connecting address."""
    lines = [f'10.0.0.{i % 7} - - [21/Nov/2026:10:00:00 +0000] "GET /p{i} HTTP/1.1" 200 5 "-" "{GPT}" '
             + ('"-"' if i % 3 == 0 else f'"20.15.240.64, 198.51.{i % 200}.{i % 250}"') for i in range(40_000)]
    c = dataclasses.replace(ctx("nginx_main"), trusted_proxies=("10.0.0.0/8",))
    stats, ev, _ = run(("\n".join(lines) + "\n").encode(), c)
    assert stats.parsed == 40_000
    assert [e["client_ip"] for e in ev] == [f"10.0.0.{i % 7}" if i % 3 == 0 else f"198.51.{i % 200}.{i % 250}"
                                            for i in range(40_000)]
