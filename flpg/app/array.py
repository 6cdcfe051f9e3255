"""`Array`: one ndarray as a record holds it, in memory or stored in the database.

`flpg.app.arrays` converts arrays to and from bytes; this module holds the value
type apps see (Flower's `flwr.app.Array`) and the `ArraySource` a stored array
reads its bytes from.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from flpg.app import arrays
from flpg.errors import RecordError

__all__ = ["Array", "ArraySource"]

_UNNAMED = "<unnamed>"


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
            raise RecordError(
                f"array {name!r} must be a numpy ndarray, got {type(ndarray).__name__}"
            )
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
