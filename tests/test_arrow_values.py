"""The pandas-free Arrow constructors give what pyarrow's own give (this process may import pandas)."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pytest

from agent_traffic.delivery.arrow_values import (
    distinct,
    from_numpy,
    instant,
    scalar,
    strings,
    to_numpy,
)


@pytest.mark.parametrize("value, type_", [
    ("", pa.string()), ("a\"b\\c\n", pa.string()), ("ü€𝄞", pa.string()), (None, pa.string()), (None, pa.float64()),
    (False, pa.bool_()), (True, pa.bool_()), (0, pa.int64()), (-7, pa.int32()), (2.5, pa.float64()),
])
def test_scalar_is_pyarrows(value: object, type_: pa.DataType) -> None:
    got, want = scalar(value, type_), pa.scalar(value, type_)
    assert got.type == want.type and got.is_valid == want.is_valid and got.as_py() == want.as_py()


@pytest.mark.parametrize("values", [[], ["a"], ["a", None, "", "ü", None], [None, None]])
def test_strings_is_pyarrows(values: list[str | None]) -> None:
    got = strings(values)
    got.validate(full=True)
    assert got.equals(pa.array(values, pa.string()))


@pytest.mark.parametrize("values", [np.array([True, False, True] * 5), np.arange(10, dtype=np.int64),
                                    np.array([3, 1], np.int32), np.array([0.5, -1.0]), np.zeros(0, np.int64)])
def test_numpy_round_trips(values: np.ndarray) -> None:
    arr = from_numpy(values)
    arr.validate(full=True)
    assert arr.equals(pa.array(values))
    if values.dtype != np.bool_:
        assert np.array_equal(to_numpy(arr.slice(1)), values[1:])
        assert np.array_equal(to_numpy(pa.chunked_array([arr, arr])), np.concatenate([values, values]))


def test_to_numpy_refuses_nulls_rather_than_guess() -> None:
    with pytest.raises(TypeError, match="without nulls"):
        to_numpy(pa.array([1, None]))


@pytest.mark.parametrize("type_", [pa.timestamp("us", "UTC"), pa.timestamp("ns", "UTC"), pa.timestamp("ms", "UTC"),
                                   pa.timestamp("s", "UTC"), pa.timestamp("us")])
def test_instant_is_pyarrows(type_: pa.DataType) -> None:
    when = datetime(2026, 11, 21, 5, 6, 7, 891011, tzinfo=UTC)
    assert instant(when, type_) == pa.scalar(when, type_)


def test_distinct_is_group_by_in_order_of_first_appearance() -> None:
    t = pa.table({"ua": ["a", "b", "a", None, "b", None, "c", "a"], "agent": ["x", "y", "x", None, "z", None, None, None]})
    want = t.group_by(["ua", "agent"], use_threads=False).aggregate([]).to_pylist()
    assert distinct(t["ua"], t["agent"]) == [(r["ua"], r["agent"]) for r in want]
    assert distinct(pa.chunked_array([["q"], ["q", "r"]]), pa.chunked_array([["1", "1"], ["1"]])) == [("q", "1"), ("r", "1")]
    assert distinct(pa.array([], pa.string()), pa.array([], pa.string())) == []
