"""The column-wise serializer gives, byte for byte, what a dict per event and orjson would give.

The reference below is the per-row mapping the planner used before serialization became
column-wise (kept here only as the oracle); both run on awkward rows (nulls, empty strings,
unicode, quotes, backslashes and control characters, IPv6, invalid IPs, half-millisecond and
half-unit roundings) and must cut the same chunks with the same ids and bodies.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import xxhash

from agent_traffic.config import Destination, SecretRef, Site
from agent_traffic.delivery.plan import build_chunks
from agent_traffic.delivery.vendors import vendor
from agent_traffic.delivery.vendors.base import apply_ip_policy
from agent_traffic.delivery.vendors.scrunch import epoch_seconds
from agent_traffic.staging.identity import line_runs

SITE = Site(name="example.com")


@pytest.fixture(autouse=True, params=["compiled", "arrow"])
def serializer(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs on both ways `obj` serializes: the extension (`_jsonobj.c`) and Arrow kernels."""
    from agent_traffic.delivery.vendors import json_columns as jc

    if request.param == "arrow":
        monkeypatch.setattr(jc, "_jsonobj", None)
    elif jc._jsonobj is None:
        pytest.skip("the C extension agent_traffic.delivery.vendors._jsonobj is not built (no C compiler at "
                    "`pip install -e .`): only the Arrow path exists here")
    return request.param


# --------------------------------------------------------------------------- the per-row oracle


def _path(row: dict[str, Any]) -> str:
    q = row.get("query")
    return f"{row['path']}?{q}" if q else row["path"]


def _positive(x: float | None) -> int | None:
    if x is None:
        return None
    n = int(round(x))
    return n if n > 0 else None


def reference_event(name: str, row: dict[str, Any], dest: Destination) -> dict[str, Any]:
    if name == "scrunch":
        out: dict[str, Any] = {
            "domain": SITE.domain, "user_agent": row["user_agent"], "url": row["url"], "path": row["path"],
            "method": row["method"], "status_code": int(row["status"]), "timestamp": epoch_seconds(row["ts_us"]),
        }
        if row.get("duration_ms") is not None:
            out["response_time"] = int(round(row["duration_ms"]))
        ip = apply_ip_policy(row.get("client_ip"), dest.ip_policy)
        if ip:
            out["ip"] = ip
        return out
    if name == "hitkeep":
        out = {"path": _path(row), "hostname": row.get("host") or SITE.domain, "status_code": int(row["status"])}
        if row.get("content_type"):
            out["content_type"] = row["content_type"]
        for key, value in (("response_ms", row.get("duration_ms")), ("bytes_served", row.get("bytes"))):
            n = _positive(value)
            if n is not None:
                out[key] = n
        out["user_agent"] = row["user_agent"]
        return out
    headers = {"user-agent": row["user_agent"]}
    if row.get("referer"):
        headers["referer"] = row["referer"]
    ip = apply_ip_policy(row.get("client_ip"), dest.ip_policy)
    if ip:
        headers["x-forwarded-for"] = ip
    out = {"request_path": _path(row), "request_method": row["method"], "request_headers": headers,
           "response_status_code": int(row["status"])}
    if row.get("duration_ms") is not None:
        out["response_duration_in_milliseconds"] = int(round(row["duration_ms"]))
    if dest.send_sdk_fields:
        if row.get("content_type"):
            out["response_headers"] = {"content-type": row["content_type"]}
        created = datetime.fromtimestamp(row["ts_us"] / 1e6, UTC)
        out["created"] = created.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return out


