"""Every packaged format: realistic lines rendered from requests parse back into the same events.

Fixtures come from tests/data/formats/samples.py, which renders each format from its vendor's
field map; the expected event of each line is computed from the request it was rendered from.
"""

from __future__ import annotations

import gzip
import random
import re
import zlib
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest

from agent_traffic.errors import ConfigError
from agent_traffic.formats import (
    detect_format,
    duck_connection,
    load_formats,
    quote_split,
    regex_batches,
)
from agent_traffic.ingest.parse import (
    NOT_REQUEST,
    UNKNOWN_HOST,
    ParseContext,
    ParseStats,
    _raw_select,
    parse_blocks,
    sample_match,
)
from tests.data.formats import samples

FORMATS = load_formats()
FIELDS = ("ts", "host", "method", "path", "query", "status", "bytes", "duration_ms", "client_ip",
          "user_agent", "referer", "content_type", "url")


def ctx(fmt, *, multi: bool, max_line: int = 65536) -> ParseContext:
    site = None if multi else "example.com"
    return ParseContext("obj0000000000001", "file:///logs/x.log.gz", fmt, site, site, "https",
                        samples.HOST_SITES if multi else {}, max_line)


def parse(data: bytes, c: ParseContext, block_bytes: int = 1 << 20, pieces: int = 3):
    step = max(1, len(data) // pieces)
    stats = ParseStats()
    events, quarantine = [], []
    for b in parse_blocks(iter([data[i : i + step] for i in range(0, len(data), step)]), c, block_bytes):
        stats.add(b.stats)
        events.append(b.events)
        quarantine.append(b.quarantine)
    return stats, pa.concat_tables(events).to_pylist(), pa.concat_tables(quarantine).to_pylist()


def check_events(fid: str, expected: list[object], events: list[dict], quarantine: list[dict]) -> None:
    """Line by line: an event equal to the expectation, or the expected skip or quarantine."""
    by_line = {e["line_number"]: e for e in events}
    q_by_line = {q["line_number"]: q["reason"] for q in quarantine}
    for n, want in enumerate(expected, 1):
        if not isinstance(want, dict):
            assert n not in by_line and n not in q_by_line or q_by_line.get(n) == want, (fid, n, want)
            continue
        assert n in by_line, (fid, n, q_by_line.get(n))
        got = by_line[n]
        for f in FIELDS:
            if f == "ts" and fid in samples.FLOAT_TIME:
                assert abs(got["ts"] - want["ts"]) <= timedelta(microseconds=2), (fid, n)
            elif f == "duration_ms" and want[f] is not None:
                assert got[f] == pytest.approx(want[f], abs=1e-6), (fid, n, f)
            else:
                assert got[f] == want[f], (fid, n, f, got[f], want[f])
        assert got["ts"].tzinfo is not None and got["ts"].utcoffset() == timedelta(0)


@pytest.mark.parametrize("fid", sorted(samples.RENDERERS))
def test_each_format_parses_to_the_requests_it_was_rendered_from(fid: str) -> None:
    multi = fid in samples.MULTI_HOST
    reqs = samples.requests(400, seed=zlib.crc32(fid.encode()) % 1000, unknown_every=37 if multi else 0)
    data, expected = samples.render(fid, reqs)
    stats, events, quarantine = parse(gzip.decompress(gzip.compress(data)), ctx(FORMATS[fid], multi=multi))
    assert stats.balanced and stats.lines_read == len(expected)
    want_events = [e for e in expected if isinstance(e, dict) and e["host"] != samples.UNKNOWN_HOST]
    assert stats.parsed == len(want_events)
    unknown = sum(1 for e in expected if isinstance(e, dict) and e["host"] == samples.UNKNOWN_HOST)
    assert stats.reasons == ({UNKNOWN_HOST: unknown} if unknown else {})
    assert dict(stats.unknown_hosts) == ({samples.UNKNOWN_HOST: unknown} if unknown else {})
    expected = [UNKNOWN_HOST if isinstance(e, dict) and e["host"] == samples.UNKNOWN_HOST else e for e in expected]
    check_events(fid, expected, events, quarantine)
    skips = [e for e in expected if e in ("header", NOT_REQUEST)]
    assert sum(stats.skipped.values()) == len(skips)
    assert all(e["site"] == ("blog.example.org" if e["host"] == "blog.example.org" else "example.com") for e in events)


@pytest.mark.parametrize("fid", sorted(samples.RENDERERS))
def test_auto_detection_names_each_format_and_why(fid: str) -> None:
    data, _ = samples.render(fid, samples.requests(60, seed=3))
    fmt, why = detect_format(data.decode().splitlines(), FORMATS)
    assert fmt.id == fid, why
    assert repr(fid) in why and "of the first" in why


def test_cloudfront_without_its_header_uses_the_standard_field_order() -> None:
    reqs = samples.requests(50, seed=5)
    lines = samples.cloudfront(reqs, header=False)
    data = ("\n".join(t for t, _ in lines) + "\n").encode()
    assert detect_format(data.decode().splitlines(), FORMATS)[0].id == "cloudfront"
    stats, events, _ = parse(data, ctx(FORMATS["cloudfront"], multi=True))
    assert stats.parsed == 50 and stats.skipped == {}
    check_events("cloudfront", [e for _, e in lines], events, [])


def test_w3c_lines_that_disagree_with_the_fields_header_are_quarantined() -> None:
    reqs = samples.requests(6, seed=1)
    lines = [t for t, _ in samples.iis(reqs)]
    lines[5] = lines[5] + " extra-field"
    data = ("\n".join(lines) + "\n").encode()
    stats, events, q = parse(data, ctx(FORMATS["iis"], multi=True))
    assert stats.balanced and stats.skipped == {"header": 8}
    assert [r["line_number"] for r in q] == [6] and q[0]["reason"] == "does not match format iis"
    assert q[0]["raw"] == lines[5].encode()


def test_fastly_with_the_customers_own_field_names() -> None:
    names = {"time": "ts", "client_ip": "cip", "host": "hst", "target": "uri", "method": "verb",
             "status": "code", "user_agent": "ua", "referer": "ref", "bytes": "size", "content_type": "ctype",
             "duration": "elapsed_us"}
    fmt = FORMATS["fastly_json"].with_columns({v: k for k, v in names.items()}, "test")
    reqs = samples.requests(80, seed=9)
    lines = samples.fastly_json(reqs, names)
    data = ("\n".join(t for t, _ in lines) + "\n").encode()
    stats, events, q = parse(data, ctx(fmt, multi=True))
    assert stats.parsed == 80 and q == []
    check_events("fastly_json", [e for _, e in lines], events, q)
    # the packaged mapping does not fit these lines: every line says so, none is lost
    stats, _, q = parse(data, ctx(FORMATS["fastly_json"], multi=True))
    assert stats.quarantined == 80 and {r["reason"] for r in q} == {"no timestamp"}


def test_a_user_regex_format_from_the_config() -> None:
    traefik_clf = {
        "id": "traefik_clf", "kind": "regex",
        "regex": r'^(?P<client_ip>\S+) \S+ \S+ \[(?P<time>[^\]]+)\] "(?P<request>[^"]*)" (?P<status>\d{3}) '
                 r'(?P<bytes>\d+|-) "(?P<referer>[^"]*)" "(?P<user_agent>[^"]*)" \d+ "(?P<host>[^"]*)" '
                 r'"[^"]*" (?P<duration>\d+)ms$',
        "duration": {"field": "duration", "unit": "ms"},
        "timestamp": {"field": "time", "format": "%d/%b/%Y:%H:%M:%S %z"},
    }
    fmts = load_formats([traefik_clf])
    line = ('203.0.113.9 - - [21/Nov/2026:10:00:00 +0000] "GET /a?b=1 HTTP/2.0" 200 512 "-" '
            '"GPTBot/1.2" 17 "www.example.com" "http://10.0.0.5:8080" 42ms')
    stats, ev, _ = parse(line.encode() + b"\n", ctx(fmts["traefik_clf"], multi=True))
    assert stats.parsed == 1
    assert (ev[0]["host"], ev[0]["duration_ms"], ev[0]["site"], ev[0]["path"]) == ("www.example.com", 42.0, "example.com", "/a")
    assert detect_format([line] * 3, fmts)[0].id == "traefik_clf"


def test_a_user_json_mapping_from_the_config() -> None:
    traefik_json = {"id": "traefik_json", "kind": "json", "columns": {
        "time": "time", "ClientHost": "client_ip", "RequestHost": "host", "RequestMethod": "method",
        "RequestPath": "target", "DownstreamStatus": "status", "DownstreamContentSize": "bytes",
        "request_User-Agent": "user_agent", "request_Referer": "referer", "Duration": "duration"},
        "duration": {"field": "duration", "unit": "ns"}}
    line = ('{"ClientHost":"203.0.113.9","DownstreamContentSize":1234,"DownstreamStatus":200,"Duration":1500000,'
            '"RequestHost":"docs.example.com","RequestMethod":"GET","RequestPath":"/x?y=2",'
            '"request_User-Agent":"ClaudeBot/1.0","time":"2026-11-21T10:00:00.5+01:00"}')
    fmts = load_formats([traefik_json])
    stats, ev, _ = parse(line.encode(), ctx(fmts["traefik_json"], multi=True))
    assert stats.parsed == 1
    e = ev[0]
    assert e["ts"] == datetime(2026, 11, 21, 9, 0, 0, 500000, tzinfo=UTC)
    assert (e["duration_ms"], e["host"], e["query"], e["user_agent"]) == (1.5, "docs.example.com", "y=2", "ClaudeBot/1.0")


@pytest.mark.parametrize(
    ("definition", "message"),
    [
        ({"id": "x", "kind": "xml", "columns": {"a": "status"}}, "kind must be one of"),
        ({"id": "x", "kind": "regex", "regex": r"(?P<stauts>\d+) (?P<target>\S+)"}, "unknown raw field name(s) ['stauts']"),
        ({"id": "x", "kind": "regex", "regex": r"(?P<status>\d+"}, "not a valid RE2 pattern"),
        ({"id": "x", "kind": "json", "columns": {"a": "target", "t": "time", "m": "method"}}, "must yield `status`"),
        ({"id": "x", "kind": "json", "columns": {"a": "target", "t": "time", "s": "status"}}, "`method` (or `request`)"),
        ({"id": "x", "kind": "json", "columns": {"a[x]": "target", "s": "status", "ti": "time", "m": "method"}}, "bad array index"),
        ({"id": "x", "kind": "json", "columns": {"t": "target", "s": "status", "ti": "time", "m": "method"}, "duration": {"field": "d", "unit": "s"}},
         "duration.field names ['d']"),
        ({"id": "x", "kind": "json", "columns": {"t": "target", "s": "status", "ti": "time", "m": "method"}, "decode": {"t": "rot13"}}, "decode"),
        ({"id": "x", "kind": "json", "columns": {"t": "target", "s": "status", "ti": "time", "m": "method"}, "colums": {}}, "unknown key(s) ['colums']"),
    ],
)
def test_bad_user_formats_say_what_is_wrong(definition: dict, message: str) -> None:
    with pytest.raises(ConfigError, match="config formats\\[0\\]: format 'x'") as exc:
        load_formats([definition])
    assert message in str(exc.value)


def test_regexes_with_many_groups_are_split_into_one_pass_batches() -> None:
    rx = FORMATS["alb"].regex
    batches = regex_batches(rx)
    assert [len(names) for _, names in batches] == [4, 4, 3]
    assert sum((names for _, names in batches), []) == list(FORMATS["alb"].fields)
    for pattern, names in batches:  # each batch is the same pattern with only its groups capturing
        assert pattern.count("(?P<") == len(names)
        assert pattern.replace("(?:", "(").count("(") == rx.replace("(?:", "(").replace("(?P<", "(").count("(")


UTC_NOON = datetime(2026, 11, 21, 12, 0, 0, tzinfo=UTC)
NOON_S = int(UTC_NOON.timestamp())


@pytest.mark.parametrize(
    ("value", "want"),
    [
        (f"{NOON_S}", UTC_NOON),  # Unix seconds
        (f"{NOON_S}123", UTC_NOON + timedelta(milliseconds=123)),  # ms
        (f"{NOON_S}123456", UTC_NOON + timedelta(microseconds=123456)),  # us
        (f"{NOON_S}123456789", UTC_NOON + timedelta(microseconds=123456)),  # ns
        (f"{NOON_S}.25", UTC_NOON + timedelta(milliseconds=250)),  # decimal seconds
        (f"{NOON_S}250.5", UTC_NOON + timedelta(microseconds=250500)),  # decimal ms
        ("2026-11-21T12:00:00Z", UTC_NOON),
        ("2026-11-21T13:30:00+01:30", UTC_NOON),
        ("2026-11-21T04:00:00.123456789-08:00", UTC_NOON + timedelta(microseconds=123456)),
        ("2026-11-21T12:00:00.1234567Z", UTC_NOON + timedelta(microseconds=123456)),
        ("2026-11-21T17:30:00+0530", UTC_NOON),
        ("2026-11-21 12:00:00", UTC_NOON),
        ("21/Nov/2026:07:00:00 -0500", UTC_NOON),
        ("21/Nov/2026:12:00:00 +0000", UTC_NOON),
    ],
)
def test_every_timestamp_offset_and_precision_ends_in_utc(value: str, want: datetime) -> None:
    fmts = load_formats([{"id": "t", "kind": "json", "columns": {"t": "time", "s": "status", "u": "target", "m": "method"}}])
    line = f'{{"t": "{value}", "s": 200, "u": "/", "m": "GET"}}\n'.encode()
    stats, ev, q = parse(line, ctx(fmts["t"], multi=False))
    assert q == [] and ev[0]["ts"] == want


def test_unparseable_and_absent_timestamps_are_told_apart() -> None:
    fmts = load_formats([{"id": "t", "kind": "json", "columns": {"t": "time", "s": "status", "u": "target", "m": "method"}}])
    data = b'{"t": "yesterday", "s": 200, "u": "/", "m": "GET"}\n{"s": 200, "u": "/"}\n{"t": "9999999999999999999999999", "s": 200, "u": "/", "m": "GET"}\n'
    _, _, q = parse(data, ctx(fmts["t"], multi=False))
    assert [r["reason"] for r in q] == ["unparseable timestamp", "no timestamp", "unparseable timestamp"]


def test_hosts_match_exact_names_before_wildcards_and_are_never_doubled() -> None:
    fmts = load_formats([{"id": "h", "kind": "json", "columns": {"h": "host", "s": "status", "u": "target", "t": "time", "m": "method"}}])
    hosts = ["example.com", "WWW.Example.com:443", "a.b.example.com", "example.org", "xexample.com", "shop.example.org"]
    data = "".join(f'{{"h": "{h}", "s": 200, "u": "/", "t": 1763726400, "m": "GET"}}\n' for h in hosts).encode()
    sites = {"example.com": "one", "www.example.com": "two", "*.example.com": "three", "*.b.example.com": "four",
             "shop.example.org": "five"}
    c = ParseContext("o" * 16, "file:///x", fmts["h"], None, None, "https", sites, 65536)
    stats, ev, q = parse(data, c)
    assert [(e["host"], e["site"]) for e in ev] == [
        ("example.com", "one"), ("www.example.com", "two"), ("a.b.example.com", "four"), ("shop.example.org", "five")]
    assert stats.unknown_hosts == {"example.org": 1, "xexample.com": 1}
    assert [r["line_number"] for r in q] == [4, 5]


def test_a_line_longer_than_a_block_is_quarantined_once_and_numbering_continues() -> None:
    good = '1.2.3.4 - - [21/Nov/2026:10:00:00 +0000] "GET /{} HTTP/1.1" 200 1 "-" "curl/8"\n'
    data = (good.format(1) + "x" * 50_000 + "\n" + good.format(3)).encode()
    stats, ev, q = parse(data, ctx(FORMATS["combined"], multi=False, max_line=1000), block_bytes=4096, pieces=40)
    assert stats.lines_read == 3 and stats.balanced
    assert [e["line_number"] for e in ev] == [1, 3] and ev[1]["path"] == "/3"
    assert q[0]["line_number"] == 2 and q[0]["reason"] == "line longer than 1000 bytes"
    assert q[0]["raw"] == b"x" * 1001  # the head is kept, not the whole endless line


def test_invalid_utf8_in_json_and_w3c_lines_is_kept() -> None:
    line = b'{"ClientIP":"1.2.3.4","ClientRequestHost":"example.com","ClientRequestMethod":"GET","ClientRequestURI":"/\xff","EdgeResponseStatus":200,"EdgeStartTimestamp":1763726400,"ClientRequestUserAgent":"bot\xfe/1"}'
    stats, ev, q = parse(line + b"\n{broken\n", ctx(FORMATS["cloudflare"], multi=True))
    assert stats.invalid_utf8 == 1 and stats.parsed == 1 and ev[0]["user_agent"] == "bot\ufffd/1"
    assert q[0]["raw"] == b"{broken" and q[0]["reason"] == "does not match format cloudflare"


def test_nginx_and_apache_escapes_are_decoded() -> None:
    nginx = rb'1.2.3.4 - - [21/Nov/2026:10:00:00 +0000] "GET / HTTP/1.1" 200 1 "-" "say \x22hi\x22 B\xC3\xBCcherwurm/2 \x5C"'
    apache = rb'example.com:443 1.2.3.4 - - [21/Nov/2026:10:00:00 +0000] "GET / HTTP/1.1" 200 1 "-" "say \"hi\" \\ bot"'
    _, ev, _ = parse(nginx + b"\n", ctx(FORMATS["combined"], multi=False))
    assert ev[0]["user_agent"] == 'say "hi" Bücherwurm/2 \\'
    _, ev, _ = parse(apache + b"\n", ctx(FORMATS["vhost_combined"], multi=True))
    assert ev[0]["user_agent"] == 'say "hi" \\ bot'


def test_a_wrong_format_is_recognised_from_the_first_lines() -> None:
    data, _ = samples.render("cloudflare", samples.requests(20, seed=2))
    assert sample_match(data, FORMATS["combined"]) == (20, 0)
    assert sample_match(data, FORMATS["cloudflare"]) == (20, 20)


def test_nothing_known_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="cannot detect the format: none of the known formats"):
        detect_format(["<html><body>not a log</body></html>"] * 5, FORMATS)


