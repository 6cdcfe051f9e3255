"""Record types mirroring Flower's Message API (Flower >= 1.21).

`Array` wraps one ndarray; `ArrayRecord`, `MetricRecord` and `ConfigRecord`
are typed, insertion-ordered mappings; `RecordDict` holds named records and is
the content of a `Message`. Values are validated and normalised on insert
(numpy scalars become Python `int`/`float`/...), so a record only ever holds
values it can store; anything else raises `RecordError` naming the key.

Metric and config records are stored as JSON so SQL can query them;
`records_to_json` and the `*_from_json` functions convert them to and from
strict JSON documents (no NaN/Infinity tokens) with an exact round trip.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from typing import Any, Protocol, TypeAlias, TypeVar

import numpy as np
import numpy.typing as npt

from flpg.app import arrays
from flpg.errors import RecordError

__all__ = [
    "Array",
    "ArrayRecord",
    "ArraySource",
    "ConfigRecord",
    "ConfigScalar",
    "ConfigValue",
    "MetricRecord",
    "MetricScalar",
    "MetricValue",
    "Record",
    "RecordDict",
    "config_records_from_json",
    "metric_records_from_json",
    "records_to_json",
]

MetricScalar: TypeAlias = int | float
MetricValue: TypeAlias = int | float | list[int] | list[float]
ConfigScalar: TypeAlias = int | float | str | bool | bytes
ConfigValue: TypeAlias = (
    int
    | float
    | str
    | bool
    | bytes
    | list[int]
    | list[float]
    | list[str]
    | list[bool]
    | list[bytes]
)

_UNNAMED = "<unnamed>"


def _type_name(value: object) -> str:
    return type(value).__name__


def _check_key(key: object, what: str) -> str:
    if not isinstance(key, str):
        raise RecordError(f"{what} keys must be str, got {_type_name(key)} ({key!r})")
    return key


# ---------------------------------------------------------------------------
# Array / ArrayRecord
# ---------------------------------------------------------------------------


class ArraySource(Protocol):
    """Where a stored array's bytes live until they are needed (see `Array.stored`)."""

    run_id: int
    array_id: int
    digest: bytes
    """The stored bytes' digest (`arrays.digest`)."""

    def load(self) -> npt.NDArray[Any]:
        """The whole array, newly read (one copy of its bytes)."""

    def chunks(self) -> Iterator[bytes]:
        """The array's bytes in order, a chunk at a time; raises `PayloadCorrupt` (after
        the last chunk at the latest) if the stored bytes are missing or corrupt."""


