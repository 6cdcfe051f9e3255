"""Streaming weighted means of arrays and metrics.

Replies are added one at a time, and a stored reply array (`Array.stored`) is
read chunk by chunk straight into the running sum, so memory is the accumulator
plus one chunk, however many nodes reply and however large the model.

Precision: float arrays accumulate in float64 (complex in complex128), integer
and bool arrays in float64 too. Summing many float32 updates in float32 loses
digits as the sum grows; a float64 sum keeps the mean exact to float32 for any
realistic node count. Its price is memory (twice a float32 model), paid once
and independent of the node count. The sum is held in blocks so that producing
the mean frees the sum block by block: the peak stays near twice the model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

from flpg.app import arrays
from flpg.app.records import Array, ArrayRecord, MetricRecord
from flpg.errors import PayloadCorrupt


class ReplyRejected(ValueError):
    """A reply cannot be aggregated; the message names the array and why."""


STEP = 1 << 18
"""Elements handled at once when adding an in-memory array (bounds temporaries)."""

BLOCK = 1 << 23
"""Elements per accumulator block: 64 MiB of float64, above glibc's largest mmap
threshold, so a freed block goes back to the operating system at once."""


def _slices(array: Array, dtype: np.dtype[Any]) -> Iterator[tuple[int, npt.NDArray[Any]]]:
    """`(first element, 1-d values)` covering the array in order: chunk by chunk from
    the database for a stored array not yet read, in STEP slices otherwise."""
    source = array.source
    if array.in_memory or source is None:
        flat = array.numpy().reshape(-1)
        for start in range(0, flat.size, STEP):
            yield start, flat[start : start + STEP]
        return
    start = 0
    carry = b""
    for chunk in source.chunks():
        data = carry + chunk if carry else chunk
        usable = len(data) - len(data) % dtype.itemsize
        carry = bytes(data[usable:])
        values = np.frombuffer(data, dtype=dtype, count=usable // dtype.itemsize)
        yield start, values
        start += values.size


class _Sum:
    """The weighted float64 (complex128) sum of one array, in BLOCK-element blocks."""

    def __init__(self, name: str, dtype: str, shape: tuple[int, ...]) -> None:
        self.name = name
        self.dtype = arrays.parse_dtype(dtype, name)
        self.shape = shape
        self.size = math.prod(shape)
        self.kind: type[Any] = np.complex128 if self.dtype.kind == "c" else np.float64
        self.added = 0
        """Elements the last `add` added (also when it raised)."""
        self._scratch: npt.NDArray[Any] | None = None
        # np.zeros maps untouched pages lazily: the sum costs memory as it fills.
        self.blocks: list[npt.NDArray[Any] | None] = [
            np.zeros(min(BLOCK, self.size - first), dtype=self.kind)
            for first in range(0, self.size, BLOCK)
        ]

    def add(self, array: Array, weight: float, *, limit: int | None = None) -> None:
        """Add `weight` x the array's first `limit` (default: all, checked for NaN/Inf)
        elements. On ReplyRejected or PayloadCorrupt, `added` says how many were added."""
        self.added = 0
        check = limit is None and self.dtype.kind in "fc"
        for start, values in _slices(array, np.dtype(array.dtype)):
            if limit is not None:
                values = values[: max(limit - start, 0)]
            self._add(start, values, weight, check)
            self.added = start + values.size
            if limit is not None and self.added >= limit:
                break

    def _add(self, start: int, values: npt.NDArray[Any], weight: float, check: bool) -> None:
        """Add weight x values at element `start`; with `check`, first raise
        ReplyRejected (adding nothing) if a value is NaN or Inf."""
        scratch = self._scratch
        if scratch is None or scratch.size < values.size:
            scratch = self._scratch = np.empty(values.size, dtype=self.kind)
        product = np.multiply(values, weight, out=scratch[: values.size], dtype=self.kind)
        # A finite float64 sum means every value was finite; only then skip the
        # exact (slower) test.
        if check and not np.isfinite(product.sum()) and not np.isfinite(values).all():
            raise ReplyRejected(f"array {self.name!r} holds NaN or Inf values")
        pos = 0
        while pos < values.size:
            index, offset = divmod(start + pos, BLOCK)
            block = self.blocks[index]
            assert block is not None, "the mean was already taken"
            n = min(BLOCK - offset, values.size - pos)
            target = block[offset : offset + n]
            target += product[pos : pos + n]
            pos += n

    def mean(self, total_weight: float) -> npt.NDArray[Any]:
        """The sum / total_weight in the array's dtype (rounded for integers, >= 0.5
        for bool); frees the sum block by block as it goes."""
        out = np.empty(self.shape, dtype=self.dtype)
        flat = out.reshape(-1)
        for index, block in enumerate(self.blocks):
            assert block is not None, "the mean was already taken"
            self.blocks[index] = None
            block /= total_weight
            first = index * BLOCK
            part = flat[first : first + block.size]
            if self.dtype.kind in "iu":
                np.rint(block, out=block)
                part[...] = block
            elif self.dtype.kind == "b":
                part[...] = block >= 0.5
            else:
                part[...] = block
            del block
        return out


class WeightedArrayMean:
    """Running weighted mean of ArrayRecords shaped like `reference`.

    `reference` gives only the names, dtypes and shapes (a stored record is not read).
    """

    def __init__(self, reference: ArrayRecord) -> None:
        self._spec = [(name, a.dtype, a.shape) for name, a in reference.items()]
        self._sums: dict[str, _Sum] | None = None
        self.total_weight = 0.0
        self.count = 0

    def check(self, record: ArrayRecord) -> None:
        """Raise ReplyRejected unless `record` matches the reference's names, shapes
        and dtypes (byte order aside; values are checked for NaN/Inf while they are
        added). Dtypes are named as apps see them ('float32')."""
        names = list(record.keys())
        expected = [name for name, _, _ in self._spec]
        if names != expected:
            raise ReplyRejected(f"array names {names} do not match the global model's {expected}")
        for name, dtype, shape in self._spec:
            arr = record[name]
            if not arrays.same_dtype(arr.dtype, dtype) or arr.shape != shape:
                raise ReplyRejected(
                    f"array {name!r} is {arr.dtype}{list(arr.shape)}, "
                    f"the global model's is {dtype}{list(shape)}"
                )

    def add(self, record: ArrayRecord, weight: float) -> None:
        """Add one reply's arrays with `weight` (> 0).

        Raises ReplyRejected (naming the array) and leaves the sum as it was if the
        reply does not match the model, holds NaN/Inf, or its stored bytes are
        missing or corrupt (what was already added is read again and taken back).
        """
        if not (weight > 0 and math.isfinite(weight)):
            raise ReplyRejected(f"weight {weight!r} must be a positive number")
        self.check(record)
        if self._sums is None:
            self._sums = {name: _Sum(name, dtype, shape) for name, dtype, shape in self._spec}
        done: list[str] = []
        for name, _, _ in self._spec:
            try:
                self._sums[name].add(record[name], weight)
            except (ReplyRejected, PayloadCorrupt) as exc:
                partial = self._sums[name].added
                if partial:
                    self._sums[name].add(record[name], -weight, limit=partial)
                for earlier in done:
                    self._sums[earlier].add(record[earlier], -weight)
                raise ReplyRejected(str(exc)) from exc
            done.append(name)
        self.total_weight += weight
        self.count += 1

    def result(self) -> ArrayRecord:
        """The weighted mean in the reference's dtypes; ValueError if nothing was added.

        Takes the sums apart while it builds the mean: call it once.
        """
        if not self.count or self._sums is None:
            raise ValueError("no replies were aggregated")
        out = ArrayRecord()
        for name, _, _ in self._spec:
            out[name] = self._sums[name].mean(self.total_weight)
        self._sums = None
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


def array_slices(array: Array) -> Iterator[tuple[int, npt.NDArray[Any]]]:
    """`(first element, 1-d values)` covering `array` in order; a stored array not yet
    read is read chunk by chunk (never whole, and it stays stored)."""
    return _slices(array, np.dtype(array.dtype))


def read_array(array: Array) -> npt.NDArray[Any]:
    """The array's values, writeable; a stored array not yet read is read as a copy
    the `Array` does not keep (it stays stored: saving it again writes nothing)."""
    source = array.source
    if array.in_memory or source is None:
        return array.numpy()
    values = source.load()
    return values if values.flags.writeable else values.copy()


def work_dtype(dtype: str | np.dtype[Any]) -> np.dtype[Any]:
    """What a server update computes an array of `dtype` in: complex128 or float64."""
    return np.dtype(np.complex128 if np.dtype(dtype).kind == "c" else np.float64)


def state_dtype(dtype: str | np.dtype[Any]) -> np.dtype[Any]:
    """The dtype of server state (momentum, moments) kept for a model array of
    `dtype`: floats of at least 32 bits, float64 for integers, as numpy promotes."""
    return np.dtype(np.result_type(np.dtype(dtype).newbyteorder("="), np.float32))


def cast_into(values: npt.NDArray[Any], out: npt.NDArray[Any]) -> None:
    """Write computed `values` into `out` in its dtype, as a mean is stored: rounded to
    the nearest integer for integer dtypes, `>= 0.5` for bool."""
    if out.dtype.kind in "iu":
        out[...] = np.rint(values.real)
    elif out.dtype.kind == "b":
        out[...] = values.real >= 0.5
    else:
        out[...] = values


UPDATE_STEP = 1 << 16
"""Elements a server update handles at once (it makes several float64 temporaries)."""

UpdateStep = Callable[[str, slice, npt.NDArray[Any], npt.NDArray[Any]], npt.NDArray[Any]]
"""`(array name, slice of the flattened array, current values, mean values) -> new
values` of a server-side update, values in `work_dtype`."""


def server_update(current: ArrayRecord, mean: ArrayRecord, step: UpdateStep) -> ArrayRecord:
    """The new global arrays: `step` applied to each array of `mean` (in memory, as
    WeightedArrayMean gives it) with the same array of `current`, UPDATE_STEP elements at a
    time (temporaries stay small), in the arrays' order.

    The new values are written over `mean`'s (do not use it afterwards) in the model's
    dtypes (`cast_into`); each current array is read only while its update runs (a
    stored one is not kept). ValueError if the two records' names or shapes differ.
    """
    if list(current.keys()) != list(mean.keys()):
        raise ValueError(
            f"aggregated array names {list(mean.keys())} differ from the global model's "
            f"{list(current.keys())}"
        )
    out = ArrayRecord()
    for name, array in mean.items():
        if current[name].shape != array.shape:
            raise ValueError(
                f"aggregated array {name!r} has shape {list(array.shape)}, the global "
                f"model's {list(current[name].shape)}"
            )
        x = read_array(current[name]).reshape(-1)
        target = array.numpy()
        if not target.flags.writeable:
            target = target.copy()
        flat = target.reshape(-1)
        kind = work_dtype(target.dtype)
        for start in range(0, flat.size, UPDATE_STEP):
            part = slice(start, start + UPDATE_STEP)
            new = step(name, part, x[part].astype(kind), flat[part].astype(kind))
            cast_into(new, flat[part])
        del x
        out[name] = target
    return out
