"""The compiled fast path (ingest/_clf.c via shape.py) gives exactly what the DuckDB regex path
gives: every event column, every quarantine row (reason, line number, bytes) and every count.

Both paths run for real on the same bytes; AGENT_TRAFFIC_PURE_PARSE=1 forces the regex path.
Where the extension did not build, the parity tests skip (and say so); the rest still run.
"""

from __future__ import annotations

import hashlib
import importlib.util
import random
import sys
import types

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from agent_traffic.formats import load_formats
from agent_traffic.ingest import shape
from agent_traffic.ingest.parse import BlockParser, ParseContext, ParseStats, frame, parse_blocks
from agent_traffic.ingest.shape import PURE_ENV, class_table, compile_shape
from tests.data.formats import samples

FORMATS = load_formats()
NCSA = ("combined", "nginx_main", "common", "vhost_combined", "alb")
built = pytest.mark.skipif(shape._clf is None, reason="the C extension agent_traffic.ingest._clf is not built "
                           "(no C compiler at `pip install -e .`): only the regex path exists here")


def ctx(fid: str, *, multi: bool = True, max_line: int = 400, proxies: tuple[str, ...] = (),
        formats: dict | None = None) -> ParseContext:
    site = None if multi else "example.com"
    return ParseContext("obj0000000000001", "file:///logs/x.log.gz", (formats or FORMATS)[fid], site, site, "https",
                        samples.HOST_SITES if multi else {}, max_line, proxies)


def parse(data: bytes, c: ParseContext) -> tuple[dict, list[dict], list[dict]]:
    stats = ParseStats()
    events, quarantine = [], []
    pieces = [data[i : i + 4096] for i in range(0, len(data), 4096)]
    for b in parse_blocks(iter(pieces), c, 1 << 16, block_lines=500):
        stats.add(b.stats)
        events.append(b.events)
        quarantine.append(b.quarantine)
    return stats.as_dict(), pa.concat_tables(events).to_pylist(), pa.concat_tables(quarantine).to_pylist()


def both(data: bytes, c: ParseContext, monkeypatch: pytest.MonkeyPatch) -> None:
    """Parse with and without the fast path; everything must be equal, and the fast path used."""
    monkeypatch.setenv(PURE_ENV, "1")
    assert BlockParser(c).shape is None
    pure = parse(data, c)
    monkeypatch.delenv(PURE_ENV)
    assert BlockParser(c).shape is not None, "the format should compile to a shape"
    fast = parse(data, c)
    assert fast[0] == pure[0]
    for got, want in zip(fast[1], pure[1], strict=True):
        assert got == want
    assert fast[1:] == pure[1:]


TS = "21/Nov/2026:10:11:12 +0000"
UA = "Mozilla/5.0 (compatible; GPTBot/1.1; +https://openai.com/gptbot)"


