"""The insertion-ordered, str-keyed mapping the record types share."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Self, TypeVar

from flpg.errors import RecordError

__all__ = ["Keyed", "check_key", "type_name"]


def type_name(value: object) -> str:
    return type(value).__name__


def check_key(key: object, what: str) -> str:
    """`key` if it is a `str`; else `RecordError` saying "`what` keys must be str"."""
    if not isinstance(key, str):
        raise RecordError(f"{what} keys must be str, got {type_name(key)} ({key!r})")
    return key


_V = TypeVar("_V")


class Keyed(MutableMapping[str, _V]):
    """Insertion-ordered storage shared by the record types: reading, deleting,
    iterating and copying; each subclass validates values in `__setitem__` and
    defines `==`."""

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

    def copy(self) -> Self:
        """A shallow copy (as Flower's): a new mapping holding the same values."""
        new = copy.copy(self)
        new._data = dict(self._data)
        return new

    def _insert_all(self, values: object, what: str, *, keep_input: bool = True) -> None:
        """Insert the items of the mapping `values` (None: nothing); RecordError
        saying "`what` takes a mapping" for anything else. With `keep_input=False`
        the items are then removed from `values` (which must be mutable)."""
        if values is None:
            return
        if not isinstance(values, Mapping):
            raise RecordError(f"{what} takes a mapping, got {type_name(values)}")
        if not keep_input and not isinstance(values, MutableMapping):
            raise RecordError(f"{what}(keep_input=False) needs a mutable mapping")
        for key, value in values.items():
            self[key] = value
        if not keep_input:
            assert isinstance(values, MutableMapping)
            values.clear()

    def _items_repr(self) -> str:
        return ", ".join(f"{k!r}: {v!r}" for k, v in self._data.items())
