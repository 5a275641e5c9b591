"""Build JSON text for a whole column at once: the vendors declare their objects with these.

Serializing event by event in Python (a dict per row, then a JSON encoder) costs about ten
microseconds an event, more than sending it. These helpers build every row's JSON with Arrow
compute kernels instead. The output is byte-for-byte what `orjson.dumps` gives for the same
object (compact, UTF-8 unescaped, the same control-character escapes, keys in declared order):
`tests/test_json_columns.py` checks that against a per-row reference on awkward data.

A value is a string array of JSON fragments; null means "leave the key out". Strings may also be
handed to `obj` as `Text` (not yet escaped nor quoted), which `obj` escapes and quotes, and times
as `Epoch` (int64 microseconds), which `obj` writes as Unix seconds.

`obj` runs compiled (`_jsonobj.c`: each row written once, from the columns' buffers) where the
extension is built, else with Arrow kernels; the two give the same bytes.

A text column the planner read as an Arrow dictionary (`Vendor.dictionary_columns`: few distinct
values, such as user agents) stays one: the extension writes each row from the dictionary, whose
entries are escaped and quoted once, not once per row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from agent_traffic.arrow_values import BOOL, args, from_numpy, scalar, strings, to_numpy

ABI = 6  # the extension's objects() arguments: a stale build (before `make setup` rebuilt it) is not used
try:
    from agent_traffic.delivery.vendors import _jsonobj
except ImportError:  # built by `pip install -e .` where a C compiler is; else Arrow kernels serialize
    _jsonobj = None
if getattr(_jsonobj, "ABI", None) != ABI:
    _jsonobj = None

Value = pa.Array | pa.ChunkedArray


@dataclass(frozen=True)
class Text:
    """JSON strings not yet escaped nor quoted: `obj` escapes them and writes the quotes into its
    literal pieces (`,"key":"`), instead of copying every value once more to put them around it."""

    values: Value  # the strings as they are; null: no value
    required: bool = False  # a null is JSON null (else its key is left out)

    def escaped(self) -> pa.Array:
        """The values with JSON's escapes applied (only the rows that need one are rewritten)."""
        values = self.values
        values = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
        return _escape(pc.cast(values, STRING) if pa.types.is_dictionary(values.type) else values)

    def take(self, rows: pa.Array) -> Text:
        return Text(self.values.take(rows), self.required)

    def fragments(self) -> pa.Array:
        """The same values as JSON fragments, quotes included."""
        quoted = join('"', self.escaped(), '"')
        return pc.fill_null(quoted, scalar("null")) if self.required else quoted


@dataclass(frozen=True)
class Epoch:
    """Unix seconds not yet written: int64 microseconds, which the extension writes as it writes
    each row (a string array of them cost a tenth of planning). `exact_value` is the per-value
    definition (`scrunch.epoch_seconds`); `fragments` gives the same text with Arrow kernels."""

    us: Value  # int64 microseconds; null: the key left out
    exact_value: Callable[[int], int | float]

    def take(self, rows: pa.Array) -> Epoch:
        return Epoch(self.us.take(rows), self.exact_value)

    def fragments(self) -> pa.Array:
        return _epoch_fragments(self.us, self.exact_value)


Deferred = Text | Epoch  # values `obj` writes itself
Field = tuple[str, Value | Deferred | None]  # (key, JSON fragments); None: the key is never present

#: orjson's escapes for the control characters (the only characters besides `"` and `\` it escapes)
_CONTROL = {chr(i): orjson.dumps(chr(i)).decode()[1:-1] for i in range(0x20)}
#: the same escapes as the extension's table: per byte, [length, replacement] in 8 bytes (0: as is)
_ESCAPES = b"".join(
    bytes([len(e)]) + e.ljust(7, b"\0") if e != bytes([b]) else bytes(8)
    for b, e in ((b, orjson.dumps(chr(b))[1:-1] if b < 0x80 else bytes([b])) for b in range(256))
)
_HAS_CONTROL = "[\\x00-\\x1f]"
_NEEDS_ESCAPE = '["\\\\\\x00-\\x1f]'
_SCAN_BLOCK = 1 << 18  # bytes `_needs_escape` scans at a time: its temporaries stay in cache


STRING = pa.string()


def column(table: pa.Table, name: str, type_: pa.DataType = STRING) -> Value:
    """A column of `type_`, in the table's chunks (the compiled `obj` reads them where they are);
    all null when the table does not have it. A dictionary of `type_` values (read so by the
    planner: `Vendor.dictionary_columns`) is returned as it is, for `text` and `obj`."""
    if name not in table.column_names:
        return pa.nulls(table.num_rows, type_)
    col = table[name]
    if col.type == type_ or (pa.types.is_dictionary(col.type) and col.type.value_type == type_):
        return col
    return pc.cast(col, type_)