def hostile_combined() -> list[bytes]:
    """Lines on and around the combined shape: every kind of damage the format meets in the wild."""
    ok = f'203.0.113.9 - - [{TS}] "GET /a?b=1 HTTP/1.1" 200 512 "https://r.example/" "{UA}"'
    lines = [ok, ok.replace("203.0.113.9", "2001:db8::1"), ok.replace("203.0.113.9", "[2001:db8::1]:443"),
             ok.replace("203.0.113.9", "203.0.113.9:5555"), ok.replace("/a?b=1", "https://example.com:8443/x?y"),
             ok.replace("/a?b=1", "http://user@blog.example.com/p"), ok.replace("/a?b=1", "*"),
             ok.replace("/a?b=1", "//double"), ok.replace("GET", "get"), ok.replace("GET", "PROPFIND"),
             ok.replace("GET", "G@T"), ok.replace("GET /a?b=1 HTTP/1.1", "-"), ok.replace("GET /a?b=1 HTTP/1.1", ""),
             ok.replace("GET /a?b=1 HTTP/1.1", "GET"), ok.replace("GET /a?b=1 HTTP/1.1", "GET  /two-spaces HTTP/1.1"),
             ok.replace(" HTTP/1.1", ""), ok.replace("200 512", "200 -"), ok.replace("200 512", "999 1"),
             ok.replace("200 512", "20 512"), ok.replace("200 512", "2000 512"), ok.replace("200 512", "200 5x"),
             ok.replace("200 512", "200 99999999999999999999999"), ok.replace("200 512", "200  512"),
             ok.replace('"https://r.example/"', '"-"'), ok.replace('"https://r.example/"', '""'),
             ok.replace(UA, "-"), ok.replace(UA, ""), ok.replace(UA, 'say "hi"'), ok.replace(UA, "tab\there"),
             ok.replace(UA, "nul\x00byte"), ok.replace(UA, "vt\x0bff\x0c"), ok.replace(UA, "Müller/1.0 ☃ 𝄞"),
             ok.replace(UA, 'esc \\"q\\" \\\\ \\x41'), ok.replace(UA, "back\\slash"),
             ok.replace("/a?b=1", "/\\x2e\\x2e/etc"), ok + ' "extra"', ok + " trailing", ok + "   ", ok[:-1],
             ok[: ok.index('"https')], ok.replace(" - - ", " -  - "), ok.replace(" - - ", " - "),
             ok.replace("[", "").replace("]", ""), ok.replace(TS, "21/Nov/2026:10:11:12 +0530"),
             ok.replace(TS, "21/Nov/2026:10:11:12 -1200"), ok.replace(TS, "21/Nov/2026:10:11:12 +1459"),
             ok.replace(TS, "21/Nov/2026:10:11:12"), ok.replace(TS, "31/Feb/2026:10:11:12 +0000"),
             ok.replace(TS, "21/nov/2026:10:11:12 +0000"), ok.replace(TS, "21/Nov/1899:10:11:12 +0000"),
             ok.replace(TS, "01/Jan/2200:00:00:00 +0000"), ok.replace(TS, "21/Nov/99999:10:11:12 +0000"),
             ok.replace(TS, "21/Nov/2026:25:61:61 +0000"), ok.replace(TS, "garbage"), ok.replace(TS, "]"),
             ok.replace("example", "EXAMPLE"), ok.replace("/a?b=1", "/a?"), ok.replace("/a?b=1", "/a#frag"),
             ok.replace("/a?b=1", "/" + "x" * 300), "", "   ", "\t", "x", "-", '"', '""""""""', "[]",
             ok.replace(" ", "\t"), ok.replace('"', "'"), ok + "\r", "\r", ok.replace("-", "\x00")]
    data = [s.encode() for s in lines]
    data += [ok.encode().replace(b"GPTBot", b"\xff\xfeBot")]  # invalid UTF-8: that block takes the regex
    return data


@built
def test_fast_path_equals_the_regex_path_on_hostile_combined_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    lines = hostile_combined()
    data = b"\n".join(lines) + b"\n"
    both(data, ctx("combined"), monkeypatch)
    both(data, ctx("combined", multi=False), monkeypatch)
    both(data.replace(b"\n", b"\r\n"), ctx("combined"), monkeypatch)
    both(b"\n".join(s for s in lines if b"\xff" not in s), ctx("combined"), monkeypatch)  # no trailing newline


@built
@pytest.mark.parametrize("fid", NCSA)
def test_fast_path_equals_the_regex_path_on_each_ncsa_format(fid: str, monkeypatch: pytest.MonkeyPatch) -> None:
    rendered = [line for line, _ in getattr(samples, fid)(samples.requests(200, seed=5, unknown_every=7))]
    data = ("\n".join(rendered + [mutate(random.Random(i), line) for i, line in enumerate(rendered * 3)]) + "\n")
    both(data.encode(), ctx(fid), monkeypatch)
    if "forwarded_for" in FORMATS[fid].fields:
        both(data.encode(), ctx(fid, proxies=("10.0.0.0/8", "203.0.113.0/24")), monkeypatch)


MARKS = ['"', " ", "]", "[", ":", "\\", "-", "x", "9", '\\"', '""', '" "', "\t", "\x00", "é", "💥", "\r", " -", ":80"]