def reference_chunks(rows: list[dict[str, Any]], dest: Destination, skipped: Counter[str]) -> list[tuple]:
    """The old greedy loop: add events one by one, close a chunk at the byte or event limit."""
    v = vendor(dest.vendor)
    max_bytes, max_events = v.limits(dest)
    out, cur, cur_rows, size = [], [], [], 0

    def flush() -> None:
        joined = b"".join(x + v.separator for x in cur)
        body, ctype = v.body(joined, len(cur))
        lines = [r["line_number"] for r in cur_rows]
        key = f"{dest.name}|{SITE.name}|obj|{lines[0]}|{lines[-1]}|{len(cur)}|{xxhash.xxh3_128_hexdigest(body)}"
        oldest = min(r["ts_us"] for r in cur_rows) / 1e6
        out.append((hashlib.sha256(key.encode()).hexdigest()[:24], body, ctype, line_runs(lines), oldest))

    for row in rows:
        line = orjson.dumps(reference_event(dest.vendor, row, dest))
        if len(line) + 1 > max_bytes:
            skipped[f"larger than {v.title}'s {max_bytes - 1:,}-byte request limit"] += 1
            continue
        if cur and (size + len(line) + 1 > max_bytes or len(cur) >= max_events):
            flush()
            cur, cur_rows, size = [], [], 0
        cur.append(line)
        cur_rows.append(row)
        size += len(line) + 1
    if cur:
        flush()
    return out


# --------------------------------------------------------------------------- awkward rows

AWKWARD = ["", "é ü 中文 🤖", 'say "hi"', "back\\slash", "tab\there", "nl\nx\r", "\x00\x01\x1f\x7f", "\u2028/</"]
IPS = [None, "", "203.0.113.77", "2001:db8:85a3:8d3::7", "::1", "not-an-ip", "10.1.2.3", "fe80::1ff:fe23:4567:890a"]
BASE_US = 1_763_683_200_000_000  # 2025-11-21


def awkward_rows(n: int, seed: int) -> list[dict[str, Any]]:
    rnd = random.Random(seed)
    rows = []
    for i in range(n):
        frac = rnd.choice([0, 0, 500, 62_500, 187_500, 999_500, 999_999, 1, 250_000, rnd.randrange(1_000_000)])
        ua = "GPTBot/1.0 " + rnd.choice(AWKWARD) + "x" * rnd.choice([0, 5, 300, 1_500])
        path = "/" + rnd.choice(AWKWARD) + f"/{i}"
        rows.append({
            "ts_us": BASE_US + i * 1_000_000 + frac,
            "host": rnd.choice([None, "", "www.example.com", "ünï.example"]),
            "method": rnd.choice(["GET", "POST", 'WE"IRD']),
            "path": path,
            "query": rnd.choice([None, "", "a=1&b=\"2\"", "q=é"]),
            "url": "https://example.com" + path,
            "status": rnd.choice([200, 404, 500, 301]),
            "bytes": rnd.choice([None, 0, 1, 48231]),
            "duration_ms": rnd.choice([None, 0.0, 0.2, 0.5, 1.5, 2.5, 12.6, 143.0, -1.0]),
            "client_ip": rnd.choice(IPS),
            "user_agent": ua,
            "referer": rnd.choice([None, "", "https://chatgpt.com/", "https://x/\"q\""]),
            "content_type": rnd.choice([None, "", "text/html; charset=utf-8"]),
            "line_number": 10 + i * rnd.choice([1, 1, 1, 2]),
        })
    # line numbers ascending, as the planner's input is
    for j, r in enumerate(rows):
        r["line_number"] = (rows[j - 1]["line_number"] + rnd.choice([1, 1, 2])) if j else 1
    return rows


def as_table(rows: list[dict[str, Any]], dictionary: tuple[str, ...] = ()) -> pa.Table:
    """The rows as the planner reads them; the `dictionary` columns as Arrow dictionaries (each
    table its own dictionary), as the planner reads a vendor's `dictionary_columns`."""
    t = pa.Table.from_pylist(rows)
    ts = pa.array([r["ts_us"] for r in rows], pa.int64()).cast(pa.timestamp("us", "UTC"))
    t = t.drop_columns(["ts_us"]).append_column("ts", ts)
    for name in dictionary:
        t = t.set_column(t.column_names.index(name), name, pc.dictionary_encode(t[name]))
    return t


