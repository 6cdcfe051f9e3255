"""Tests for flpg.app.records and its Array: validation, normalisation, equality."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from flpg.app.records import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flpg.errors import RecordError

# --- Array ------------------------------------------------------------------


def test_array_wraps_contiguous_little_endian_without_copy() -> None:
    nd = np.arange(6, dtype="<f4").reshape(2, 3)
    arr = Array(nd)
    assert arr.numpy() is nd
    assert arr.dtype == "float32"
    assert arr.shape == (2, 3)
    assert arr.nbytes == 24


def test_array_makes_layout_c_order_and_keeps_byte_order() -> None:
    nd = np.arange(12, dtype=">i4").reshape(3, 4)[:, ::2]
    arr = Array(nd)
    out = arr.numpy()
    assert out.flags.c_contiguous
    assert out.dtype == np.dtype(">i4")
    assert arr.dtype == ">i4"  # as Flower: str(ndarray.dtype)
    assert out.tolist() == nd.tolist()
    assert not np.shares_memory(out, nd)
    little = Array(np.arange(12, dtype="<i4").reshape(3, 4)[:, ::2])
    assert little.dtype == "int32" and little.numpy().dtype == np.dtype("<i4")


def test_array_zero_d_and_bool() -> None:
    assert Array(np.array(2.0)).shape == ()
    assert Array(np.array([True, False])).dtype == "bool"
    assert Array(np.zeros(2, "u1")).dtype == "uint8"
    assert Array(np.zeros(2, "<c8")).dtype == "complex64"


def test_array_equality_compares_dtype_shape_and_bytes() -> None:
    a = np.array([1.0, math.nan], dtype="<f8")
    assert Array(a) == Array(a.copy())  # NaN compares by bytes
    assert Array(a) != Array(np.array([1.0, 2.0]))
    assert Array(np.zeros(4, "<i4")) != Array(np.zeros(4, "<u4"))  # same bytes, other dtype
    assert Array(np.zeros(4, "<i4")) != Array(np.zeros((2, 2), "<i4"))
    assert Array(np.zeros(4, "<i4")) != "not an array"
    assert Array(np.zeros(2, ">f8")) != Array(np.zeros(2, "<f8"))  # byte order differs
    assert Array(np.zeros(2, ">f8")) == Array(np.zeros(2, ">f8"))


@pytest.mark.parametrize(
    "bad",
    [
        np.array([object()], dtype=object),
        np.zeros(1, dtype=[("x", "<f4")]),
        np.array(["s"]),
        np.array([b"s"]),
        np.array(["2020-01-01"], dtype="datetime64[D]"),
    ],
    ids=["object", "structured", "str", "bytes", "datetime"],
)
def test_array_rejects_unsupported_dtypes(bad: Any) -> None:
    with pytest.raises(RecordError, match="cannot be stored"):
        Array(bad)
    record = ArrayRecord()
    with pytest.raises(RecordError, match=r"'fc\.bias'"):
        record["fc.bias"] = bad
    assert "fc.bias" not in record


def test_array_rejects_non_arrays_and_masked_arrays() -> None:
    with pytest.raises(RecordError, match="ndarray"):
        Array([1, 2, 3])
    with pytest.raises(RecordError, match="mask"):
        Array(np.ma.masked_array([1, 2], mask=[True, False]))


def test_array_repr_is_short() -> None:
    assert (
        repr(Array(np.zeros((1000, 1000), "<f4"))) == "Array(dtype='float32', shape=(1000, 1000))"
    )


# --- ArrayRecord ------------------------------------------------------------


def test_array_record_from_list_names_by_position() -> None:
    a, b = np.zeros(2), np.ones(3, dtype="<i8")
    record = ArrayRecord([a, b])
    assert list(record) == ["0", "1"]
    assert all(isinstance(v, Array) for v in record.values())
    got = record.to_numpy_ndarrays()
    assert got[0] is a and got[1] is b
    assert ArrayRecord.from_numpy_ndarrays([a, b]) == record


def test_array_record_from_mapping_and_copy() -> None:
    w = np.arange(4, dtype="<f4")
    record = ArrayRecord({"w": w, "b": Array(np.zeros(1))})
    assert list(record) == ["w", "b"]
    assert record["w"].numpy() is w
    copy = ArrayRecord(record)
    assert copy == record
    del copy["w"]
    assert "w" in record  # the copy is a new mapping


def test_array_record_assignment_wraps_ndarrays() -> None:
    record = ArrayRecord()
    record["x"] = np.ones(3)
    assert isinstance(record["x"], Array)
    assert record["x"].shape == (3,)


def test_array_record_rejects_bad_keys_and_values() -> None:
    with pytest.raises(RecordError, match="str"):
        ArrayRecord({1: np.zeros(1)})  # type: ignore[dict-item]
    with pytest.raises(RecordError, match=r"'w'.*list"):
        ArrayRecord({"w": [1.0, 2.0]})
    with pytest.raises(RecordError, match="list"):
        ArrayRecord(np.zeros(3))  # type: ignore[arg-type]


def test_array_record_equality_is_ordered() -> None:
    a, b = np.zeros(1), np.ones(1)
    assert ArrayRecord({"a": a, "b": b}) == ArrayRecord({"a": a.copy(), "b": b.copy()})
    assert ArrayRecord({"a": a, "b": b}) != ArrayRecord({"b": b, "a": a})
    assert ArrayRecord({"a": a}) != ArrayRecord({"a": b})


def test_array_record_count_bytes() -> None:
    """Flower's count: np.save bytes (128-byte header here) plus the key's length."""
    record = ArrayRecord([np.zeros(3, "<f8"), np.zeros((2, 2), "<f2"), np.zeros(0)])
    assert record.count_bytes() == (128 + 24 + 1) + (128 + 8 + 1) + (128 + 0 + 1)


# --- MetricRecord -----------------------------------------------------------


def test_metric_record_converts_numpy_scalars() -> None:
    record = MetricRecord(
        {
            "f32": np.float32(0.5),
            "i64": np.int64(7),
            "u8": np.uint8(3),
            "floats": [np.float32(1.5), np.float64(2.5)],
            "ints": [np.int32(1), 2],
            "nan": math.nan,
            "inf": -math.inf,
        }
    )
    assert type(record["f32"]) is float and record["f32"] == 0.5
    assert type(record["i64"]) is int and record["i64"] == 7
    assert type(record["u8"]) is int
    assert record["floats"] == [1.5, 2.5]
    floats, ints = record["floats"], record["ints"]
    assert isinstance(floats, list) and isinstance(ints, list)
    assert all(type(x) is float for x in floats)
    assert all(type(x) is int for x in ints)
    assert math.isnan(record["nan"])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "type_name"),
    [
        (True, "bool"),
        (np.bool_(False), "bool"),
        ("0.5", "str"),
        (None, "NoneType"),
        ({"a": 1}, "dict"),
        (1j, "complex"),
        ((1, 2), "tuple"),
        (np.zeros(2), "ndarray"),
        ([1, "a"], "str"),
        ([True], "bool"),
    ],
)
def test_metric_record_rejects_other_types(value: Any, type_name: str) -> None:
    record = MetricRecord()
    with pytest.raises(RecordError, match=rf"'acc'.*{type_name}"):
        record["acc"] = value
    assert "acc" not in record


def test_metric_record_rejects_mixed_lists_and_non_str_keys() -> None:
    with pytest.raises(RecordError, match=r"'m'.*mixes"):
        MetricRecord({"m": [1, 2.0]})
    with pytest.raises(RecordError, match="str"):
        MetricRecord({3: 1.0})  # type: ignore[dict-item]


# --- ConfigRecord -----------------------------------------------------------


def test_config_record_accepts_and_normalises() -> None:
    record = ConfigRecord(
        {
            "lr": np.float32(0.25),
            "epochs": np.int16(3),
            "name": np.str_("cnn"),
            "blob": np.bytes_(b"\x00\x01"),
            "flag": np.bool_(True),
            "layers": [np.int64(1), 2],
            "tags": ["a", "b"],
            "masks": [True, False],
            "chunks": [b"x", b""],
            "empty": [],
        }
    )
    assert type(record["lr"]) is float and record["lr"] == 0.25
    assert type(record["epochs"]) is int
    assert type(record["name"]) is str
    assert type(record["blob"]) is bytes
    assert record["flag"] is True
    assert [type(x) for x in record["layers"]] == [int, int]  # type: ignore[union-attr]
    assert record["empty"] == []


@pytest.mark.parametrize(
    ("value", "type_name"),
    [
        (None, "NoneType"),
        ({"a": 1}, "dict"),
        (bytearray(b"x"), "bytearray"),
        (1j, "complex"),
        (np.zeros(2), "ndarray"),
        ([None], "NoneType"),
        ([[1]], "list"),
    ],
)
def test_config_record_rejects_other_types(value: Any, type_name: str) -> None:
    with pytest.raises(RecordError, match=rf"'opt'.*{type_name}"):
        ConfigRecord({"opt": value})


@pytest.mark.parametrize("mixed", [[True, 1], [1, 1.5], ["a", b"a"], [1.0, "x"]])
def test_config_record_rejects_mixed_lists(mixed: list[Any]) -> None:
    with pytest.raises(RecordError, match=r"'opt'.*mixes"):
        ConfigRecord({"opt": mixed})


def test_value_records_compare_type_strictly() -> None:
    assert ConfigRecord({"x": True}) != ConfigRecord({"x": 1})
    assert MetricRecord({"x": 1}) != MetricRecord({"x": 1.0})
    assert MetricRecord({"x": math.nan}) == MetricRecord({"x": float("nan")})
    assert MetricRecord({"a": 1, "b": 2}) == MetricRecord({"b": 2, "a": 1})
    assert MetricRecord({"a": 1}) != ConfigRecord({"a": 1})


# --- RecordDict -------------------------------------------------------------


def test_record_dict_groups_records_by_type_in_order() -> None:
    arrays = ArrayRecord([np.zeros(1)])
    metrics = MetricRecord({"loss": 0.1})
    config = ConfigRecord({"lr": 0.01})
    more = ArrayRecord()
    rd = RecordDict({"m": metrics, "a": arrays, "c": config, "z": more})
    assert list(rd) == ["m", "a", "c", "z"]
    assert list(rd.array_records) == ["a", "z"]
    assert rd.array_records["a"] is arrays
    assert rd.metric_records == {"m": metrics}
    assert rd.config_records == {"c": config}


def test_record_dict_rejects_other_values() -> None:
    rd = RecordDict()
    with pytest.raises(RecordError, match=r"'cfg'.*dict"):
        rd["cfg"] = {"lr": 0.1}
    with pytest.raises(RecordError, match="str"):
        RecordDict({1: MetricRecord()})  # type: ignore[dict-item]


def test_record_dict_equality() -> None:
    def make() -> RecordDict:
        return RecordDict({"a": ArrayRecord([np.arange(3)]), "m": MetricRecord({"acc": 0.5})})

    assert make() == make()
    other = make()
    other["m"] = MetricRecord({"acc": 0.6})
    assert make() != other
    other = make()
    other["a"] = ConfigRecord()
    assert make() != other
