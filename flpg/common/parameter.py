"""ndarrays as `np.save` bytes and back, and `now()`, as Flower's `flwr.common` has them."""

from __future__ import annotations

import datetime
import io
from typing import Any

import numpy as np
import numpy.typing as npt

from flpg.app import Array

__all__ = ["array_from_numpy", "bytes_to_ndarray", "ndarray_to_bytes", "now"]


def ndarray_to_bytes(ndarray: npt.NDArray[Any]) -> bytes:
    """The array as `np.save` writes it (never pickled: object arrays raise ValueError)."""
    out = io.BytesIO()
    np.save(out, ndarray, allow_pickle=False)
    return out.getvalue()


def bytes_to_ndarray(tensor: bytes) -> npt.NDArray[Any]:
    """The array `np.save` bytes hold (pickles refused: ValueError)."""
    loaded = np.load(io.BytesIO(tensor), allow_pickle=False)
    if not isinstance(loaded, np.ndarray):
        raise ValueError("the bytes do not hold one array as np.save writes it")
    return loaded


def array_from_numpy(ndarray: npt.NDArray[Any]) -> Array:
    """`Array.from_numpy_ndarray(ndarray)` (Flower deprecates this name)."""
    return Array.from_numpy_ndarray(ndarray)


def now() -> datetime.datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.datetime.now(tz=datetime.UTC)