def dest(name: str, **kw: Any) -> Destination:
    base: dict[str, Any] = {"name": f"{name}-x", "vendor": name, "secret": SecretRef(env="K")}
    if name == "scrunch":
        base["site_id"] = "01JDEM0SANDB0X0000000000AA"
    if name == "hitkeep":
        base |= {"site_id": "3f1c2a9e-4b6d-4e8f-9a0b-1c2d3e4f5a6b", "base_url": "https://hitkeep.example.com"}
    return Destination(**{**base, **kw})


CASES = [
    ("scrunch", {}), ("scrunch", {"ip_policy": "truncate"}), ("scrunch", {"ip_policy": "omit"}),
    ("scrunch", {"max_batch_bytes": 2_000}), ("scrunch", {"max_batch_events": 7}),
    ("hitkeep", {}), ("hitkeep", {"max_batch_bytes": 1_200}),
    ("knownagents", {}), ("knownagents", {"ip_policy": "truncate", "send_sdk_fields": True}),
    ("knownagents", {"ip_policy": "omit", "max_batch_bytes": 3_000, "max_batch_events": 5}),
]


@pytest.mark.parametrize(("name", "kw"), CASES)
def test_column_wise_chunks_are_the_per_row_ones_byte_for_byte(name: str, kw: dict[str, Any]) -> None:
    rows = awkward_rows(400, seed=len(kw) * 7 + len(name))
    d = dest(name, **kw)
    want_skipped: Counter[str] = Counter()
    want = reference_chunks(rows, d, want_skipped)
    for dictionary in ((), vendor(name).dictionary_columns):  # as read, and as the planner reads
        got_skipped: Counter[str] = Counter()
        got = [(c.chunk_id, c.body, c.content_type, c.lines, c.oldest_ts)
               for c in build_chunks(as_table(rows, dictionary), SITE, d, "obj", got_skipped)]
        assert got_skipped == want_skipped
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert g == w


def test_windows_do_not_move_the_cuts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Serializing a window of rows at a time cuts where one pass over all rows cuts."""
    import agent_traffic.delivery.plan as plan

    rows = awkward_rows(300, seed=3)
    d = dest("scrunch", max_batch_bytes=5_000, max_batch_events=40)
    whole = [c.chunk_id for c in build_chunks(as_table(rows), SITE, d, "obj", Counter())]
    for size in (7, 64):
        monkeypatch.setattr(plan, "ROWS_PER_BATCH", size)
        assert [c.chunk_id for c in build_chunks(as_table(rows), SITE, d, "obj", Counter())] == whole


@pytest.mark.parametrize(("name", "kw"), [("scrunch", {"max_batch_bytes": 3_000}), ("knownagents", {"ip_policy": "truncate"}),
                                         ("hitkeep", {})])
def test_an_object_read_part_by_part_is_sent_in_line_order(name: str, kw: dict[str, Any],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The planner reads an object's per-provider parts one after another, each in line order; the
    chunks are those of the same events sorted, whatever the window size, and for a large object
    (its fields computed a segment at a time) whatever the segment size."""
    import agent_traffic.delivery.plan as plan

    rows = awkward_rows(300, seed=11)
    parts = [rows[k::3] for k in (2, 0, 1)]  # three interleaved parts, each ascending
    d = dest(name, **kw)
    want = [(c.chunk_id, c.body, c.lines) for c in build_chunks(as_table(rows), SITE, d, "obj", Counter())]
    shuffled = pa.concat_tables([as_table(p) for p in parts])
    dictionary = vendor(name).dictionary_columns  # each part its own dictionary, as each staged file
    shuffled_dictionaries = pa.concat_tables([as_table(p, dictionary) for p in parts])
    for size, segment in ((5, 10**9), (64, 10**9), (8_192, 10**9), (5, 37), (64, 37), (8, 8)):
        monkeypatch.setattr(plan, "ROWS_PER_BATCH", size)
        monkeypatch.setattr(plan, "SEGMENT_ROWS", segment)  # a large object: fields a segment at a time
        for table in (shuffled, as_table(rows), shuffled_dictionaries):
            got = [(c.chunk_id, c.body, c.lines) for c in build_chunks(table, SITE, d, "obj", Counter())]
            assert got == want, (size, segment)


