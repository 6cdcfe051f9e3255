"""The JSON (jsonb) form of metric and config records, as messages and checkpoints store them.

`records_to_json` and the `*_records_from_json` functions convert records to and
from strict JSON documents (no NaN/Infinity tokens) with an exact round trip, so
SQL can query the values (`doc->'name'->>'key'`).
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from flpg.app.records import ConfigRecord, ConfigScalar, MetricRecord, MetricScalar, check_key
from flpg.errors import RecordError

__all__ = ["config_records_from_json", "metric_records_from_json", "records_to_json"]

_JSON_TO_NONFINITE: dict[str, float] = {
    "NaN": math.nan,
    "Infinity": math.inf,
    "-Infinity": -math.inf,
}


def _nonfinite_name(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def _jsonb_safe(text: str) -> bool:
    """Whether jsonb can hold `text`: no NUL (\\u0000) and no unpaired surrogate."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _json_key(key: str, what: str) -> str:
    if not _jsonb_safe(key):
        raise RecordError(
            f"{what} {key!r} holds a character the database cannot store in a key "
            "(NUL or an unpaired surrogate); rename it"
        )
    return key


# ---------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------


BIG_FLOAT = 1e16
"""From this magnitude on jsonb prints a float without a decimal point (`1e+16` comes
back as the integer 10000000000000000), so such floats are stored as text."""


def _float_as_text(value: float) -> str | None:
    """The text a float is stored as, if jsonb cannot keep it a float (None if it can)."""
    if not math.isfinite(value):
        return _nonfinite_name(value)
    return repr(value) if abs(value) >= BIG_FLOAT else None


def _float_from_text(text: str) -> float | None:
    """The float `_float_as_text` wrote as `text` (None for any other text)."""
    if text in _JSON_TO_NONFINITE:
        return _JSON_TO_NONFINITE[text]
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and abs(value) >= BIG_FLOAT else None


def _metric_to_json(value: MetricScalar) -> Any:
    if isinstance(value, float):
        text = _float_as_text(value)
        return value if text is None else text
    return value


def _config_to_json(value: ConfigScalar) -> Any:
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode("ascii")}
    if isinstance(value, float) and (text := _float_as_text(value)) is not None:
        return {"$float": text}
    if isinstance(value, str) and not _jsonb_safe(value):
        return {"$str": base64.b64encode(value.encode("utf-8", "surrogatepass")).decode("ascii")}
    return value


def _encoder(name: str, record: object) -> Callable[[Any], Any]:
    """How the scalars of `record` are encoded; RecordError unless it is stored as JSON."""
    if isinstance(record, MetricRecord):
        return _metric_to_json
    if isinstance(record, ConfigRecord):
        return _config_to_json
    raise RecordError(
        f"record {name!r} has type {type(record).__name__}; only MetricRecord and "
        "ConfigRecord are stored as JSON"
    )


def records_to_json(
    records: Mapping[str, MetricRecord | ConfigRecord],
) -> dict[str, dict[str, Any]]:
    """Encode metric/config records as a strict-JSON document `{name: {key: value}}`.

    Plain values stay plain (so `doc->'name'->>'key'` works in SQL). Floats jsonb
    cannot keep floats (non-finite, or of magnitude >= 1e16) become text in metric
    records ("NaN", "-Infinity", "1e+16") and `{"$float": <text>}` in config records;
    bytes become `{"$bytes": <base64>}`; a string jsonb cannot hold (NUL, an unpaired
    surrogate) becomes `{"$str": <base64 of its UTF-8, surrogates passed>}`, so every
    config string round-trips exactly.
    A record name or key jsonb cannot hold raises RecordError naming it.
    Decode with `metric_records_from_json` / `config_records_from_json`.
    """
    doc: dict[str, dict[str, Any]] = {}
    for name, record in records.items():
        _json_key(check_key(name, "record"), "record name")
        encode = _encoder(name, record)
        doc[name] = {
            _json_key(k, f"record {name!r} key"): [encode(x) for x in v]
            if isinstance(v, list)
            else encode(v)
            for k, v in record.items()
        }
    return doc


# ---------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------


def _bad_json(what: str, key: str, value: object) -> RecordError:
    return RecordError(f"stored {what} key {key!r} has an invalid JSON value {value!r}")


def _metric_from_json(key: str, value: object) -> MetricScalar:
    if isinstance(value, bool):
        raise _bad_json("metric record", key, value)
    if isinstance(value, int | float):
        return value
    if isinstance(value, str) and (number := _float_from_text(value)) is not None:
        return number
    raise _bad_json("metric record", key, value)


def _config_from_json(key: str, value: object) -> ConfigScalar:
    if isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dict) and len(value) == 1:
        ((tag, payload),) = value.items()
        if tag == "$bytes" and isinstance(payload, str):
            try:
                return base64.b64decode(payload, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise _bad_json("config record", key, value) from exc
        if tag == "$float" and isinstance(payload, str):
            number = _float_from_text(payload)
            if number is not None:
                return number
        if tag == "$str" and isinstance(payload, str):
            try:
                return base64.b64decode(payload, validate=True).decode("utf-8", "surrogatepass")
            except (binascii.Error, ValueError) as exc:
                raise _bad_json("config record", key, value) from exc
    raise _bad_json("config record", key, value)


def _widen_numbers(items: list[Any]) -> list[Any]:
    """A list mixing ints and floats holds floats only: [1, 2.5] -> [1.0, 2.5]."""
    kinds = {type(x) for x in items}
    if kinds == {int, float}:
        return [float(x) for x in items]
    return items


def _check_doc(doc: object) -> Mapping[str, Any]:
    if doc is None:
        return {}
    if not isinstance(doc, Mapping):
        raise RecordError(f"stored records must be a JSON object, got {type(doc).__name__}")
    for name, body in doc.items():
        if not isinstance(body, Mapping):
            raise RecordError(f"stored record {name!r} must be a JSON object, got {body!r}")
    return doc


_R = TypeVar("_R", MetricRecord, ConfigRecord)


def _records_from_json(
    doc: Mapping[str, Any] | None, kind: type[_R], decode: Callable[[str, object], Any]
) -> dict[str, _R]:
    """Decode a `records_to_json` document into records of `kind`, scalars by `decode`."""
    out: dict[str, _R] = {}
    for name, body in _check_doc(doc).items():
        record = kind()
        for key, value in body.items():
            if isinstance(value, list):
                record[key] = _widen_numbers([decode(key, x) for x in value])
            else:
                record[key] = decode(key, value)
        out[name] = record
    return out


def metric_records_from_json(doc: Mapping[str, Any] | None) -> dict[str, MetricRecord]:
    """Decode a `records_to_json` document of metric records (None -> {})."""
    return _records_from_json(doc, MetricRecord, _metric_from_json)


def config_records_from_json(doc: Mapping[str, Any] | None) -> dict[str, ConfigRecord]:
    """Decode a `records_to_json` document of config records (None -> {})."""
    return _records_from_json(doc, ConfigRecord, _config_from_json)