def present(values: Value) -> pa.Array:
    """True where a string is neither null nor empty (Python's truthiness of the old rows)."""
    return pc.fill_null(pc.not_equal(values, scalar("")), scalar(False, BOOL))


def only_where(mask: Value, values: Value) -> pa.Array:
    """`values` where `mask`, else null (the key left out)."""
    return pc.if_else(mask, values, scalar(None, values.type))


def join(*pieces: Value | str, **options: str) -> pa.Array:
    """Row by row, the pieces (arrays, or literal strings) concatenated: `binary_join_element_wise`
    with an empty separator (the literals as scalars: `arrow_values`)."""
    return pc.binary_join_element_wise(*args(*pieces, ""), **options)


def string(values: Value) -> pa.Array:
    """JSON string literals; null stays null."""
    return text(values).fragments()


def text(values: Value) -> Text:
    """JSON strings for `obj`, escaped and quoted there."""
    return Text(values)


def _escape(values: pa.Array) -> pa.Array:
    needs = _needs_escape(values)
    if needs is not None:
        sub = pc.filter(values, needs)
        sub = pc.replace_substring(sub, "\\", "\\\\")
        sub = pc.replace_substring(sub, '"', '\\"')
        if pc.any(pc.match_substring_regex(sub, _HAS_CONTROL)).as_py():
            for ch, esc in _CONTROL.items():
                sub = pc.replace_substring(sub, ch, esc)
        values = pc.replace_with_mask(values, needs, sub)
    return values


def _needs_escape(values: pa.Array) -> pa.Array | None:
    """Rows holding a quote, a backslash or a control character; None when no row does.

    One pass of numpy over the column's bytes (most columns have none of those), instead of a
    regular expression per row: it was a fifth of the serializing time. The bytes are scanned a
    block at a time: comparisons over a whole window's column made five temporary arrays of its
    size, fresh memory the kernel zeroes on every window, which cost as much as the scan.
    """
    if values.type != STRING:
        mask = pc.fill_null(pc.match_substring_regex(values, _NEEDS_ESCAPE), scalar(False, BOOL))
        return mask if pc.any(mask).as_py() else None
    offsets_buf, data_buf = values.buffers()[1], values.buffers()[2]
    if data_buf is None or len(values) == 0:
        return None
    offsets = np.frombuffer(offsets_buf, np.int32)[values.offset : values.offset + len(values) + 1]
    lo = int(offsets[0])
    data = np.frombuffer(data_buf, np.uint8)[lo : int(offsets[-1])]
    found = []
    for start in range(0, len(data), _SCAN_BLOCK):
        block = data[start : start + _SCAN_BLOCK]
        at = np.flatnonzero((block < 0x20) | (block == 0x22) | (block == 0x5C))
        if len(at):
            found.append(at + start)
    if not found:
        return None
    hits = np.concatenate(found)
    mask = np.zeros(len(values), dtype=bool)
    mask[np.searchsorted(offsets, hits + lo, side="right") - 1] = True
    return from_numpy(mask)


def integer(values: Value) -> pa.Array:
    """JSON integers; a float is rounded half to even, as Python's `int(round(x))`."""
    if pa.types.is_floating(values.type):
        values = pc.round(values, 0, round_mode="half_to_even")
    return pc.cast(pc.cast(values, pa.int64()), pa.string())


def constant(value: object, n: int) -> pa.Array:
    """The same JSON value on every row."""
    return pa.repeat(scalar(orjson.dumps(value).decode()), n)


def required(values: Value | Text) -> pa.Array | Text:
    """A key always present: null becomes JSON null, as a dict holding None would."""
    if isinstance(values, Text):
        return Text(values.values, required=True)
    return pc.fill_null(values, scalar("null"))


def obj(fields: Sequence[Field], n: int, end: str = "") -> pa.Array:
    """JSON objects from (key, fragments) in key order, for all `n` rows; null fragments leave
    their key out. `end` follows every object (the planner's separator: written here, it costs no
    extra pass over the rows, where joining it on afterwards copied every event's bytes once more)."""
    return writer(fields, n, end)(None)


def writer(fields: Sequence[Field], n: int, end: str = "") -> Callable[[np.ndarray | None], pa.Array]:
    """`obj` for many windows of the same `n`-row fields, called with each window's rows (int64,
    in the order written; None: all): the planner writes an object's events in line order from
    columns in file order. What the windows share (the fields' buffers, for the extension) is
    gathered once."""
    present = [(orjson.dumps(key).decode() + ":", values) for key, values in fields if values is not None]
    if _jsonobj is not None and present and n:
        return _Compiled(present, n, end)
    return partial(_arrow_obj, present, n, end)