def test_vendor_event_is_the_reference_object() -> None:
    for row in awkward_rows(15, seed=9):
        for name, kw in CASES:
            d = dest(name, **kw)
            assert vendor(name).event(row, SITE, d) == reference_event(name, row, d)


def test_unquoted_strings_are_quoted_by_obj_as_orjson_would() -> None:
    """`text` values reach `obj` without quotes and `obj` adds them with the key: a null leaves its
    key out (JSON null when required), first key or not, escapes included."""
    from agent_traffic.delivery.vendors import json_columns as jc

    some = [None, "", 'a"b\\c', "é\x01\n", "plain"]
    every = ["x", "y", 'z"', "w", "v"]
    cases = [
        [("a", some, False), ("b", some, True), ("c", every, False)],
        [("a", some, True), ("b", some, False)],
        [("c", every, False), ("a", some, False)],
        [("a", some, False)],
    ]
    for case in cases:
        fields = []
        for key, values, required in case:
            t = jc.text(pa.array(values, pa.string()))
            fields.append((key, jc.required(t) if required else t))
        want = [orjson.dumps({key: values[i] for key, values, required in case
                              if values[i] is not None or required}).decode() for i in range(len(some))]
        assert jc.obj(fields, len(some)).to_pylist() == want
        assert jc.obj(fields, len(some), end="\n").to_pylist() == [w + "\n" for w in want]


def test_escapes_are_found_in_every_scanned_block(monkeypatch: pytest.MonkeyPatch) -> None:
    """The scan for characters to escape goes block by block: rows in later blocks, and rows
    spanning two blocks, are escaped as orjson escapes them."""
    from agent_traffic.delivery.vendors import json_columns as jc

    rng = random.Random(5)
    alphabet = ["a", "é", "/", '"', "\\", "\x00", "\n", "\x1f", " "]
    values = [None if rng.random() < 0.1 else "".join(rng.choices(alphabet, weights=[30, 3, 3, 1, 1, 1, 1, 1, 3],
                                                                    k=rng.randrange(0, 12)))
              for _ in range(300)]
    values += ["plain"] * 50 + ['last"']  # the only escape far past the first block
    want = [None if v is None else orjson.dumps(v).decode() for v in values]
    for block in (1, 5, 64, 1 << 18):
        monkeypatch.setattr(jc, "_SCAN_BLOCK", block)
        assert jc.string(pa.array(values, pa.string())).to_pylist() == want
        assert jc.string(pa.array(values, pa.string()).slice(7)).to_pylist() == want[7:]


def test_every_byte_value_is_escaped_as_orjson_escapes_it() -> None:
    """Each of the 128 ASCII characters, alone and amid multi-byte UTF-8, in a sliced array."""
    from agent_traffic.delivery.vendors import json_columns as jc

    values = [chr(b) for b in range(128)] + [f"é{chr(b)}🤖{chr(b)}" for b in range(128)] + [None, ""]
    arr = pa.array(["skipped"] + values, pa.string()).slice(1)
    fields = [("k", jc.required(jc.text(arr))), ("raw", pa.array(["1"] * len(values)))]
    want = [orjson.dumps({"k": v, "raw": 1}).decode() + "\n" for v in values]
    assert jc.obj(fields, len(values), end="\n").to_pylist() == want


