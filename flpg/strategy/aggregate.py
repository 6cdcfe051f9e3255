"""Streaming weighted means of arrays and metrics.

Replies are added one at a time, so memory is O(model), not O(nodes x model).
Float arrays accumulate in float64 (complex in complex128): summing many
float32 updates in float32 loses digits as the sum grows, and one float64
accumulator costs at most twice the model once, independent of the node count.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from flpg.records import ArrayRecord, MetricRecord


class ReplyRejected(ValueError):
    """A reply cannot be aggregated; the message names the array and why."""


class WeightedArrayMean:
    """Running weighted mean of ArrayRecords shaped like `reference`."""

    def __init__(self, reference: ArrayRecord) -> None:
        self._spec = [(name, a.dtype, a.shape) for name, a in reference.items()]
        self._acc: dict[str, np.ndarray[Any, Any]] = {}
        self.total_weight = 0.0
        self.count = 0

    def check(self, record: ArrayRecord) -> None:
        """Raise ReplyRejected unless `record` matches the reference's names, shapes,
        dtypes, and holds only finite values."""
        names = list(record.keys())
        expected = [name for name, _, _ in self._spec]
        if names != expected:
            raise ReplyRejected(f"array names {names} do not match the global model's {expected}")
        for name, dtype, shape in self._spec:
            arr = record[name]
            if arr.dtype != dtype or arr.shape != shape:
                raise ReplyRejected(
                    f"array {name!r} is {arr.dtype}{list(arr.shape)}, "
                    f"the global model's is {dtype}{list(shape)}"
                )
            nd = arr.numpy()
            if nd.dtype.kind in "fc" and not np.isfinite(nd).all():
                raise ReplyRejected(f"array {name!r} holds NaN or Inf values")

    def add(self, record: ArrayRecord, weight: float) -> None:
        """Add one reply's arrays with `weight` (> 0); raises ReplyRejected, adding nothing."""
        if not (weight > 0 and math.isfinite(weight)):
            raise ReplyRejected(f"weight {weight!r} must be a positive number")
        self.check(record)
        for name, _, _ in self._spec:
            nd = record[name].numpy()
            acc = self._acc.get(name)
            if acc is None:
                kind = np.complex128 if nd.dtype.kind == "c" else np.float64
                acc = self._acc[name] = np.zeros(nd.shape, dtype=kind)
            acc += nd * weight if nd.dtype.kind in "fc" else nd.astype(np.float64) * weight
        self.total_weight += weight
        self.count += 1

    def result(self) -> ArrayRecord:
        """The weighted mean in the reference's dtypes; ValueError if nothing was added."""
        if not self.count:
            raise ValueError("no replies were aggregated")
        out = ArrayRecord()
        for name, dtype, _ in self._spec:
            mean: np.ndarray[Any, Any] = self._acc[name] / self.total_weight
            target = np.dtype(dtype)
            if target.kind in "iu":
                mean = np.rint(mean)
            elif target.kind == "b":
                mean = mean.real >= 0.5
            out[name] = mean.astype(target)
        return out


class WeightedMetricMean:
    """Running weighted mean of every numeric metric (lists element-wise)."""

    def __init__(self, weight_key: str) -> None:
        self._weight_key = weight_key
        self._sums: dict[str, Any] = {}
        self._weights: dict[str, float] = {}

    def add(self, record: MetricRecord, weight: float) -> None:
        """Add one reply's metrics; keys missing in some replies average over the others."""
        for key, value in record.items():
            if key == self._weight_key:
                continue
            contribution = np.asarray(value, dtype=np.float64) * weight
            if key in self._sums and np.shape(self._sums[key]) == contribution.shape:
                self._sums[key] = self._sums[key] + contribution
            elif key in self._sums:
                continue  # a list of another length: keep the first shape seen
            else:
                self._sums[key] = contribution
            self._weights[key] = self._weights.get(key, 0.0) + weight

    def result(self) -> MetricRecord:
        """The weighted means (an empty record if nothing was added)."""
        out = MetricRecord()
        for key, total in self._sums.items():
            mean = total / self._weights[key]
            out[key] = mean.tolist() if np.ndim(mean) else float(mean)
        return out