def test_aliases_name_the_same_format() -> None:
    assert FORMATS["nginx_combined"] is FORMATS["combined"] is FORMATS["apache_combined"]
    assert FORMATS["aws_cloudfront"].id == "cloudfront"


@pytest.mark.parametrize("fid", ["combined", "nginx_main", "common", "alb"])
def test_quote_split_reads_the_same_fields_as_the_regex(fid: str) -> None:
    """Lines cut at their quotes (formats.QuoteSplit) give exactly what the whole regex gives.

    The oracle is Python's `re` on the format's regex (leftmost-first, like RE2). The lines are
    the format's fixtures, mutated where structure breaks: stray quotes, spaces, brackets,
    backslashes, a doubled quote, a trailing quoted field, a dropped character.
    """
    fmt = FORMATS[fid]
    split = quote_split(fmt.regex or "")
    assert split is not None and split.quoted
    rng = random.Random(7)
    base = [line for line, _ in getattr(samples, fid)(samples.requests(300, seed=3))]
    marks = ['"', " ", "]", "[", "\\", "-", "x", '\\"', '""', '" "', "\t"]
    lines = list(base)
    for line in base * 10:
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(line) + 1)
            op = rng.random()
            if op < 0.15:
                line = line[:at] + line[at + 1 :]
            elif op < 0.25:
                line += ' "-"'
            else:
                line = line[:at] + rng.choice(marks) + line[at:]
        lines.append(line)
    table = pa.table({"line_number": pa.array(range(len(lines)), pa.int64()), "line": pa.array(lines, pa.large_string())})
    con = duck_connection()
    con.register("lines_in", table)
    try:
        got = con.sql("WITH l AS (SELECT * FROM lines_in) " + _raw_select(fmt, None)).to_arrow_table().to_pylist()
    finally:
        con.unregister("lines_in")
    rx = re.compile(fmt.regex or "", re.ASCII)
    fast = 0
    for row, line in zip(got, lines, strict=True):
        m = rx.match(line)
        raw = {n: (m.group(n) or "") if m else "" for n in fmt.fields}
        want = {n: None if v == "" or (v == "-" and n != "bytes") else v for n, v in raw.items()}
        assert {n: row[f"f_{n}"] for n in fmt.fields} == want, line
        assert row["matched"] == any(raw.values()), line
        fast += row["fast"]
    assert len(base) <= fast < len(lines) - len(base)  # both paths were taken