def test_the_compiled_writer_refuses_buffers_that_do_not_hold_their_rows(serializer: str) -> None:
    """Offsets past the data, out of order, too few for the rows, parts that do not add up to the
    rows, rows picked past them: a ValueError, no read outside. A field in two parts is read in place."""
    import numpy as np

    from agent_traffic.delivery.vendors import json_columns as jc

    if serializer == "arrow":
        pytest.skip("about the extension's own checks")
    good = np.array([0, 1, 2], np.int32).tobytes()
    text = (None, good, b"a\"", 0, 2)  # a part: validity, offsets, data, offset, rows

    def write(n: int, *parts: tuple, rows: list[int] | None = None, out_bytes: int = 64) -> tuple[int, bytes]:
        picked = None if rows is None else np.array(rows, np.int64)
        out, starts = bytearray(out_bytes), bytearray(4 * ((n if rows is None else len(rows)) + 1))
        used = jc._jsonobj.objects(picked, n, [(b'"k":', 1, 0, list(parts))], b",", jc._ESCAPES, out, starts)
        return used, bytes(out[: max(used, 0)])

    for bad in ((None, np.array([0, 5, 9], np.int32).tobytes(), b"ab", 0, 2),
                (None, np.array([0, 2, 1], np.int32).tobytes(), b"ab", 0, 2),
                (None, np.array([-1, 1, 2], np.int32).tobytes(), b"ab", 0, 2),
                (None, good, b"ab", 0, 3),  # more rows than offsets
                (b"\xff", np.zeros(10, np.int32).tobytes(), b"", 0, 9)):  # a bitmap shorter than the rows
        with pytest.raises(ValueError):
            write(bad[4], bad)
    with pytest.raises(ValueError):
        write(3, text)  # the parts hold 2 rows, not 3
    for rows in ([2], [-1]):
        with pytest.raises(ValueError):
            write(2, text, rows=rows)
    assert write(2, text) == (21, b'{"k":"a"},{"k":"\\""},')
    assert write(2, text, out_bytes=20)[0] == -21  # too small: what it needs
    entries = (None, good, b"a\"", 0, 3)  # a dictionary part: the entries' offsets and data, then the indices
    assert write(3, entries + (np.array([1, 0, 1], np.int32).tobytes(),)) == (
        32, b'{"k":"\\""},{"k":"a"},{"k":"\\""},')
    for indices in ([0, 2, 1], [0, -1, 0], [0, 1]):  # past the dictionary's entries, or fewer than the rows
        with pytest.raises(ValueError):
            write(3, entries + (np.array(indices, np.int32).tobytes(),))
    times = np.array([1_500_000, 2**53], np.int64).tobytes()
    epoch = [(b'"t":', 2, 0, [(None, times, b"", 0, 1)])]
    used = jc._jsonobj.objects(None, 1, epoch, b"", jc._ESCAPES, out := bytearray(64), bytearray(8))
    assert bytes(out[:used]) == b'{"t":1.5}'
    with pytest.raises(ValueError):  # a time past 2**53 microseconds: refused, not written wrong
        jc._jsonobj.objects(None, 1, [(b'"t":', 2, 0, [(None, times, b"", 1, 1)])], b"", jc._ESCAPES, out, bytearray(8))
    with pytest.raises(ValueError):  # fewer values than rows
        jc._jsonobj.objects(None, 3, [(b'"t":', 2, 0, [(None, times, b"", 0, 3)])], b"", jc._ESCAPES, out, bytearray(16))
    assert write(2, text, rows=[1, 0]) == (21, b'{"k":"\\""},{"k":"a"},')
    second = (b"\x02", np.array([0, 1, 3], np.int32).tobytes(), b"xyz", 1, 1)  # offset 1, its bit set
    assert write(3, text, second, rows=[2, 0]) == (21, b'{"k":"yz"},{"k":"a"},')


