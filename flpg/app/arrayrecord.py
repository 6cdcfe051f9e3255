"""`ArrayRecord`: named `Array`s, e.g. a model's parameters (Flower's `flwr.app.ArrayRecord`)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, MutableMapping, MutableSequence, Sequence
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

from flpg.app.array import Array
from flpg.app.keyed import Keyed, check_key, type_name
from flpg.app.tensors import is_tensor, numpy_for_torch, require_torch
from flpg.errors import RecordError

__all__ = ["ArrayLike", "ArrayRecord"]

ArrayLike: TypeAlias = Array | npt.NDArray[Any]

_INIT_ERROR = (
    "ArrayRecord takes one of: a list of arrays, a mapping of names to arrays, "
    "or a PyTorch state_dict (keep_input is keyword-only)"
)


def _one_input(args: tuple[Any, ...], keywords: list[Any]) -> object:
    """The single input given positionally or by one of Flower's keywords (None
    for none); `RecordError` if more than one is given."""
    given = [*args, *(value for value in keywords if value is not None)]
    if len(given) > 1:
        raise RecordError(_INIT_ERROR)
    return given[0] if given else None


def _clear(values: object) -> None:
    """Empty the input of a `keep_input=False` record (after it was read whole)."""
    if isinstance(values, MutableMapping | MutableSequence):
        values.clear()
    else:
        raise RecordError(
            f"ArrayRecord(keep_input=False) needs a list or dict it can empty, "
            f"got {type_name(values)}"
        )


class ArrayRecord(Keyed[Array]):
    """Insertion-ordered mapping of names to `Array`s.

    Built from nothing, a list of ndarrays/`Array`s/tensors (named "0", "1",
    ...), a mapping of names to those (a PyTorch `state_dict` included), or
    another `ArrayRecord`; positionally or by Flower's keywords `numpy_ndarrays`,
    `array_dict` or `torch_state_dict`. ndarrays are wrapped without copying;
    tensors are copied. `keep_input=False` empties the input once the record is
    built (nothing is removed if building fails). Assigning an ndarray or tensor
    wraps it in an `Array`. Equality compares names in order and arrays.
    """

    def __init__(
        self,
        *args: ArrayRecord | Mapping[str, Any] | Sequence[Any] | None,
        numpy_ndarrays: Sequence[Any] | None = None,
        torch_state_dict: Mapping[str, Any] | None = None,
        array_dict: Mapping[str, Any] | None = None,
        keep_input: bool = True,
    ) -> None:
        super().__init__()
        arrays = _one_input(args, [numpy_ndarrays, torch_state_dict, array_dict])
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
                f"ArrayRecord takes a list or mapping of arrays, got {type_name(arrays)}"
            )
        if not keep_input:
            _clear(arrays)

    @classmethod
    def from_array_dict(
        cls, array_dict: Mapping[str, Array], *, keep_input: bool = True
    ) -> ArrayRecord:
        """Record holding the given `Array`s under their names."""
        return cls(array_dict=array_dict, keep_input=keep_input)

    @classmethod
    def from_numpy_ndarrays(
        cls, ndarrays: Sequence[npt.NDArray[Any]], *, keep_input: bool = True
    ) -> ArrayRecord:
        """Record named "0", "1", ... in list order."""
        return cls(numpy_ndarrays=ndarrays, keep_input=keep_input)

    @classmethod
    def from_torch_state_dict(
        cls, state_dict: Mapping[str, Any], *, keep_input: bool = True
    ) -> ArrayRecord:
        """Record holding a copy of each tensor of a PyTorch `state_dict`, in order."""
        return cls(torch_state_dict=state_dict, keep_input=keep_input)

    def to_numpy_ndarrays(self, *, keep_input: bool = True) -> list[npt.NDArray[Any]]:
        """The arrays in insertion order (not copies); `keep_input=False` empties the record."""
        out = [array.numpy() for array in self._data.values()]
        if not keep_input:
            self._data.clear()
        return out

    def to_torch_state_dict(self, *, keep_input: bool = True) -> OrderedDict[str, Any]:
        """The arrays as tensors (`torch.from_numpy`, sharing memory with the
        arrays, or with a native-endian, writable copy of one that is not), in
        insertion order; `keep_input=False` empties the record.
        `RuntimeError` if PyTorch is not installed."""
        torch = require_torch("to_torch_state_dict")
        out: OrderedDict[str, Any] = OrderedDict(
            (name, torch.from_numpy(numpy_for_torch(array.numpy())))
            for name, array in self._data.items()
        )
        if not keep_input:
            self._data.clear()
        return out

    def count_bytes(self) -> int:
        """Bytes as Flower counts them: each array's `data` (np.save bytes, header
        included) plus the length of its name."""
        return sum(array.data_nbytes + len(name) for name, array in self._data.items())

    def __setitem__(self, key: str, value: object) -> None:
        name = check_key(key, "ArrayRecord")
        if isinstance(value, Array):
            self._data[name] = value
        elif isinstance(value, np.ndarray) or is_tensor(value):
            self._data[name] = Array(value, name=name)
        else:
            raise RecordError(
                f"array record key {name!r}: value of type {type_name(value)} is not "
                "allowed; use a numpy ndarray or Array"
            )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ArrayRecord):
            return NotImplemented
        return list(self._data.items()) == list(other._data.items())

    def __repr__(self) -> str:
        return f"ArrayRecord({{{self._items_repr()}}})"