def mutate(rng: random.Random, line: str) -> str:
    """A line near its format: characters dropped, inserted, doubled; fields cut or added."""
    for _ in range(rng.randint(0, 3)):
        at = rng.randrange(len(line) + 1)
        op = rng.random()
        if op < 0.2:
            line = line[:at] + line[at + 1 :]
        elif op < 0.3:
            line += rng.choice([' "-"', " ", ' "x" "y"', "\\"])
        elif op < 0.35:
            line = line[:at]
        elif op < 0.45:
            line = line[:at] + line[at:].replace(" ", "  ", 1)
        else:
            line = line[:at] + rng.choice(MARKS) + line[at:]
    return line


def near_combined(rng: random.Random) -> str:
    """A generated line of the combined family: each field drawn from valid and invalid values."""
    def pick(*xs: str) -> str:
        return rng.choice(xs)

    ip = pick("198.51.100.7", "2001:db8::7", "[::1]:80", "10.0.0.1:443", "-", "", "host.example", "1.2.3.4,5.6.7.8")
    ts = pick(TS, "01/Jan/2026:00:00:00 +0000", "21/Nov/2026:23:59:59 -0930", "29/Feb/2024:12:00:00 +1400",
              "29/Feb/2026:12:00:00 +0000", "21/Nov/2026:10:11:12 +00:00", "21/Nov/2026 10:11:12 +0000", "",
              "1/Nov/2026:1:2:3 +0000", "21/Dec/1900:00:00:00 +0000")
    method = pick("GET", "POST", "HEAD", "get", "M-SEARCH", "GE T", "", "\x16\x03\x01")
    target = pick("/", "/p?q=1&r=2", "/a b", "http://example.com/x", "https://blog.example.com:8443", "*",
                  "/%7Euser", "/ü", "?only", "")
    proto = pick(" HTTP/1.1", " HTTP/2.0", "", " HTTP/1.1 extra")
    status = pick("200", "404", "301", "099", "600", "20", "-", "1000")
    size = pick("0", "512", "-", "", "12345678901", "5k")
    ref = pick("-", "", "https://r.example/?a=\"b", "http://x/y z")
    ua = pick(UA, "-", "", "curl/8.0", "Mozilla/5.0 (ü)", "a\tb", "x\\\"y")
    line = f'{ip} - {pick("-", "frank")} [{ts}] "{method} {target}{proto}" {status} {size} "{ref}" "{ua}"'
    if rng.random() < 0.2:
        line += pick(' "203.0.113.1"', ' "-"', " ", ' "a" "b"', "\r")
    if rng.random() < 0.15:
        line = pick("example.com:443 ", "blog.example.com ", "EXAMPLE.com:80 ", "bad host ") + line
    return mutate(rng, line) if rng.random() < 0.3 else line