def _arrow_obj(present: list[tuple[str, Value | Deferred]], n: int, end: str, rows: np.ndarray | None) -> pa.Array:
    """Arrow's way: one join of the literal key prefixes and the fragments (a field with nulls
    joined to its prefix first, so a null drops the key): two passes over the rows, not three per field."""
    if rows is not None:
        picked = from_numpy(rows)
        present = [(p, v.take(picked)) for p, v in present]
        n = len(rows)
    if not present:
        return pa.repeat(scalar("{}" + end), n)
    if _may_be_missing(present[0][1]):  # the first key may be missing: commas decided row by row
        parts = [join(prefix, _fragments(values)) for prefix, values in present]
        inner = pc.binary_join_element_wise(*parts, scalar(","), null_handling="skip") if len(parts) > 1 else parts[0]
        return _one(join("{", pc.fill_null(inner, scalar("")), "}" + end))
    pieces: list[Value | str] = ["{"]
    for i, (prefix, values) in enumerate(present):
        prefix = prefix if i == 0 else "," + prefix
        if isinstance(values, Text) and not values.values.null_count:
            pieces += [prefix + '"', values.escaped(), '"']  # the quotes go in with the key
            continue
        values = _fragments(values)
        if values.null_count:
            pieces.append(join(prefix, values))
        else:
            pieces += [prefix, values]
    pieces.append("}" + end)
    return _one(join(*_merge_literals(pieces), null_handling="replace", null_replacement=""))


def _one(values: Value) -> pa.Array:
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


class _Compiled:
    """`obj` by the extension: the fields' buffers where they are (a chunked array's chunks as
    its parts, not copied into one), each row written once, into memory from Arrow's pool (sized
    for no escapes: when escapes need more, written again)."""

    def __init__(self, present: list[tuple[str, Value | Deferred]], n: int, end: str) -> None:
        self.n, self.end = n, end.encode()
        self.fields: list[tuple[bytes, int, int, list[tuple]]] = []
        self.value_bytes = 0  # of every row, keys and values
        for prefix, values in present:
            if isinstance(values, Epoch) and _exact_range(values.us):
                self.fields.append((prefix.encode(), _EPOCH, 0, _int64_parts(values.us)))
                self.value_bytes += n * (len(prefix) + 1 + EPOCH_TEXT_BYTES)
                continue
            col = values.values if isinstance(values, Text) else _fragments(values)
            chunks = col.chunks if isinstance(col, pa.ChunkedArray) else [col]
            kind = int(isinstance(values, Text))
            required = int(isinstance(values, Text) and values.required)
            if kind and all(pa.types.is_dictionary(a.type) for a in chunks) and not (required and col.null_count):
                kind = 0  # its entries escaped and quoted here, once each: a null leaves the key out
            parts = []
            for arr in chunks:
                if pa.types.is_dictionary(arr.type):
                    part, size = _dictionary_part(arr, quoted=not kind)
                else:
                    part, size = _string_part(arr if arr.type == STRING else pc.cast(arr, STRING))
                parts.append(part)
                self.value_bytes += size
            key = prefix.encode()
            self.value_bytes += n * (len(key) + 7)
            self.fields.append((key, kind, required, parts))

    def __call__(self, rows: np.ndarray | None) -> pa.Array:
        out_rows = self.n if rows is None else len(rows)
        size = out_rows * (2 + len(self.end)) + self.value_bytes * out_rows // self.n
        size += 0 if rows is None else 64 * 1024  # a window's rows may be longer than the average
        starts = pa.allocate_buffer(4 * (out_rows + 1))
        picked = None if rows is None else np.ascontiguousarray(rows, np.int64)
        while True:
            out = pa.allocate_buffer(size)
            used = _jsonobj.objects(picked, self.n, self.fields, self.end, _ESCAPES, out, starts)
            if used >= 0:
                return pa.Array.from_buffers(STRING, out_rows, [None, starts, out.slice(0, used)], null_count=0)
            size = -used


_EPOCH = 2  # the extension's field kind for `Epoch`
EPOCH_TEXT_BYTES = 14  # `1763683200.123`: the length an epoch value is sized for
_EXACT_US = 1 << 53  # microseconds the extension writes (a double holds them exactly)


def _exact_range(us: Value) -> bool:
    """Every time within the extension's range (else `fragments` writes them: a clock off by centuries)."""
    bounds = pc.min_max(us)
    lo, hi = bounds["min"].as_py(), bounds["max"].as_py()
    return lo is None or (lo > -_EXACT_US and hi < _EXACT_US)


def _int64_parts(values: Value) -> list[tuple]:
    """An int64 column's chunks as the extension's epoch parts: (validity, values, b"", offset, rows)."""
    parts = []
    for arr in (values.chunks if isinstance(values, pa.ChunkedArray) else [values]):
        validity, data = arr.buffers()
        parts.append((validity if arr.null_count else None, data if data is not None else b"", b"", arr.offset, len(arr)))
    return parts