@pytest.mark.parametrize(
    "regex",
    [
        r'(?P<client_ip>\S+) "(?P<request>[^"]*)" (?P<status>\d{3})',  # not anchored
        r'^(?i)(?P<client_ip>\S+) "(?P<request>[^"]*)" (?P<status>\d{3})',  # inline flag
        r'^(?P<client_ip>\S+) "(?P<request>[^"]*)" (?P<status>\d{3})|^(?P<x>-)',  # top-level alternative
        r'^(?P<status>\d{3})(?: "(?P<request>[^"]*)")?',  # quoted field inside a group
        r'^(?P<status>\d{3}) "(?P<request>[^"]*)" [^"]+',  # another double quote
        r'^(?P<status>\d{3}) (?P<request>\S+)',  # no quoted field
    ],
)
def test_quote_split_declines_patterns_it_cannot_cut(regex: str) -> None:
    assert quote_split(regex) is None


def test_quote_split_pieces() -> None:
    split = quote_split(FORMATS["common"].regex or "")
    assert split is not None
    assert split.quoted == ("request",)
    assert split.pattern(0) == r"^(?:(?P<client_ip>\S+) \S+ \S+ \[(?P<time>[^\]]+)\] )$"
    assert split.pattern(1) == r"^(?: (?P<status>\d{3}) (?P<bytes>\d+|-)\s*$)"  # the tail: from the start
    assert not split.open_tail and split.literal(1) is None
    alb = quote_split(FORMATS["alb"].regex or "")
    assert alb is not None and alb.open_tail and alb.quoted[2] is None and alb.literal(1) == " "


def test_every_packaged_format_passes_the_full_check() -> None:
    """The packaged formats are loaded without compiling their patterns in every process (a
    delivery task needs no DuckDB); here they are, as a user's are when the config is read."""
    from agent_traffic.formats import _build, _packaged, _packaged_definitions

    checked = {d["id"]: _build(d, "formats.yaml") for d in _packaged_definitions()}
    assert checked == _packaged()
    assert any(f.kind == "regex" for f in checked.values()) and any(f.detect for f in checked.values())
