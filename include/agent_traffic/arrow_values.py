"""Arrow values made from Python and numpy values, and numpy arrays made from Arrow ones,
without importing pandas.

`pa.scalar`, `pa.array` (of a list or of a numpy array), `Array.to_numpy` and a Python value
handed to a compute function all ask pyarrow whether the value is a pandas object, and the first
such question imports pandas: 0.17-0.35 s of CPU under the GIL and 33-40 MB in processes that
never use it. A parse task paid it at its first block, on its bottleneck thread (4% of its wall
time on a day's object), and a delivery process a quarter of the sender's own CPU. These build
the same values from buffers, which pyarrow takes as they are. `tests/test_deliver_imports.py`
and `tests/test_parse_imports.py` run planning, sending and parsing in a fresh interpreter and
check pandas stays out.

`lean_memory_pool` chooses the pool every stage allocates from.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

STRING = pa.string()
BOOL = pa.bool_()
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _validity(valid: np.ndarray) -> pa.Buffer | None:
    return None if valid.all() else pa.py_buffer(np.packbits(valid, bitorder="little"))


def from_numpy(values: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    """A one-dimensional numpy array of booleans or numbers as an Arrow array; `valid`: False
    where the value is null (no nulls without it)."""
    bits = None if valid is None else _validity(valid)
    nulls = 0 if bits is None else int(len(values) - np.count_nonzero(valid))
    if values.dtype == np.bool_:
        data = np.packbits(values, bitorder="little")
        return pa.Array.from_buffers(BOOL, len(values), [bits, pa.py_buffer(data)], null_count=nulls)
    values = np.ascontiguousarray(values)
    return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), len(values), [bits, pa.py_buffer(values)],
                                 null_count=nulls)


def strings(values: Sequence[str | None], type_: pa.DataType = STRING) -> pa.Array:
    """Python strings (None: null) as an Arrow array of `type_` (string, large_string, string_view)."""
    encoded = [b"" if v is None else v.encode() for v in values]
    offsets = np.zeros(len(encoded) + 1, np.int64 if type_ == pa.large_string() else np.int32)
    np.cumsum(np.fromiter(map(len, encoded), np.int64, len(encoded)), out=offsets[1:])
    valid = np.fromiter((v is not None for v in values), np.bool_, len(encoded))
    out = pa.Array.from_buffers(STRING if type_ != pa.large_string() else type_, len(encoded),
                                [_validity(valid), pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))],
                                null_count=int(len(encoded) - valid.sum()))
    return out if out.type == type_ else out.cast(type_)


def bools(values: Sequence[bool | None]) -> pa.Array:
    """Python booleans (None: null) as an Arrow boolean array."""
    valid = np.fromiter((v is not None for v in values), np.bool_, len(values))
    return from_numpy(np.fromiter((bool(v) for v in values), np.bool_, len(values)), valid)


def column(values: Sequence[object], type_: pa.DataType) -> pa.Array:
    """`pa.array(values, type_)` for Python strings or booleans (None: null)."""
    if pa.types.is_boolean(type_):
        return bools(values)  # type: ignore[arg-type]
    if pa.types.is_string(type_) or pa.types.is_large_string(type_) or pa.types.is_string_view(type_):
        return strings(values, type_)  # type: ignore[arg-type]
    raise TypeError(f"column takes strings or booleans, not {type_}")


def flags(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A boolean Arrow array as numpy booleans, null as False (`to_numpy(zero_copy_only=False)`
    with its nulls filled)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if not pa.types.is_boolean(values.type):
        raise TypeError(f"flags takes booleans, not {values.type}")
    n, offset = len(values), values.offset
    validity, data = values.buffers()
    out = _bits(data, offset, n)
    if values.null_count:
        out &= _bits(validity, offset, n)
    return out


def present(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """True where a value is not null (`is_valid().to_numpy(zero_copy_only=False)`)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if not values.null_count:
        return np.ones(len(values), np.bool_)
    if pa.types.is_null(values.type):
        return np.zeros(len(values), np.bool_)
    return flags(values.is_valid())


def _bits(buffer: pa.Buffer | None, offset: int, n: int) -> np.ndarray:
    if buffer is None:
        return np.ones(n, np.bool_)
    raw = np.frombuffer(buffer, np.uint8, (offset + n + 7) // 8)
    return np.unpackbits(raw, count=offset + n, bitorder="little")[offset:].view(np.bool_)


def to_numpy(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A fixed-width numeric array without nulls as numpy (`to_numpy` converts through pyarrow's
    pandas layer): a view of its buffer when it is one chunk."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if values.null_count or not (pa.types.is_integer(values.type) or pa.types.is_floating(values.type)):
        raise TypeError(f"to_numpy takes numbers without nulls, not {values.type} with {values.null_count} null(s)")
    dtype = np.dtype(values.type.to_pandas_dtype())
    return np.frombuffer(values.buffers()[1], dtype)[values.offset : values.offset + len(values)]


def distinct(*columns: pa.Array | pa.ChunkedArray) -> list[tuple[object, ...]]:
    """The distinct rows of a few equally long columns (null a value too), in order of first
    appearance: a table's `group_by(...).aggregate([])` without Acero, whose import loads
    `pyarrow.dataset` and pandas."""
    arrays = [c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c for c in columns]
    codes = np.zeros(len(arrays[0]), np.int64)
    for arr in arrays:  # each row's combination of dictionary codes, as one number
        encoded = pc.dictionary_encode(arr, null_encoding="encode")
        codes = codes * len(encoded.dictionary) + to_numpy(encoded.indices.cast(pa.int64()))
    _, first = np.unique(codes, return_index=True)
    first.sort()
    rows = from_numpy(first)
    return list(zip(*(arr.take(rows).to_pylist() for arr in arrays), strict=True))


@lru_cache(maxsize=256, typed=True)
def scalar(value: str | bool | int | float | None, type_: pa.DataType = STRING) -> pa.Scalar:
    """`pa.scalar(value, type_)` for a string, a boolean, a number or None (kept: literals recur
    on every window of rows)."""
    if value is None:
        return pa.nulls(1, type_)[0]
    arr = strings([value]) if isinstance(value, str) else from_numpy(np.array([value]))
    return (arr if arr.type == type_ else arr.cast(type_))[0]


def instant(when: datetime, type_: pa.DataType) -> pa.Scalar:
    """`pa.scalar(when, type_)` for an aware datetime and a timestamp type."""
    us = (when - _EPOCH) // timedelta(microseconds=1)
    return from_numpy(np.array([us], np.int64)).cast(pa.timestamp("us", "UTC")).cast(type_, safe=False)[0]


def args(*values: object) -> list[object]:
    """Compute-function arguments with every Python string as a string scalar."""
    return [scalar(v) if isinstance(v, str) else v for v in values]


_lean = threading.Lock()


def lean_memory_pool() -> None:
    """Arrow allocates from jemalloc, unless ARROW_DEFAULT_MEMORY_POOL names a pool. The default
    pool (mimalloc) keeps what a block freed for the next one, which the process's RSS shows as
    hundreds of MB more at the same work. jemalloc keeps its default decay: returning pages at
    once (decay 0) costs a run a third more time in page faults (benchmarks/results.md)."""
    with _lean:
        if os.environ.get("ARROW_DEFAULT_MEMORY_POOL") or pa.default_memory_pool().backend_name == "jemalloc":
            return
        try:
            pool = pa.jemalloc_memory_pool()
        except NotImplementedError:  # a pyarrow built without jemalloc: keep its default
            return
        pa.set_memory_pool(pool)