def _string_part(arr: pa.Array) -> tuple[tuple, int]:
    """A string array as the extension's part, and its values' bytes."""
    validity, offsets, data = arr.buffers()
    ends = np.frombuffer(offsets, np.int32, len(arr) + 1, 4 * arr.offset)
    part = (validity if arr.null_count else None, offsets, data if data is not None else b"", arr.offset, len(arr))
    return part, int(ends[-1] - ends[0])


def _dictionary_part(arr: pa.DictionaryArray, *, quoted: bool) -> tuple[tuple, int]:
    """A dictionary array of strings as the extension's part: its int32 indices and its entries,
    escaped and quoted when `quoted` (written then as they are); and about the bytes its rows take."""
    entries = arr.dictionary if arr.dictionary.type == STRING else pc.cast(arr.dictionary, STRING)
    if quoted:
        entries = join('"', _escape(entries), '"')
    indices = arr.indices if arr.indices.type == pa.int32() else pc.cast(arr.indices, pa.int32())
    validity, index_data = indices.buffers()[:2]
    if entries.offset:  # the extension reads a dictionary's offsets from its first entry
        entries = pa.concat_arrays([entries])  # a copy starting at offset 0
    _, offsets, data = entries.buffers()
    lengths = np.diff(np.frombuffer(offsets, np.int32, len(entries) + 1))
    picked = np.frombuffer(index_data, np.int32, len(indices), 4 * indices.offset) if len(indices) else np.zeros(0, np.int32)
    size = int(lengths[np.clip(picked, 0, len(lengths) - 1)].sum()) if len(lengths) else 0  # a null's index: any
    part = (validity if arr.null_count else None, offsets, data if data is not None else b"", indices.offset,
            len(indices), index_data)
    return part, size


def _may_be_missing(values: Value | Deferred) -> bool:
    if isinstance(values, Text):
        return not values.required and values.values.null_count > 0
    if isinstance(values, Epoch):
        return values.us.null_count > 0
    return values.null_count > 0


def _fragments(values: Value | Deferred) -> Value:
    return values.fragments() if isinstance(values, Text | Epoch) else values


def _merge_literals(pieces: list[Value | str]) -> list[Value | str]:
    """Adjacent literal pieces as one (`"` then `,"next":`): one piece fewer per row to join."""
    out: list[Value | str] = []
    for p in pieces:
        if isinstance(p, str) and out and isinstance(out[-1], str):
            out[-1] += p
        else:
            out.append(p)
    return out


def per_unique(values: Value, fn: Callable[[str], str | None]) -> pa.Array:
    """Apply a Python function once per distinct value (IP truncation: few distinct, many rows)."""
    uniq = pc.unique(values)
    mapped = strings([fn(v) for v in uniq.to_pylist()])
    return pc.take(mapped, pc.index_in(values, value_set=uniq))


_FRACTIONS = strings([""] + [f".{k:03d}".rstrip("0") for k in range(1, 1000)])


def epoch_seconds(ts_us: Value, exact_value: Callable[[int], int | float]) -> Epoch:
    """Unix seconds as JSON: an integer for a whole second, else a float rounded to milliseconds;
    `exact_value` gives the value of one time (for the rows where the float's rounding decides)."""
    us = ts_us if ts_us.type == pa.int64() else pc.cast(ts_us, pa.int64())
    return Epoch(us, exact_value)


def _epoch_fragments(ts_us: Value, exact_value: Callable[[int], int | float]) -> pa.Array:
    """`Epoch`'s text with numpy and Arrow kernels.

    Same text as `orjson.dumps(exact_value(ts_us))` with `exact_value` the per-value definition: the
    common cases are computed in integers; the rows where the float's rounding decides (exactly half
    a millisecond) or a negative time are handed to `exact_value`.
    """
    us = to_numpy(pc.cast(pc.fill_null(ts_us, scalar(0, ts_us.type)), pa.int64()))
    ms, rest = np.divmod(us, 1000)
    ms = ms + (rest > 500)
    whole_second = (us % 1_000_000) == 0
    secs, frac = np.divmod(ms, 1000)
    suffix = pc.take(_FRACTIONS, from_numpy(frac))
    suffix = pc.if_else(from_numpy(~whole_second & (frac == 0)), scalar(".0"), suffix)
    out = join(pc.cast(from_numpy(secs), pa.string()), suffix)
    odd = np.flatnonzero(~whole_second & ((rest == 500) | (us < 0)))
    if len(odd):
        mask = np.zeros(len(us), dtype=bool)
        mask[odd] = True
        exact = strings([orjson.dumps(exact_value(int(u))).decode() for u in us[odd]])
        out = pc.replace_with_mask(out, from_numpy(mask), exact)
    return only_where(pc.is_valid(ts_us), out)
