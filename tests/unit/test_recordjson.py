"""Tests for flpg.store.recordjson: the JSON (jsonb) form of metric and config records."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flpg.app.records import ArrayRecord, ConfigRecord, MetricRecord
from flpg.errors import RecordError
from flpg.store.recordjson import (
    config_records_from_json,
    metric_records_from_json,
    records_to_json,
)


def same(a: Any, b: Any) -> bool:
    """Type-strict deep equality with NaN == NaN (independent of the records' __eq__)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(v, b[k]) for k, v in a.items())
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return bool(a == b)


INTS = st.integers(min_value=-(2**63), max_value=2**63 - 1)
FLOATS = st.floats(allow_nan=True, allow_infinity=True)
KEYS = st.text(max_size=8).filter(lambda k: "\x00" not in k)  # jsonb keys cannot hold NUL
METRIC_VALUES = st.one_of(INTS, FLOATS, st.lists(INTS, max_size=4), st.lists(FLOATS, max_size=4))
CONFIG_SCALARS = [INTS, FLOATS, st.text(max_size=8), st.booleans(), st.binary(max_size=8)]
CONFIG_VALUES = st.one_of(*CONFIG_SCALARS, *(st.lists(s, max_size=4) for s in CONFIG_SCALARS))

METRIC_RECORDS = st.dictionaries(KEYS, st.dictionaries(KEYS, METRIC_VALUES, max_size=5), max_size=3)
CONFIG_RECORDS = st.dictionaries(KEYS, st.dictionaries(KEYS, CONFIG_VALUES, max_size=5), max_size=3)


def through_json(doc: dict[str, dict[str, Any]]) -> Any:
    """What the database hands back: strict JSON text, parsed."""
    return json.loads(json.dumps(doc, allow_nan=False))


@settings(max_examples=200)
@given(raw=METRIC_RECORDS)
def test_metric_records_json_round_trip_is_exact(raw: dict[str, dict[str, Any]]) -> None:
    records = {name: MetricRecord(body) for name, body in raw.items()}
    back = metric_records_from_json(through_json(records_to_json(records)))
    assert same({k: dict(v) for k, v in back.items()}, raw)
    assert back == records
    assert all(type(v) is MetricRecord for v in back.values())


@settings(max_examples=200)
@given(raw=CONFIG_RECORDS)
def test_config_records_json_round_trip_is_exact(raw: dict[str, dict[str, Any]]) -> None:
    records = {name: ConfigRecord(body) for name, body in raw.items()}
    back = config_records_from_json(through_json(records_to_json(records)))
    assert same({k: dict(v) for k, v in back.items()}, raw)
    assert back == records


def test_json_keeps_plain_values_plain() -> None:
    doc = records_to_json(
        {
            "config": ConfigRecord({"lr": 0.1, "epochs": 2, "opt": "sgd", "nesterov": True}),
            "metrics": MetricRecord({"loss": 0.25, "n": 10, "hist": [1.0, 2.0]}),
        }
    )
    text = json.dumps(doc, allow_nan=False)
    assert json.loads(text) == {
        "config": {"lr": 0.1, "epochs": 2, "opt": "sgd", "nesterov": True},
        "metrics": {"loss": 0.25, "n": 10, "hist": [1.0, 2.0]},
    }


def test_json_encodes_non_finite_and_bytes_as_strict_json() -> None:
    metrics = MetricRecord({"a": math.nan, "b": math.inf, "c": [-math.inf, 1.0]})
    doc = records_to_json(
        {
            "m": metrics,
            "c": ConfigRecord({"x": math.nan, "y": [-math.inf], "z": b"\x00\xff", "s": "NaN"}),
        }
    )
    json.dumps(doc, allow_nan=False)  # must not raise
    assert doc["m"] == {"a": "NaN", "b": "Infinity", "c": ["-Infinity", 1.0]}
    assert doc["c"] == {
        "x": {"$float": "NaN"},
        "y": [{"$float": "-Infinity"}],
        "z": {"$bytes": "AP8="},
        "s": "NaN",  # a str in a config record stays a str
    }
    back = config_records_from_json(through_json({"c": doc["c"]}))["c"]
    assert metric_records_from_json(through_json({"m": doc["m"]}))["m"] == metrics
    assert back["s"] == "NaN"
    assert back["z"] == b"\x00\xff"


def test_json_decode_widens_int_float_mixes_from_the_database() -> None:
    # PostgreSQL jsonb prints 1e16 as 10000000000000000, which parses as int.
    back = metric_records_from_json({"m": {"h": [10000000000000000, 0.5]}})
    assert back["m"]["h"] == [1e16, 0.5]
    hist = back["m"]["h"]
    assert isinstance(hist, list)
    assert all(type(x) is float for x in hist)


@pytest.mark.parametrize(
    "doc",
    [
        {"m": {"a": "nan"}},
        {"m": {"a": True}},
        {"m": {"a": None}},
        {"m": {"a": {"$float": "NaN"}}},
        {"m": [1]},
        [],
    ],
)
def test_metric_json_decode_rejects_invalid_documents(doc: Any) -> None:
    with pytest.raises(RecordError):
        metric_records_from_json(doc)


@pytest.mark.parametrize(
    "doc",
    [
        {"c": {"a": {"$bytes": "not base64!"}}},
        {"c": {"a": {"$float": "1.5"}}},
        {"c": {"a": {"$other": "x"}}},
        {"c": {"a": {"$bytes": "AA==", "$float": "NaN"}}},
        {"c": {"a": None}},
        {"c": {"a": [True, 1]}},
    ],
)
def test_config_json_decode_rejects_invalid_documents(doc: Any) -> None:
    with pytest.raises(RecordError):
        config_records_from_json(doc)


def test_json_decode_of_null_is_empty() -> None:
    assert metric_records_from_json(None) == {}
    assert config_records_from_json(None) == {}


def test_records_to_json_rejects_array_records() -> None:
    with pytest.raises(RecordError, match="'arrays'"):
        records_to_json({"arrays": ArrayRecord()})  # type: ignore[dict-item]