def test_epoch_seconds_are_the_per_value_definition_as_orjson_writes_it() -> None:
    """Times written as Unix seconds: whole seconds, milliseconds, the rows exactly half a
    millisecond off (where the double's rounding decides, ties to even included: 0.0625 s),
    negative times, rounding up to the next second, times past a double's exact microseconds,
    and nulls (the key left out), in a chunked column."""
    from agent_traffic.delivery.vendors import json_columns as jc

    rng = random.Random(8)
    base = [0, 1, 500, 62_500, 187_500, 999_500, 999_999, 1_000_000, 1_500, 2_500, 999_999_500, -1, -500, -62_500,
            -1_000_000, -1_000_500, -999_999]
    values = base + [BASE_US + b for b in base] + [-BASE_US + b for b in base]
    values += [BASE_US + rng.randrange(10**9) for _ in range(2_000)]
    values += [rng.randrange(-(2**53) + 1, 2**53) // 1000 * 1000 + 500 for _ in range(2_000)]  # half a millisecond off
    values += [2**53 - 1, -(2**53) + 1]
    parts = [values[: len(values) // 2] + [None], values[len(values) // 2 :]]
    column = pa.chunked_array([pa.array(p, pa.int64()) for p in parts])
    want = [orjson.dumps({"t": epoch_seconds(v)}).decode() if v is not None else "{}" for p in parts for v in p]
    assert jc.obj([("t", jc.epoch_seconds(column, epoch_seconds))], len(column)).to_pylist() == want
    far = [2**53, -(2**53), 2**60 + 500, 5]  # outside the extension's range: written the Arrow way
    assert jc.obj([("t", jc.epoch_seconds(pa.array(far, pa.int64()), epoch_seconds))], len(far)).to_pylist() == [
        orjson.dumps({"t": epoch_seconds(v)}).decode() for v in far]


def test_dictionary_text_is_written_as_plain_text_would_be() -> None:
    """A text field read as a dictionary (several chunks, each its own dictionary, sliced, with
    nulls and entries no row uses) gives the bytes of the same strings as a plain column: a null
    leaves the key out, or is JSON null when the key is required."""
    from agent_traffic.delivery.vendors import json_columns as jc

    values = ['GPTBot "1.0"', None, "é\x01\n", "", "back\\slash", 'GPTBot "1.0"', None, "plain"]
    plain = pa.chunked_array([pa.array(values[:5], pa.string()), pa.array(values[5:], pa.string())])
    spare = pa.array(["unused", 'GPTBot "1.0"', "é\x01\n", "", "back\\slash", "plain"], pa.string())
    encoded = pa.chunked_array([
        pa.DictionaryArray.from_arrays(pa.array([None if v is None else spare.to_pylist().index(v) for v in part],
                                                pa.int32()), spare)
        for part in (values[:5], values[5:])
    ])
    for make in (lambda v: jc.text(v), lambda v: jc.required(jc.text(v))):
        fields = [("ua", make(encoded)), ("n", pa.array(["1"] * len(values)))]
        want = jc.obj([("ua", make(plain)), ("n", pa.array(["1"] * len(values)))], len(values), end="\n").to_pylist()
        assert jc.obj(fields, len(values), end="\n").to_pylist() == want
        rows = pa.array([7, 0, 3, 5], pa.int64()).to_numpy()
        assert jc.writer(fields, len(values), "\n")(rows).to_pylist() == [want[i] for i in rows]
    sliced = encoded.chunk(0).slice(2)
    assert jc.obj([("ua", jc.text(sliced))], 3).to_pylist() == jc.obj([("ua", jc.text(plain.chunk(0).slice(2)))], 3).to_pylist()


def test_a_null_in_a_dictionary_column_is_written_whatever_its_slot_holds() -> None:
    """A column of a file whose every user agent is null comes as a dictionary with no entries, and
    a null's index is not an entry's: the row is JSON null where the key is required, else the
    key is left out, never an error or another row's value."""
    import numpy as np

    from agent_traffic.delivery.vendors import json_columns as jc

    empty = pa.DictionaryArray.from_arrays(pa.array([None, None], pa.int32()), pa.array([], pa.string()))
    odd_slot = pa.DictionaryArray.from_buffers(  # row 0 null, its slot pointing past the entries
        pa.dictionary(pa.int32(), pa.string()), 2,
        [pa.py_buffer(bytes([0b10])), pa.py_buffer(np.array([99, 0], np.int32).tobytes())], pa.array(["x"]),
        null_count=1)
    n = pa.array(["1", "2"])
    for values, present in ((empty, [None, None]), (odd_slot, [None, "x"])):
        required = jc.obj([("ua", jc.required(jc.text(values))), ("n", n)], 2).to_pylist()
        optional = jc.obj([("ua", jc.text(values)), ("n", n)], 2).to_pylist()
        assert required == [orjson.dumps({"ua": v, "n": i + 1}).decode() for i, v in enumerate(present)]
        assert optional == [orjson.dumps({**({"ua": v} if v is not None else {}), "n": i + 1}).decode()
                            for i, v in enumerate(present)]
