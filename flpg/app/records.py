"""Record types mirroring Flower's Message API (Flower >= 1.21).

`ArrayRecord`, `MetricRecord` and `ConfigRecord` are typed, insertion-ordered
mappings (an `ArrayRecord` holds `Array`s; both are defined in their own modules
and re-exported here); `RecordDict` holds named records and is the content of a
`Message`. Values are validated and normalised on insert (numpy scalars become
Python `int`/`float`/...), so a record only ever holds values it can store;
anything else raises `RecordError` naming the key.

Metric and config records are stored as JSON; their JSON form is defined in
`flpg.store.recordjson`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar, TypeAlias, TypeVar, cast

import numpy as np

from flpg.app.array import Array, ArraySource
from flpg.app.arrayrecord import ArrayRecord
from flpg.app.keyed import Keyed, check_key, type_name
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
    "check_key",
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


_V = TypeVar("_V")

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


class _ScalarRecord(Keyed[_V]):
    """Insertion-ordered mapping of str keys to allowed scalars or lists of one type.

    A subclass fixes the allowed types: `_scalar` returns a value normalised to a
    Python scalar, or None if its type is not allowed; `_what` names the record
    and `_allowed` lists the types in `RecordError` messages.
    """

    _what: ClassVar[str]
    _allowed: ClassVar[str]

    def __init__(self, values: Mapping[str, Any] | None = None, keep_input: bool = True) -> None:
        """Insert `values`; `keep_input=False` then empties it (as in Flower)."""
        super().__init__()
        self._insert_all(values, type(self).__name__, keep_input=keep_input)

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
                        f"{type_name(item)} is not allowed; {self._allowed}"
                    )
                items.append(converted)
            _homogeneous(key, self._what, items)
            return cast(_V, items)
        scalar = self._scalar(value)
        if scalar is None:
            raise RecordError(
                f"{self._what} key {key!r}: value of type {type_name(value)} "
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

    def __init__(
        self, metric_dict: Mapping[str, Any] | None = None, keep_input: bool = True
    ) -> None:
        """Insert `metric_dict`; `keep_input=False` then empties it (as in Flower)."""
        super().__init__(metric_dict, keep_input)

    @staticmethod
    def _scalar(value: object) -> MetricScalar | None:
        return _number(value)

    def count_bytes(self) -> int:
        """Bytes as Flower counts them: 8 per number, plus the length of each key."""
        return sum(
            8 * (len(value) if isinstance(value, list) else 1) + len(key)
            for key, value in self._data.items()
        )


class ConfigRecord(_ScalarRecord[ConfigValue]):
    """Config: `int`, `float`, `str`, `bool`, `bytes`, or a list of one of those.

    numpy scalars become Python values; lists must not mix element types;
    anything else raises `RecordError` naming the key.
    """

    _what = "config record"
    _allowed = "use int, float, str, bool, bytes or a list of one of those"

    def __init__(
        self, config_dict: Mapping[str, Any] | None = None, keep_input: bool = True
    ) -> None:
        """Insert `config_dict`; `keep_input=False` then empties it (as in Flower)."""
        super().__init__(config_dict, keep_input)

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

    def count_bytes(self) -> int:
        """Bytes as Flower counts them: 1 per bool, 8 per int or float, `len()` of
        each str or bytes, plus the length of each key."""
        return sum(
            sum(_config_bytes(item) for item in value)
            if isinstance(value, list)
            else _config_bytes(value)
            for value in self._data.values()
        ) + sum(len(key) for key in self._data)


def _config_bytes(value: object) -> int:
    if isinstance(value, bool):
        return 1
    if isinstance(value, str | bytes):
        return len(value)
    return 8


# ---------------------------------------------------------------------------
# RecordDict
# ---------------------------------------------------------------------------

Record: TypeAlias = ArrayRecord | MetricRecord | ConfigRecord
_R = TypeVar("_R", ArrayRecord, MetricRecord, ConfigRecord)


class RecordDict(Keyed[Record]):
    """Insertion-ordered mapping of names to Array/Metric/Config records.

    Values of any other type raise `RecordError` naming the key. Equality
    compares names (any order) and records.
    """

    def __init__(
        self,
        records: Mapping[str, Record] | None = None,
        *,
        parameters_records: Mapping[str, ArrayRecord] | None = None,
        metrics_records: Mapping[str, MetricRecord] | None = None,
        configs_records: Mapping[str, ConfigRecord] | None = None,
    ) -> None:
        """`records`, then Flower's deprecated per-type keywords (their entries after)."""
        super().__init__()
        self._insert_all(records, "RecordDict")
        for legacy in (parameters_records, metrics_records, configs_records):
            self._insert_all(legacy, "RecordDict")

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

    def count_bytes(self) -> int:
        """The sum of the records' `count_bytes()` (record names not counted)."""
        return sum(record.count_bytes() for record in self._data.values())

    def __setitem__(self, key: str, value: object) -> None:
        name = check_key(key, "RecordDict")
        if not isinstance(value, ArrayRecord | MetricRecord | ConfigRecord):
            raise RecordError(
                f"record {name!r} has type {type_name(value)}; "
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
