"""The pandas-free Arrow constructors give what pyarrow's own give (this process may import pandas)."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pytest

from agent_traffic.arrow_values import (
    column,
    distinct,
    flags,
    from_numpy,
    instant,
    present,
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


@pytest.mark.parametrize("type_", [pa.string(), pa.large_string(), pa.string_view()])
@pytest.mark.parametrize("values", [[], ["a", None, "", "ü€"], [None]])
def test_strings_of_each_text_type_are_pyarrows(values: list[str | None], type_: pa.DataType) -> None:
    got = strings(values, type_)
    got.validate(full=True)
    assert got.type == type_ and got.equals(pa.array(values, type_))


@pytest.mark.parametrize("values, type_", [([True, None, False], pa.bool_()), ([], pa.bool_()),
                                           (["x", None], pa.string()), (["x"], pa.large_string())])
def test_column_is_pyarrows(values: list[object], type_: pa.DataType) -> None:
    got = column(values, type_)
    got.validate(full=True)
    assert got.equals(pa.array(values, type_))
    with pytest.raises(TypeError, match="strings or booleans"):
        column([1], pa.int64())


def test_from_numpy_with_nulls_is_pyarrows() -> None:
    codes = np.array([3, -1, 0, -1, 7] * 3, np.int32)
    got = from_numpy(codes, valid=codes >= 0)
    got.validate(full=True)
    assert got.equals(pa.array(codes, mask=codes < 0)) and got.null_count == 6
    assert from_numpy(codes, valid=np.ones(len(codes), np.bool_)).null_count == 0


@pytest.mark.parametrize("offset", [0, 1, 7, 8, 13])
def test_flags_and_present_are_pyarrows_at_any_offset(offset: int) -> None:
    rng = np.random.default_rng(offset)
    values = [None if rng.random() < 0.3 else bool(rng.random() < 0.5) for _ in range(40)]
    arr = pa.array(values, pa.bool_()).slice(offset)
    want_flags = arr.fill_null(False).to_numpy(zero_copy_only=False)
    assert np.array_equal(flags(arr), want_flags) and flags(arr).dtype == np.bool_
    assert np.array_equal(flags(pa.chunked_array([arr, arr])), np.concatenate([want_flags, want_flags]))
    assert np.array_equal(present(arr), arr.is_valid().to_numpy(zero_copy_only=False))
    texts = pa.array([None if v is None else "t" for v in values]).slice(offset)
    assert np.array_equal(present(texts), texts.is_valid().to_numpy(zero_copy_only=False))
    assert present(pa.nulls(3)).tolist() == [False] * 3 and present(pa.array([1, 2])).tolist() == [True, True]
    with pytest.raises(TypeError, match="booleans"):
        flags(pa.array([1]))


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
