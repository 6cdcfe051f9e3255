"""The arithmetic of Flower's differential-privacy mods, on lists of ndarrays.

Flower's FlatClip (`flwr.common.differential_privacy`): a model update is the
difference between the arrays a ClientApp returns and those it received; its L2
norm is taken over all arrays at once; an update longer than the clipping norm
is scaled down to it and added back to the received arrays. Local DP then adds
Gaussian noise of Flower's standard deviation to every value.

Differences from Flower, where Flower's arithmetic fails or is silent: norms and
updates are computed in float64 (results come back in each pair's numpy result
dtype, as Flower's arithmetic gives them; integer results are rounded); an
update of norm 0 is left as it is (Flower divides by it); arrays of another
shape, non-numeric dtypes and updates that are not finite raise ValueError.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["clip_update", "gaussian_std", "noised", "update_norm"]

NDArray = npt.NDArray[Any]

_NUMERIC_KINDS = "iuf"


def _check_pairs(received: Sequence[NDArray], returned: Sequence[NDArray]) -> None:
    if len(received) != len(returned):
        raise ValueError(f"{len(returned)} arrays returned for {len(received)} received")
    for index, (old, new) in enumerate(zip(received, returned, strict=True)):
        for array in (old, new):
            if array.dtype.kind not in _NUMERIC_KINDS:
                raise ValueError(
                    f"array {index} has dtype {array.dtype}; only numbers can be clipped"
                )
        if old.shape != new.shape:
            raise ValueError(f"array {index} has shape {new.shape}, but {old.shape} was received")


def update_norm(received: Sequence[NDArray], returned: Sequence[NDArray]) -> float:
    """The L2 norm of `returned - received` over all arrays (Flower's `get_norm` of
    the update), in float64; ValueError if the arrays do not pair up (see module)."""
    _check_pairs(received, returned)
    total = 0.0
    for old, new in zip(received, returned, strict=True):
        update = new.astype(np.float64) - old.astype(np.float64)
        total += float(np.dot(update.ravel(), update.ravel()))
    return math.sqrt(total)


def _cast(values: NDArray, dtype: np.dtype[Any]) -> NDArray:
    """`values` as an ndarray of `dtype` (0-d arithmetic gives numpy scalars)."""
    if dtype.kind in "iu":
        values = np.rint(values)
    return np.asarray(values).astype(dtype, copy=False)


def clip_update(
    received: Sequence[NDArray], returned: Sequence[NDArray], clipping_norm: float
) -> tuple[list[NDArray], bool]:
    """`received + update * min(1, clipping_norm / ||update||)` for the update
    `returned - received` (Flower's `compute_clip_model_update`), and whether the
    update was scaled down (Flower's norm bit). An update within the norm comes back
    as returned (in the result dtype). ValueError: the arrays do not pair up, or the
    update is not finite (see module)."""
    norm = update_norm(received, returned)
    if not math.isfinite(norm):
        raise ValueError("the update is not finite")
    dtypes = [np.result_type(old, new) for old, new in zip(received, returned, strict=True)]
    if norm <= clipping_norm:
        return [new.astype(d, copy=False) for new, d in zip(returned, dtypes, strict=True)], False
    scale = clipping_norm / norm
    out = []
    for old, new, dtype in zip(received, returned, dtypes, strict=True):
        base = old.astype(np.float64)
        out.append(_cast(base + (new.astype(np.float64) - base) * scale, dtype))
    return out, True


def gaussian_std(sensitivity: float, epsilon: float, delta: float) -> float:
    """Local DP's noise standard deviation, as Flower's LocalDpMod computes it:
    `sensitivity * sqrt(2 ln(1.25 / delta)) / epsilon`."""
    return sensitivity * math.sqrt(2 * math.log(1.25 / delta)) / epsilon


def noised(arrays: Sequence[NDArray], std: float) -> list[NDArray]:
    """New arrays: each plus Gaussian noise N(0, std) drawn from numpy's global
    random state (`np.random.normal`, array by array, cast to the array's dtype,
    as Flower's `add_gaussian_noise_inplace` draws it; `np.random.seed` repeats it)."""
    out = []
    for array in arrays:
        copy = np.array(array, copy=True)
        copy += np.random.normal(0, std, array.shape).astype(array.dtype)
        out.append(copy)
    return out
