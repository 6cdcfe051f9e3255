"""Record types mirroring Flower's Message API (Flower >= 1.21).

`ArrayRecord`, `MetricRecord` and `ConfigRecord` are typed, insertion-ordered
mappings (an `ArrayRecord` holds `Array`s, defined in `flpg.app.array` and
re-exported here); `RecordDict` holds named records and is the content of a
`Message`. Values are validated and normalised on insert (numpy scalars become
Python `int`/`float`/...), so a record only ever holds values it can store;
anything else raises `RecordError` naming the key.

Metric and config records are stored as JSON; their JSON form is defined in
`flpg.store.recordjson`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from typing import Any, ClassVar, TypeAlias, TypeVar, cast

import numpy as np
import numpy.typing as npt

from flpg.app.array import Array, ArraySource
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


def _type_name(value: object) -> str:
    return type(value).__name__


def check_key(key: object, what: str) -> str:
    """`key` if it is a `str`; else `RecordError` saying "`what` keys must be str"."""
    if not isinstance(key, str):
        raise RecordError(f"{what} keys must be str, got {_type_name(key)} ({key!r})")
    return key


_V = TypeVar("_V")


class _Keyed(MutableMapping[str, _V]):
    """Insertion-ordered storage shared by the record types: reading, deleting and
    iterating; each subclass validates values in `__setitem__` and defines `==`."""

    def __init__(self) -> None:
        self._data: dict[str, _V] = {}

    def __getitem__(self, key: str) -> _V:
        return self._data[key]

    def __delitem__(self, key: str) -> None:
        del self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def _insert_all(self, values: object, what: str) -> None:
        """Insert the items of the mapping `values` (None: nothing); RecordError
        saying "`what` takes a mapping" for anything else."""
        if values is None:
            return
        if not isinstance(values, Mapping):
            raise RecordError(f"{what} takes a mapping, got {_type_name(values)}")
        for key, value in values.items():
            self[key] = value

    def _items_repr(self) -> str:
        return ", ".join(f"{k!r}: {v!r}" for k, v in self._data.items())


# ---------------------------------------------------------------------------
# ArrayRecord
# ---------------------------------------------------------------------------

ArrayLike: TypeAlias = Array | npt.NDArray[Any]


class ArrayRecord(_Keyed[Array]):
    """Insertion-ordered mapping of names to `Array`s.

    Built from nothing, a list of arrays (named "0", "1", ...), a mapping of
    names to ndarrays/`Array`s, or another `ArrayRecord`. Assigning an ndarray
    wraps it in an `Array`. Equality compares names in order and arrays.
    """

    def __init__(
        self,
        arrays: ArrayRecord | Mapping[str, ArrayLike] | Sequence[ArrayLike] | None = None,
    ) -> None:
        super().__init__()
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

    def __setitem__(self, key: str, value: object) -> None:
        name = check_key(key, "ArrayRecord")
        if isinstance(value, Array):
            self._data[name] = value
        elif isinstance(value, np.ndarray):
            self._data[name] = Array(value, name=name)
        else:
            raise RecordError(
                f"array record key {name!r}: value of type {_type_name(value)} is not "
                "allowed; use a numpy ndarray or Array"
            )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ArrayRecord):
            return NotImplemented
        return list(self._data.items()) == list(other._data.items())

    def __repr__(self) -> str:
        return f"ArrayRecord({{{self._items_repr()}}})"


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


def _homogeneous(key: str, what: str, items: list[Any]) -> None:
    kinds = {type(item) for item in items}
    if len(kinds) > 1:
        names = ", ".join(sorted(k.__name__ for k in kinds))
        raise RecordError(f"{what} key {key!r}: list mixes element types ({names})")


class _ScalarRecord(_Keyed[_V]):
    """Insertion-ordered mapping of str keys to allowed scalars or lists of one type.

    A subclass fixes the allowed types: `_scalar` returns a value normalised to a
    Python scalar, or None if its type is not allowed; `_what` names the record
    and `_allowed` lists the types in `RecordError` messages.
    """

    _what: ClassVar[str]
    _allowed: ClassVar[str]

    def __init__(self, values: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self._insert_all(values, type(self).__name__)

    @staticmethod
    def _scalar(value: object) -> object | None:
        raise NotImplementedError

    def _convert(self, key: str, value: object) -> _V:
        if isinstance(value, list):
            items: list[Any] = []
            for item in value:
                converted = self._scalar(item)
                if converted is None:
                    raise RecordError(
                        f"{self._what} key {key!r}: list element of type "
                        f"{_type_name(item)} is not allowed; {self._allowed}"
                    )
                items.append(converted)
            _homogeneous(key, self._what, items)
            return cast(_V, items)
        scalar = self._scalar(value)
        if scalar is None:
            raise RecordError(
                f"{self._what} key {key!r}: value of type {_type_name(value)} "
                f"is not allowed; {self._allowed}"
            )
        return cast(_V, scalar)

    def __setitem__(self, key: str, value: object) -> None:
        name = check_key(key, type(self).__name__)
        self._data[name] = self._convert(name, value)

    def __eq__(self, other: object) -> bool:
        """Same keys (any order) and type-strictly equal values; NaN == NaN."""
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, _ScalarRecord)
        if self._data.keys() != other._data.keys():
            return False
        return all(_same_value(v, other._data[k]) for k, v in self._data.items())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._data!r})"


def _number(value: object) -> int | float | None:
    """A Python or numpy integer or float as Python `int`/`float`; None for anything
    else, bools included."""
    if isinstance(value, bool | np.bool_):
        return None
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value)
    return None


class MetricRecord(_ScalarRecord[MetricValue]):
    """Metrics: `int`, `float`, `list[int]` or `list[float]` (NaN/Inf allowed).

    numpy scalars (and lists of them) become Python `int`/`float`; bool, str,
    None, dicts, mixed int/float lists etc. raise `RecordError` naming the key.
    """

    _what = "metric record"
    _allowed = "use int, float, list[int] or list[float]"

    @staticmethod
    def _scalar(value: object) -> MetricScalar | None:
        return _number(value)


class ConfigRecord(_ScalarRecord[ConfigValue]):
    """Config: `int`, `float`, `str`, `bool`, `bytes`, or a list of one of those.

    numpy scalars become Python values; lists must not mix element types;
    anything else raises `RecordError` naming the key.
    """

    _what = "config record"
    _allowed = "use int, float, str, bool, bytes or a list of one of those"

    @staticmethod
    def _scalar(value: object) -> ConfigScalar | None:
        if isinstance(value, bool | np.bool_):
            return bool(value)
        number = _number(value)
        if number is not None:
            return number
        if isinstance(value, str):  # includes np.str_
            return str(value)
        if isinstance(value, bytes):  # includes np.bytes_
            return bytes(value)
        return None


# ---------------------------------------------------------------------------
# RecordDict
# ---------------------------------------------------------------------------

Record: TypeAlias = ArrayRecord | MetricRecord | ConfigRecord
_R = TypeVar("_R", ArrayRecord, MetricRecord, ConfigRecord)


class RecordDict(_Keyed[Record]):
    """Insertion-ordered mapping of names to Array/Metric/Config records.

    Values of any other type raise `RecordError` naming the key. Equality
    compares names (any order) and records.
    """

    def __init__(self, records: Mapping[str, Record] | None = None) -> None:
        super().__init__()
        self._insert_all(records, "RecordDict")

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

    def __setitem__(self, key: str, value: object) -> None:
        name = check_key(key, "RecordDict")
        if not isinstance(value, ArrayRecord | MetricRecord | ConfigRecord):
            raise RecordError(
                f"record {name!r} has type {_type_name(value)}; "
                "use ArrayRecord, MetricRecord or ConfigRecord"
            )
        self._data[name] = value

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RecordDict):
            return NotImplemented
        if self._data.keys() != other._data.keys():
            return False
        return all(v == other._data[k] for k, v in self._data.items())

    def __repr__(self) -> str:
        return f"RecordDict({{{self._items_repr()}}})"