class Array:
    """One C-contiguous, little-endian ndarray with a storable dtype.

    Wraps the given array without copying when it already is C-contiguous and
    little-endian (so later mutation of that array is visible here); otherwise
    keeps a converted copy. `RecordError` for unsupported dtypes or non-arrays.

    An array received by `Grid.receive` or saved by the ServerApp is *stored*: only
    its dtype and shape are in memory, `numpy()` reads it on first use, and a
    streaming aggregator can read it chunk by chunk (`source`) instead.
    """

    __slots__ = ("_array", "_dtype", "_shape", "_source")

    def __init__(self, ndarray: npt.NDArray[Any], *, name: str = _UNNAMED) -> None:
        if not isinstance(ndarray, np.ndarray):
            raise RecordError(f"array {name!r} must be a numpy ndarray, got {_type_name(ndarray)}")
        if isinstance(ndarray, np.ma.MaskedArray):
            raise RecordError(f"array {name!r} is a masked array; its mask cannot be stored")
        self._array: npt.NDArray[Any] | None = arrays.to_storable(np.asarray(ndarray), name)
        self._dtype = ""
        self._shape: tuple[int, ...] = ()
        self._source: ArraySource | None = None

    @classmethod
    def stored(cls, dtype: str, shape: tuple[int, ...], source: ArraySource) -> Array:
        """An array whose bytes stay in the database until `numpy()` is called."""
        self = cls.__new__(cls)
        self._array = None
        self._dtype = dtype
        self._shape = tuple(shape)
        self._source = source
        return self

    @property
    def dtype(self) -> str:
        """Canonical dtype string, e.g. '<f4'."""
        if self._array is not None:
            return arrays.dtype_str(self._array.dtype)
        return self._dtype

    @property
    def shape(self) -> tuple[int, ...]:
        if self._array is not None:
            return tuple(int(n) for n in self._array.shape)
        return self._shape

    @property
    def nbytes(self) -> int:
        if self._array is not None:
            return int(self._array.nbytes)
        return math.prod(self._shape) * np.dtype(self._dtype).itemsize

    @property
    def source(self) -> ArraySource | None:
        """Where the array is stored, for an array that came from the database."""
        return self._source

    @property
    def in_memory(self) -> bool:
        """False for a stored array whose bytes have not been read yet."""
        return self._array is not None

    def numpy(self) -> npt.NDArray[Any]:
        """Return the wrapped array (not a copy); a stored array is read first.

        Changing the returned array in place is allowed: sending it again compares
        its bytes with the stored digest and writes them anew if they changed.
        """
        if self._array is None:
            assert self._source is not None
            self._array = self._source.load()
        return self._array

    def __eq__(self, other: object) -> bool:
        """Equal iff dtype, shape and raw bytes are equal (NaNs compare by bytes)."""
        if not isinstance(other, Array):
            return NotImplemented
        if self.dtype != other.dtype or self.shape != other.shape:
            return False
        mine = self.numpy().reshape(-1).view(np.uint8)
        theirs = other.numpy().reshape(-1).view(np.uint8)
        return bool(np.array_equal(mine, theirs))

    def __repr__(self) -> str:
        where = "" if self._array is not None else ", stored"
        return f"Array(dtype={self.dtype!r}, shape={self.shape!r}{where})"


ArrayLike: TypeAlias = Array | npt.NDArray[Any]


class ArrayRecord(MutableMapping[str, Array]):
    """Insertion-ordered mapping of names to `Array`s.

    Built from nothing, a list of arrays (named "0", "1", ...), a mapping of
    names to ndarrays/`Array`s, or another `ArrayRecord`. Assigning an ndarray
    wraps it in an `Array`. Equality compares names in order and arrays.
    """

    def __init__(
        self,
        arrays: ArrayRecord | Mapping[str, ArrayLike] | Sequence[ArrayLike] | None = None,
    ) -> None:
        self._data: dict[str, Array] = {}
        if arrays is None:
            return
        if isinstance(arrays, np.ndarray):
            raise RecordError("ArrayRecord takes a list of arrays or a mapping, not one ndarray")
        if isinstance(arrays, Mapping):
            for key, value in arrays.items():
                self[key] = value
        elif isinstance(arrays, Sequence) and not isinstance(arrays, str | bytes):
            for index, value in enumerate(arrays):
                self[str(index)] = value
        else:
            raise RecordError(
                f"ArrayRecord takes a list or mapping of arrays, got {_type_name(arrays)}"
            )

    @classmethod
    def from_numpy_ndarrays(cls, ndarrays: Sequence[npt.NDArray[Any]]) -> ArrayRecord:
        """Record named "0", "1", ... in list order."""
        return cls(list(ndarrays))

    def to_numpy_ndarrays(self) -> list[npt.NDArray[Any]]:
        """The arrays in insertion order."""
        return [array.numpy() for array in self._data.values()]

    def count_bytes(self) -> int:
        """Total payload bytes of all arrays."""
        return sum(array.nbytes for array in self._data.values())

    def __getitem__(self, key: str) -> Array:
        return self._data[key]

    def __setitem__(self, key: str, value: object) -> None:
        name = _check_key(key, "ArrayRecord")
        if isinstance(value, Array):
            self._data[name] = value
        elif isinstance(value, np.ndarray):
            self._data[name] = Array(value, name=name)
        else:
            raise RecordError(
                f"array record key {name!r}: value of type {_type_name(value)} is not "
                "allowed; use a numpy ndarray or Array"
            )

    def __delitem__(self, key: str) -> None:
        del self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ArrayRecord):
            return NotImplemented
        return list(self._data.items()) == list(other._data.items())

    def __repr__(self) -> str:
        inner = ", ".join(f"{k!r}: {v!r}" for k, v in self._data.items())
        return f"ArrayRecord({{{inner}}})"


