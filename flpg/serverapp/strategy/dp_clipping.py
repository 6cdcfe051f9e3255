"""The arithmetic of the differential-privacy wrappers (Flower's
`flwr.common.differential_privacy`), on ArrayRecords, streaming.

A reply's model update is its arrays minus the round's global arrays; its L2 norm
is taken over all arrays at once (FlatClip, https://arxiv.org/abs/1710.06963). An
update longer than the clipping norm is scaled down to it and added back to the
global arrays. `Reference` holds the global arrays in memory once per round; a
reply's stored arrays are read chunk by chunk, twice at most (its norm, then, only
if it must be clipped, the clipped copy), so one reply costs O(model) at most.

Precision and dtypes: norms and clipped values are computed in float64 and come
back in the model's dtypes (integer arrays rounded); Flower computes in the
arrays' own dtype. An update within the norm is passed on as it is (Flower adds
it back to the global arrays, which can round it). Only float and integer arrays
can be clipped or noised (Flower's arithmetic fails on the others).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from flpg.app.records import Array, ArrayRecord
from flpg.serverapp.strategy.aggregate import ReplyRejected, WeightedArrayMean

__all__ = [
    "KEY_CLIPPING_NORM",
    "KEY_NORM_BIT",
    "Reference",
    "adaptive_noise_params",
    "add_gaussian_noise",
    "check_numeric",
    "compute_stdv",
    "geometric_update",
]

NDArray = npt.NDArray[Any]

STEP = 1 << 18
"""Elements handled at once (bounds the float64 temporaries and noise draws)."""

_NUMERIC_KINDS = "iuf"

KEY_CLIPPING_NORM = "clipping_norm"
"""The config key the client-side wrappers send the clipping norm under, which
`fixedclipping_mod` and `adaptiveclipping_mod` read (Flower's `KEY_CLIPPING_NORM`)."""

KEY_NORM_BIT = "norm_bit"
"""The metric `adaptiveclipping_mod` adds to a reply: true (1) if its update was
clipped (Flower's `KEY_NORM_BIT`)."""


class NormalSource(Protocol):
    """What noise is drawn from: numpy's global random state (`np.random`, as
    Flower draws it) or a `np.random.Generator`."""

    def normal(self, loc: Any = ..., scale: Any = ..., size: Any = ...) -> Any: ...


def check_numeric(arrays: ArrayRecord, who: str) -> None:
    """ValueError naming the first array that is neither float nor integer."""
    for name, array in arrays.items():
        if np.dtype(array.dtype).kind not in _NUMERIC_KINDS:
            raise ValueError(
                f"{who} clips and noises float and integer arrays only; "
                f"array {name!r} is {array.dtype}"
            )


def _values(array: Array) -> Iterator[tuple[int, NDArray]]:
    """`(first element, 1-d values)` covering the array in order, at most STEP at
    once: chunk by chunk from the database for a stored array not yet read."""
    source = array.source
    if array.in_memory or source is None:
        flat = array.numpy().reshape(-1)
        for start in range(0, flat.size, STEP):
            yield start, flat[start : start + STEP]
        return
    dtype = np.dtype(array.dtype)
    start, carry = 0, b""
    for chunk in source.chunks():
        data = carry + chunk if carry else chunk
        usable = len(data) - len(data) % dtype.itemsize
        carry = bytes(data[usable:])
        values = np.frombuffer(data, dtype=dtype, count=usable // dtype.itemsize)
        for offset in range(0, values.size, STEP):
            yield start + offset, values[offset : offset + STEP]
        start += values.size


def _read(array: Array) -> NDArray:
    """The array's values; a stored one read anew, not kept in the Array."""
    source = array.source
    if array.in_memory or source is None:
        return array.numpy()
    return source.load()


class Reference:
    """The round's global arrays, in memory (read once), that replies are measured
    against. `check` (the model's names, shapes and dtypes) is FedAvg's."""

    def __init__(self, arrays: ArrayRecord) -> None:
        self._shape = WeightedArrayMean(arrays)
        self._flat = {name: _read(array).reshape(-1) for name, array in arrays.items()}
        self._dtypes = {name: np.dtype(array.dtype) for name, array in arrays.items()}
        self._shapes = {name: array.shape for name, array in arrays.items()}

    def update_norm(self, record: ArrayRecord) -> float:
        """The L2 norm of `record - reference` over all arrays, in float64 (Flower's
        `get_norm` of the update). ReplyRejected if the record does not match the
        model or its update is not finite."""
        self._shape.check(record)
        total = 0.0
        for name, flat in self._flat.items():
            for start, values in _values(record[name]):
                diff = values.astype(np.float64) - flat[start : start + values.size]
                total += float(np.dot(diff, diff))
        if not math.isfinite(total):
            raise ReplyRejected("the update holds NaN or Inf values, or its norm overflows")
        return math.sqrt(total)

    def clipped(self, record: ArrayRecord, scale: float) -> ArrayRecord:
        """New in-memory arrays `reference + (record - reference) * scale`, in the
        model's dtypes (integers rounded), in the record's order (checked first)."""
        out = ArrayRecord()
        for name, flat in self._flat.items():
            dtype = self._dtypes[name]
            result = np.empty(self._shapes[name], dtype=dtype)
            target = result.reshape(-1)
            for start, values in _values(record[name]):
                base = flat[start : start + values.size].astype(np.float64)
                part = base + (values.astype(np.float64) - base) * scale
                if dtype.kind in "iu":
                    np.rint(part, out=part)
                target[start : start + values.size] = part
            out[name] = Array(result)
        return out

    def clip(self, record: ArrayRecord, clipping_norm: float) -> tuple[ArrayRecord, bool]:
        """`record` with its update clipped to `clipping_norm` (Flower's
        `compute_adaptive_clip_model_update`), and whether it was scaled down (the
        norm bit). A record within the norm comes back as it is, unread beyond its
        norm. ReplyRejected as `update_norm`."""
        norm = self.update_norm(record)
        if norm <= clipping_norm:
            return record, False
        return self.clipped(record, clipping_norm / norm), True


def compute_stdv(noise_multiplier: float, clipping_norm: float, num_sampled_clients: int) -> float:
    """The standard deviation of the noise added to the aggregate:
    `noise_multiplier * clipping_norm / num_sampled_clients` (Flower's `compute_stdv`)."""
    return float(noise_multiplier * clipping_norm / num_sampled_clients)


def add_gaussian_noise(arrays: ArrayRecord, std: float, rng: NormalSource) -> ArrayRecord:
    """The arrays plus Gaussian noise N(0, std), each value's noise cast to its array's
    dtype before it is added, drawn array by array in order as Flower's
    `add_gaussian_noise_inplace` draws it (in STEP pieces, which draw the same
    sequence). In-memory arrays are changed in place, stored ones read into new
    arrays; ValueError for arrays that are neither float nor integer."""
    check_numeric(arrays, "the differential-privacy noise")
    out = ArrayRecord()
    for name, array in arrays.items():
        values = _read(array)
        if (array.source is not None and array.in_memory) or not values.flags.writeable:
            values = values.copy()  # a stored array's values stay as stored
        flat = values.reshape(-1)
        for start in range(0, flat.size, STEP):
            part = flat[start : start + STEP]
            part += np.asarray(rng.normal(0, std, part.size)).astype(values.dtype)
        out[name] = Array(values)
    return out


def adaptive_noise_params(
    noise_multiplier: float, num_sampled_clients: int, clipped_count_stddev: float | None
) -> tuple[float, float]:
    """`(clipped_count_stddev, effective noise_multiplier)` of adaptive clipping
    (Andrew et al., https://arxiv.org/abs/1905.03871; Flower's
    `compute_adaptive_noise_params`). With noise: the count's stddev defaults to
    `num_sampled_clients / 20`, and the arrays' noise multiplier becomes
    `(z^-2 - (2 sigma_b)^-2)^-1/2`, ValueError unless `z < 2 sigma_b`. Without
    noise (z = 0): the count's stddev defaults to 0 and the multiplier stays 0."""
    if noise_multiplier <= 0:
        return (0.0 if clipped_count_stddev is None else clipped_count_stddev), 0.0
    if clipped_count_stddev is None:
        clipped_count_stddev = num_sampled_clients / 20
    if noise_multiplier >= 2 * clipped_count_stddev:
        raise ValueError(
            f"noise_multiplier ({noise_multiplier}) must be below 2 x clipped_count_stddev "
            f"({clipped_count_stddev}; num_sampled_clients / 20 unless given): increase "
            "clipped_count_stddev or decrease noise_multiplier"
        )
    effective = (noise_multiplier**-2 - (2 * clipped_count_stddev) ** -2) ** -0.5
    return clipped_count_stddev, effective


def geometric_update(
    clipping_norm: float, clipped_fraction: float, target_clipped_quantile: float, lr: float
) -> float:
    """Flower's geometric update of the clipping norm:
    `clipping_norm * exp(-lr * (clipped_fraction - target_clipped_quantile))`."""
    return clipping_norm * math.exp(-lr * (clipped_fraction - target_clipped_quantile))