@built
@pytest.mark.parametrize("fid", NCSA[:4])
def test_property_generated_near_combined_lines_parse_the_same_both_ways(fid: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A property over 3,000 generated lines per format (seeded: a failure reproduces)."""
    rng = random.Random(fid)
    data = ("\n".join(near_combined(rng) for _ in range(3000)) + "\n").encode()
    both(data, ctx(fid), monkeypatch)


@built
def test_user_regex_formats_get_the_fast_path_with_their_own_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """A user's format from the config: its fields by the same rule; a request decoded before it is
    split (`plus`, `url`) is split by the query, not by the fast path."""
    common = {"timestamp": {"field": "time", "format": "%d/%b/%Y:%H:%M:%S %z"}}
    fmts = load_formats([
        {"id": "traefik_clf", "kind": "regex", **common, "duration": {"field": "duration", "unit": "ms"},
         "regex": r'^(?P<client_ip>\S+) \S+ \S+ \[(?P<time>[^\]]+)\] "(?P<request>[^"]*)" (?P<status>\d{3}) '
                  r'(?P<bytes>\d+|-) "(?P<referer>[^"]*)" "(?P<user_agent>[^"]*)" \d+ "(?P<host>[^"]*)" '
                  r'"[^"]*" (?P<duration>\d+)ms$'},
        {"id": "plus_clf", "kind": "regex", **common, "decode": {"request": "plus", "user_agent": "plus"},
         "regex": r'^(?P<client_ip>\S+) \[(?P<time>[^\]]+)\] "(?P<request>[^"]*)" (?P<status>\d{3}) '
                  r'"(?P<user_agent>[^"]*)"\s*$'},
    ])
    traefik = (f'203.0.113.9 - - [{TS}] "GET /a?b=1 HTTP/2.0" 200 512 "-" "GPTBot/1.2" 17 "www.example.com" '
               f'"http://10.0.0.5:8080" 42ms')
    lines = [traefik, traefik.replace("42ms", "x ms"), traefik.replace('"www.example.com"', '"EXAMPLE.com:8080"')]
    both(("\n".join(lines) + "\n").encode(), ctx("traefik_clf", formats=fmts), monkeypatch)
    plus = [f'203.0.113.9 [{TS}] "{r}" 200 "Mozilla/5.0+(X11)"' for r in
            ["GET+/a+HTTP/1.1", "GET /a+b HTTP/1.1", "GET++/x", "+GET /", "GET", "-"]]
    both(("\n".join(plus) + "\n").encode(), ctx("plus_clf", formats=fmts, multi=False), monkeypatch)


@built
def test_fast_path_reads_most_well_formed_lines_and_leaves_the_rest() -> None:
    """So the parity tests above compare the two paths, not the regex path with itself."""
    s = compile_shape(FORMATS["combined"].regex or "", FORMATS["combined"].fields)
    assert s is not None
    lines = [f'1.2.3.4 - - [{TS}] "GET / HTTP/1.1" 200 1 "-" "{UA}"'.encode(), b"junk",
             f'1.2.3.4 - - [{TS}] "GET /\\x41 HTTP/1.1" 200 1 "-" "-"'.encode()]
    buf = b"\n".join(lines)
    starts = np.array([0, len(lines[0]) + 1, len(lines[0]) + len(lines[1]) + 2])
    fast, cols = s.columns(buf, starts, np.array([len(x) for x in lines]))
    assert fast.tolist() == [True, False, False]  # the backslash line is the regex's
    assert cols["user_agent"].to_pylist() == [UA, "", ""]
    assert cols["time"][0].as_py() == TS
    requests = [b"GET /x HTTP/1.1", b"GET  /x", b"GET", b"G@T /x", b" /x", b"-", b"", b"get /" + b"y" * 20 + b" z",
                b"OPTIONS * HTTP/1.1", b"GET /x?\xc3\xbc HTTP/1.1"]
    lines = [f'1.2.3.4 - - [{TS}] "'.encode() + r + b'" 200 1 "-" "-"' for r in requests]
    buf = b"\n".join(lines)
    starts = np.cumsum([0] + [len(x) + 1 for x in lines[:-1]])
    fast, views, valid = s.scan(buf, starts, np.array([len(x) for x in lines]), class_table("[A-Za-z]+"))
    assert fast.all()
    split = [pa.Array.from_buffers(pa.string_view(), len(lines), [pa.py_buffer(np.packbits(valid[k], bitorder="little")),
                                                                   pa.py_buffer(views[len(s.slots) + k]), pa.py_buffer(buf)])
             for k in range(2)]
    assert list(zip(split[0].to_pylist(), split[1].to_pylist(), strict=True)) == [
        ("GET", "/x"), ("GET", None), (None, None), (None, None), (None, None), (None, None), (None, None),
        ("get", "/" + "y" * 20), ("OPTIONS", "*"), ("GET", "/x?ü")]


@built
def test_hostile_offsets_and_programs_never_read_outside_the_block() -> None:
    s = compile_shape(FORMATS["combined"].regex or "", FORMATS["combined"].fields)
    assert s is not None
    buf = b'1.2.3.4 - - [x] "GET / HTTP/1.1" 200 1 "-" "-"'
    fast, _, valid = s.scan(buf, np.array([0, 5, -1, len(buf), 1 << 40]), np.array([len(buf), len(buf), 3, 1, 1]),
                            class_table("[A-Z]+"))
    assert fast.tolist() == [True, False, False, False, False]
    assert valid.tolist() == [[True, False, False, False, False]] * 2
    bad_jump = np.array([[5, -1, 0, 0]], np.int32).tobytes()  # a backward jump would loop forever
    with pytest.raises(ValueError, match="bad shape program"):
        shape._clf.scan(buf, np.zeros(1, np.int64), np.ones(1, np.int64), bad_jump, b"", b"", 0,
                        np.zeros(1, np.uint8), np.zeros((0, 1, 16), np.uint8), -1, b"", bytearray(), b"", bytearray())
    with pytest.raises(ValueError, match="sizes"):
        shape._clf.scan(buf, np.zeros(2, np.int64), np.ones(1, np.int64), s.program, s.classes, s.pool,
                        len(s.slots), np.zeros(2, np.uint8), np.zeros((len(s.slots), 2, 16), np.uint8), -1, b"", bytearray(), b"",
                        bytearray())
    with pytest.raises(ValueError, match="sizes"):  # a request slot without its method table
        shape._clf.scan(buf, np.zeros(1, np.int64), np.ones(1, np.int64), s.program, s.classes, s.pool,
                        len(s.slots), np.zeros(1, np.uint8), np.zeros((len(s.slots) + 2, 1, 16), np.uint8), 2, b"",
                        np.zeros(2, np.uint8), b"", bytearray())


EDGE_TIMES = ["29/Feb/2024:12:00:00 +0000", "29/Feb/2026:12:00:00 +0000", "29/Feb/2000:00:00:00 +0000",
              "29/Feb/1900:00:00:00 +0000", "29/Feb/2100:00:00:00 +0000", "31/Apr/2026:00:00:00 +0000",
              "31/Dec/2026:23:59:59 +0000", "31/Dec/2026:23:59:60 +0000", "21/Nov/2026:24:00:00 +0000",
              "21/Nov/2026:10:60:00 +0000", "00/Nov/2026:10:11:12 +0000", "32/Jan/2026:10:11:12 +0000",
              "21/Nov/2026:10:11:12 -1200", "21/Nov/2026:10:11:12 +1400", "21/Nov/2026:10:11:12 +0530",
              "21/Nov/2026:10:11:12 -0000", "21/Nov/2026:10:11:12 +1459", "21/Nov/2026:10:11:12 +1500",
              "21/Nov/2026:10:11:12 +2359", "21/Nov/2026:10:11:12 +2400", "21/Nov/2026:10:11:12 +0060",
              "01/Jan/1900:00:00:00 +0000", "01/Jan/1900:00:00:00 +0100", "31/Dec/1899:23:59:59 -0100",
              "31/Dec/2199:23:59:59 +0000", "31/Dec/2199:23:59:59 -0100", "01/Jan/2200:00:00:00 +0000",
              "21/Nov/1800:10:11:12 +0000", "21/Nov/2300:10:11:12 +0000", "21/Nov/0000:10:11:12 +0000",
              "21/nov/2026:10:11:12 +0000", "21/NOV/2026:10:11:12 +0000", "21/Nov/2026:10:11:12 Z",
              "21/Nov/2026:10:11:12 +00:00", "1/Nov/2026:10:11:12 +0000", "21/Nov/2026:10:11:12  +0000",
              "21/Sep/2026:1:2:3 +0000", "21/Nov/2026:10:11:12 +0000 ", "-", ""]


def canonical_corpus() -> list[bytes]:
    """Lines the compiled path may hand canonical (single site, combined), and their near misses."""
    ok = f'203.0.113.9 - - [{TS}] "GET /a?b=1 HTTP/1.1" 200 512 "https://r.example/" "{UA}"'
    lines = [ok.replace(TS, t) for t in EDGE_TIMES]
    lines += [ok.replace("200 512", f"{st} {b}") for st in ("100", "599", "099", "600", "000", "404")
              for b in ("0", "-", "1" * 18, "9" * 19, "00012")]
    lines += [ok.replace("/a?b=1", t) for t in ("/", "/a?", "/?", "/a?b?c", "/a??", "/p?u=http://x", "/a://b", "//x",
                                                "/" + "y" * 11, "/" + "y" * 12, "/" + "y" * 13 + "?q", "/a#f?x",
                                                "/?" + "z" * 20, "*", "http://h/p")]
    lines += [ok.replace("GET", m) for m in ("get", "Get", "PROPFIND", "VERSION-CONTROL", "M-SEARCH", "G_T")]
    lines += [ok.replace("203.0.113.9", ip) for ip in ("-", "::1", "[::1]:80", "1.2.3.4:5", "host.example", "",
                                                                "2001:db8::1", "::ffff:192.0.2.1", "fe80::1%eth0", "::", ":",
                                                                "12:34", "1.2.3.4:", ":80", "[2001:db8::1]", "1:2:3",
                                                                "2001:DB8::A")]
    lines += [ok.replace('"https://r.example/"', '"-"').replace(UA, "-"), ok.replace(UA, ""), ok + " tail",
              ok.replace(" HTTP/1.1", ""), ok.replace("GET /a?b=1 HTTP/1.1", "GET")]
    return [s.encode() for s in lines]


@built
@pytest.mark.parametrize("crlf", [False, True])
def test_canonical_lines_equal_the_query_at_the_edges(crlf: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Timestamps at the edges (leap days, second 60, offsets up to +-24h, years 1800-2300, month
    case), statuses, sizes, targets and methods: lines the C hands canonical and lines it leaves to
    the query parse exactly as the regex path parses them."""
    data = b"\n".join(canonical_corpus() + hostile_combined()[:-1]) + b"\n"
    data = data.replace(b"\n", b"\r\n") if crlf else data
    c = ctx("combined", multi=False)
    parser = BlockParser(c)
    assert parser.canon is not None
    block = frame(data, 1)
    canon = parser._fast_fields(block, None, pa.array(np.arange(1, len(block.starts) + 1)))["k_canon"]
    assert 40 < pc.sum(canon).as_py() < len(canon) - 40  # both kinds are there
    both(data, c, monkeypatch)


@built
def test_bare_ipv6_clients_are_canonical_and_addresses_with_ports_are_the_querys() -> None:
    """The query keeps a client address as it is unless it is bracketed or has one colon (v4:port),
    so bare IPv6 lines skip it like IPv4 ones; the others are normalised by the query."""
    ok = f'203.0.113.9 - - [{TS}] "GET /a?b=1 HTTP/1.1" 200 512 "-" "{UA}"'
    kept = ("203.0.113.9", "2001:db8::1", "::ffff:192.0.2.1", "fe80::1%eth0", "::", "-")
    left = ("[::1]:80", "[2001:db8::1]", "1.2.3.4:5", "12:34", ":", ":80")
    data = b"\n".join(ok.replace("203.0.113.9", ip).encode() for ip in kept + left) + b"\n"
    parser = BlockParser(ctx("combined", multi=False))
    block = frame(data, 1)
    canon = parser._fast_fields(block, None, pa.array(np.arange(1, len(block.starts) + 1)))["k_canon"]
    assert canon.to_pylist() == [True] * len(kept) + [False] * len(left)


@built
@pytest.mark.parametrize("fid", NCSA[:3])
def test_property_generated_lines_of_one_site_parse_the_same_both_ways(fid: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The generated lines again, for a source of one site: most lines are then canonical."""
    rng = random.Random(fid + "-one-site")
    data = ("\n".join(near_combined(rng) for _ in range(3000)) + "\n").encode()
    assert BlockParser(ctx(fid, multi=False)).canon is not None
    both(data, ctx(fid, multi=False), monkeypatch)
    both(data, ctx(fid, multi=False, max_line=150), monkeypatch)  # long lines are quarantined, not canonical


@built
def test_canonical_times_are_duckdbs_strptime() -> None:
    """The C reading of CLF times against DuckDB's strptime, over random dates, times and offsets
    (1890-2210): equal wherever the C answers, and it answers for every plain in-range one."""
    rng = random.Random(7)
    months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
    times = [f"{rng.randint(1, 31):02d}/{rng.choice(months)}/{rng.randint(1890, 2210)}:{rng.randint(0, 23):02d}:"
             f"{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d} {rng.choice('+-')}{rng.randint(0, 14):02d}"
             f"{rng.choice([0, 30, 45, 59]):02d}" for _ in range(5000)]
    s = compile_shape(FORMATS["combined"].regex or "", FORMATS["combined"].fields)
    assert s is not None
    lines = [f'1.2.3.4 - - [{t}] "GET / HTTP/1.1" 200 1 "-" "-"'.encode() for t in times]
    buf = b"\n".join(lines)
    starts = np.cumsum([0] + [len(x) + 1 for x in lines[:-1]])
    fast, _, valid, ints = s.scan_canonical(buf, starts, np.array([len(x) for x in lines]), class_table("[A-Z]+"),
                                            (1, 3, 4, 0))
    assert fast.all()
    con = duckdb.connect()
    want = con.execute("SELECT epoch_us(try_strptime(t, '%d/%b/%Y:%H:%M:%S %z')) AS us, us >= epoch_us(TIMESTAMPTZ "
                       "'1900-01-01 00:00:00+00') AND us < epoch_us(TIMESTAMPTZ '2200-01-01 00:00:00+00') AS inside "
                       "FROM (SELECT unnest(?) AS t)", [times]).fetchall()
    canon = valid[4]
    for i, (us, inside) in enumerate(want):
        assert bool(canon[i]) == bool(inside), times[i]
        if canon[i]:
            assert ints[0, i] == us, times[i]


@built
def test_event_ids_are_the_querys_md5_and_refuse_lines_outside_the_block() -> None:
    rng = random.Random(3)  # around 64-byte blocks, around the 2,048 bytes hashed eight at a time, and longer
    lines = [b"", b"x", b"y" * 55, b"z" * 56, b"w" * 64, b"\x00\xc3\xbc" * 50, b"v" * 1000]
    lines += [bytes(rng.randrange(256) for _ in range(n)) for n in [*range(2010, 2050), 5000, 3, 70, 4000]]
    buf = b"\n".join(lines)
    starts = np.cumsum([0] + [len(x) + 1 for x in lines[:-1]])
    nums = np.array([1, 9, 10, 99, 123456789, 2**40, 7, *range(100, 100 + len(lines) - 7)])
    ids = shape.event_ids(buf, starts, np.array([len(x) for x in lines]), nums, "s3://b/ü.gz").to_pylist()
    assert ids == [hashlib.md5(f"s3://b/ü.gz:{n}:".encode() + x).hexdigest() for n, x in zip(nums, lines, strict=True)]
    for start, length in ((-1, 1), (len(buf), 1), (0, len(buf) + 1), (1 << 40, 1)):
        with pytest.raises(ValueError, match="outside"):
            shape.event_ids(buf, np.array([start]), np.array([length]), np.array([1]), "s")


@built
def test_lines_framed_in_c_are_numpys(monkeypatch: pytest.MonkeyPatch) -> None:
    """The C framing gives numpy's offsets, lengths and string views byte for byte: blank lines,
    CR LF and lone CRs, a last line without a newline, lines around the 12 bytes kept inside a
    view, invalid UTF-8, and random bytes."""
    rng = random.Random(5)
    cases = [b"", b"\n", b"\n\n\n", b"a", b"a\n", b"\r\n", b"a\r\n\r\n\n", b"abc\rdef\r", b"\r",
             b"x" * 12 + b"\n" + b"y" * 13 + b"\r\n" + b"z" * 11, b"\xff\xfe\n\xc3", b"\x00\n\x00\x00"]
    cases += [bytes(rng.choice(b"ab\r\n\xc3\x00") for _ in range(rng.randrange(80))) for _ in range(2000)]
    for data in cases:
        fast = frame(data, 1)
        assert shape.count_lines(data) == len(fast.starts)
        monkeypatch.setenv(PURE_ENV, "1")
        pure = frame(data, 1)
        assert shape.count_lines(data) == len(pure.starts)
        monkeypatch.delenv(PURE_ENV)
        assert fast.starts.tolist() == pure.starts.tolist() and fast.lengths.tolist() == pure.lengths.tolist()
        assert fast.text.buffers()[1].to_pybytes() == pure.text.buffers()[1].to_pybytes(), data
        assert fast.text.to_pylist() == pure.text.to_pylist() and fast.repaired == pure.repaired


@built
def test_framing_refuses_buffers_that_do_not_hold_the_lines() -> None:
    data = b"a\nbb\nccc"
    for n in (0, 2, 4):  # three lines
        with pytest.raises(ValueError, match="lines"):
            shape._clf.frame(data, np.empty(n, np.int64), np.empty(n, np.int64), np.empty((n, 16), np.uint8))
    with pytest.raises(ValueError, match="sizes"):
        shape._clf.frame(data, np.empty(3, np.int64), np.empty(2, np.int64), np.empty((3, 16), np.uint8))
    with pytest.raises(ValueError, match="sizes"):
        shape._clf.frame(data, np.empty(3, np.int64), np.empty(3, np.int64), np.empty((3, 15), np.uint8))


@pytest.mark.parametrize("fid", NCSA)
def test_the_ncsa_family_is_recognised_by_its_regex(fid: str) -> None:
    fmt = FORMATS[fid]
    assert compile_shape(fmt.regex or "", fmt.fields) is not None


@pytest.mark.parametrize(
    "regex",
    [
        r"^(?P<status>\d+?) (?P<request>.*)",  # lazy repeat, `.`
        r"^(?i)(?P<status>\d{3}) (?P<request>\S+)",  # flags
        r"^(?P<status>\d{3}) (?P<request>[[:alpha:]]+)",  # POSIX class: RE2 reads it otherwise than Python
        r"^(?P<status>\d{3}) (?P<request>\S+)(?=x)",  # lookahead
        r"^(?P<status>\d{3}) (?P<request>(?:ab)+)",  # a repeat of a sequence
        r"^(?P<status>\d{3}) (?P<request>[^é]+)",  # a class with a non-ASCII member
        r"^(?P<status>\d{3}) (?:(?P<request>\S*))?",  # an optional group that can match nothing
        r"^(?P<status>\d{,3}) (?P<request>\S+)",  # RE2 reads `{,3}` as text, Python as a repeat
        "^(?P<status>\\d{3}) (?P<request>\ud800+)",  # a lone surrogate
    ],
)
def test_patterns_the_fast_path_cannot_run_keep_the_regex(regex: str) -> None:
    assert compile_shape(regex, ("status", "request")) is None


def test_a_stale_build_of_the_extension_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """A .so built before scan() and event_ids() took their present arguments (ABI 2) is ignored:
    the regex path runs until `make setup` rebuilds it."""
    import agent_traffic.ingest as ingest  # noqa: PLC0415

    stale = types.ModuleType("agent_traffic.ingest._clf")
    stale.ABI = 2  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "agent_traffic.ingest._clf", stale)
    monkeypatch.setattr(ingest, "_clf", stale, raising=False)
    spec = importlib.util.spec_from_file_location("shape_again", shape.__file__)
    assert spec is not None and spec.loader is not None
    again = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "shape_again", again)  # dataclasses look their module up
    spec.loader.exec_module(again)
    assert again._clf is None and not again.enabled()


def test_without_the_extension_parsing_takes_the_regex_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a machine without a C compiler runs: no shape, the same events."""
    monkeypatch.setattr(shape, "_clf", None)
    c = ctx("combined", multi=False)
    assert BlockParser(c).shape is None
    line = f'203.0.113.9 - - [{TS}] "GET /a?b=1 HTTP/1.1" 200 512 "-" "{UA}"\n'.encode()
    stats, events, _ = parse(line, c)
    assert stats["parsed"] == 1 and events[0]["path"] == "/a" and events[0]["user_agent"] == UA