# ---------------------------------------------------------------------------
# MetricRecord / ConfigRecord
# ---------------------------------------------------------------------------


def _same_value(a: object, b: object) -> bool:
    """Type-strict equality; NaN equals NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b


_V = TypeVar("_V")


class _ValueRecord(MutableMapping[str, _V]):
    """Insertion-ordered mapping whose values are validated by `_convert`."""

    def __init__(self, values: Mapping[str, Any] | None = None) -> None:
        self._data: dict[str, _V] = {}
        if values is None:
            return
        if not isinstance(values, Mapping):
            raise RecordError(f"{type(self).__name__} takes a mapping, got {_type_name(values)}")
        for key, value in values.items():
            self[key] = value

    def _convert(self, key: str, value: object) -> _V:
        raise NotImplementedError

    def __getitem__(self, key: str) -> _V:
        return self._data[key]

    def __setitem__(self, key: str, value: object) -> None:
        name = _check_key(key, type(self).__name__)
        self._data[name] = self._convert(name, value)

    def __delitem__(self, key: str) -> None:
        del self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __eq__(self, other: object) -> bool:
        """Same keys (any order) and type-strictly equal values; NaN == NaN."""
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, _ValueRecord)
        if self._data.keys() != other._data.keys():
            return False
        return all(_same_value(v, other._data[k]) for k, v in self._data.items())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._data!r})"


def _metric_scalar(value: object) -> MetricScalar | None:
    if isinstance(value, bool | np.bool_):
        return None
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value)
    return None


def _homogeneous(key: str, what: str, items: list[Any]) -> None:
    kinds = {type(item) for item in items}
    if len(kinds) > 1:
        names = ", ".join(sorted(k.__name__ for k in kinds))
        raise RecordError(f"{what} key {key!r}: list mixes element types ({names})")


class MetricRecord(_ValueRecord[MetricValue]):
    """Metrics: `int`, `float`, `list[int]` or `list[float]` (NaN/Inf allowed).

    numpy scalars (and lists of them) become Python `int`/`float`; bool, str,
    None, dicts, mixed int/float lists etc. raise `RecordError` naming the key.
    """

    def _convert(self, key: str, value: object) -> MetricValue:
        allowed = "use int, float, list[int] or list[float]"
        if isinstance(value, list):
            items: list[Any] = []
            for item in value:
                converted = _metric_scalar(item)
                if converted is None:
                    raise RecordError(
                        f"metric record key {key!r}: list element of type "
                        f"{_type_name(item)} is not allowed; {allowed}"
                    )
                items.append(converted)
            _homogeneous(key, "metric record", items)
            return items
        scalar = _metric_scalar(value)
        if scalar is None:
            raise RecordError(
                f"metric record key {key!r}: value of type {_type_name(value)} "
                f"is not allowed; {allowed}"
            )
        return scalar


def _config_scalar(value: object) -> ConfigScalar | None:
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value)
    if isinstance(value, str):  # includes np.str_
        return str(value)
    if isinstance(value, bytes):  # includes np.bytes_
        return bytes(value)
    return None


class ConfigRecord(_ValueRecord[ConfigValue]):
    """Config: `int`, `float`, `str`, `bool`, `bytes`, or a list of one of those.

    numpy scalars become Python values; lists must not mix element types;
    anything else raises `RecordError` naming the key.
    """

    def _convert(self, key: str, value: object) -> ConfigValue:
        allowed = "use int, float, str, bool, bytes or a list of one of those"
        if isinstance(value, list):
            items: list[Any] = []
            for item in value:
                converted = _config_scalar(item)
                if converted is None:
                    raise RecordError(
                        f"config record key {key!r}: list element of type "
                        f"{_type_name(item)} is not allowed; {allowed}"
                    )
                items.append(converted)
            _homogeneous(key, "config record", items)
            return items
        scalar = _config_scalar(value)
        if scalar is None:
            raise RecordError(
                f"config record key {key!r}: value of type {_type_name(value)} "
                f"is not allowed; {allowed}"
            )
        return scalar


# ---------------------------------------------------------------------------
# RecordDict
# ---------------------------------------------------------------------------

Record: TypeAlias = ArrayRecord | MetricRecord | ConfigRecord
_R = TypeVar("_R", ArrayRecord, MetricRecord, ConfigRecord)


class RecordDict(MutableMapping[str, Record]):
    """Insertion-ordered mapping of names to Array/Metric/Config records.

    Values of any other type raise `RecordError` naming the key. Equality
    compares names (any order) and records.
    """

    def __init__(self, records: Mapping[str, Record] | None = None) -> None:
        self._data: dict[str, Record] = {}
        if records is None:
            return
        if not isinstance(records, Mapping):
            raise RecordError(f"RecordDict takes a mapping, got {_type_name(records)}")
        for key, value in records.items():
            self[key] = value

    def _of_type(self, kind: type[_R]) -> dict[str, _R]:
        return {k: v for k, v in self._data.items() if isinstance(v, kind)}

    @property
    def array_records(self) -> dict[str, ArrayRecord]:
        """The `ArrayRecord`s, in order (a new dict; the records are shared)."""
        return self._of_type(ArrayRecord)

    @property
    def metric_records(self) -> dict[str, MetricRecord]:
        """The `MetricRecord`s, in order (a new dict; the records are shared)."""
        return self._of_type(MetricRecord)

    @property
    def config_records(self) -> dict[str, ConfigRecord]:
        """The `ConfigRecord`s, in order (a new dict; the records are shared)."""
        return self._of_type(ConfigRecord)

    def __getitem__(self, key: str) -> Record:
        return self._data[key]

    def __setitem__(self, key: str, value: object) -> None:
        name = _check_key(key, "RecordDict")
        if not isinstance(value, ArrayRecord | MetricRecord | ConfigRecord):
            raise RecordError(
                f"record {name!r} has type {_type_name(value)}; "
                "use ArrayRecord, MetricRecord or ConfigRecord"
            )
        self._data[name] = value

    def __delitem__(self, key: str) -> None:
        del self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RecordDict):
            return NotImplemented
        if self._data.keys() != other._data.keys():
            return False
        return all(v == other._data[k] for k, v in self._data.items())

    def __repr__(self) -> str:
        inner = ", ".join(f"{k!r}: {v!r}" for k, v in self._data.items())
        return f"RecordDict({{{inner}}})"


# ---------------------------------------------------------------------------
# JSON (jsonb) encoding
# ---------------------------------------------------------------------------

_JSON_TO_NONFINITE: dict[str, float] = {
    "NaN": math.nan,
    "Infinity": math.inf,
    "-Infinity": -math.inf,
}


def _nonfinite_name(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def _metric_to_json(value: MetricScalar) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return _nonfinite_name(value)
    return value


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


def _config_to_json(value: ConfigScalar) -> Any:
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode("ascii")}
    if isinstance(value, float) and not math.isfinite(value):
        return {"$float": _nonfinite_name(value)}
    if isinstance(value, str) and not _jsonb_safe(value):
        return {"$str": base64.b64encode(value.encode("utf-8", "surrogatepass")).decode("ascii")}
    return value


def records_to_json(
    records: Mapping[str, MetricRecord | ConfigRecord],
) -> dict[str, dict[str, Any]]:
    """Encode metric/config records as a strict-JSON document `{name: {key: value}}`.

    Plain values stay plain (so `doc->'name'->>'key'` works in SQL). Non-finite
    floats become "NaN"/"Infinity"/"-Infinity" in metric records and
    `{"$float": ...}` in config records; bytes become `{"$bytes": <base64>}`; a
    string jsonb cannot hold (NUL, an unpaired surrogate) becomes `{"$str": <base64
    of its UTF-8, surrogates passed>}`, so every config string round-trips exactly.
    A record name or key jsonb cannot hold raises RecordError naming it.
    Decode with `metric_records_from_json` / `config_records_from_json`.
    """
    doc: dict[str, dict[str, Any]] = {}
    for name, record in records.items():
        _json_key(_check_key(name, "record"), "record name")
        if isinstance(record, MetricRecord):
            doc[name] = {
                _json_key(k, f"record {name!r} key"): [_metric_to_json(x) for x in v]
                if isinstance(v, list)
                else _metric_to_json(v)
                for k, v in record.items()
            }
        elif isinstance(record, ConfigRecord):
            doc[name] = {
                _json_key(k, f"record {name!r} key"): [_config_to_json(x) for x in v]
                if isinstance(v, list)
                else _config_to_json(v)
                for k, v in record.items()
            }
        else:
            raise RecordError(
                f"record {name!r} has type {_type_name(record)}; only MetricRecord and "
                "ConfigRecord are stored as JSON"
            )
    return doc


def _bad_json(what: str, key: str, value: object) -> RecordError:
    return RecordError(f"stored {what} key {key!r} has an invalid JSON value {value!r}")


def _metric_from_json(key: str, value: object) -> MetricScalar:
    if isinstance(value, bool):
        raise _bad_json("metric record", key, value)
    if isinstance(value, int | float):
        return value
    if isinstance(value, str) and value in _JSON_TO_NONFINITE:
        return _JSON_TO_NONFINITE[value]
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
        if tag == "$float" and isinstance(payload, str) and payload in _JSON_TO_NONFINITE:
            return _JSON_TO_NONFINITE[payload]
        if tag == "$str" and isinstance(payload, str):
            try:
                return base64.b64decode(payload, validate=True).decode("utf-8", "surrogatepass")
            except (binascii.Error, ValueError) as exc:
                raise _bad_json("config record", key, value) from exc
    raise _bad_json("config record", key, value)


def _widen_numbers(items: list[Any]) -> list[Any]:
    """Undo a number-type change by the database: [1, 2.5] -> [1.0, 2.5].

    (PostgreSQL's jsonb prints floats >= 1e16 without a decimal point.)
    """
    kinds = {type(x) for x in items}
    if kinds == {int, float}:
        return [float(x) for x in items]
    return items


def _check_doc(doc: object) -> Mapping[str, Any]:
    if doc is None:
        return {}
    if not isinstance(doc, Mapping):
        raise RecordError(f"stored records must be a JSON object, got {_type_name(doc)}")
    for name, body in doc.items():
        if not isinstance(body, Mapping):
            raise RecordError(f"stored record {name!r} must be a JSON object, got {body!r}")
    return doc


def metric_records_from_json(doc: Mapping[str, Any] | None) -> dict[str, MetricRecord]:
    """Decode a `records_to_json` document of metric records (None -> {})."""
    out: dict[str, MetricRecord] = {}
    for name, body in _check_doc(doc).items():
        record = MetricRecord()
        for key, value in body.items():
            if isinstance(value, list):
                record[key] = _widen_numbers([_metric_from_json(key, x) for x in value])
            else:
                record[key] = _metric_from_json(key, value)
        out[name] = record
    return out


def config_records_from_json(doc: Mapping[str, Any] | None) -> dict[str, ConfigRecord]:
    """Decode a `records_to_json` document of config records (None -> {})."""
    out: dict[str, ConfigRecord] = {}
    for name, body in _check_doc(doc).items():
        record = ConfigRecord()
        for key, value in body.items():
            if isinstance(value, list):
                record[key] = _widen_numbers([_config_from_json(key, x) for x in value])
            else:
                record[key] = _config_from_json(key, value)
        out[name] = record
    return out
