"""FedBuff's arithmetic (Nguyen et al., 2022), without a database: staleness weights,
the buffer of staleness-weighted updates, and the model versions in-flight work
started from.

A reply `y_i` from a node that trained from model version `v_i` arrives while the
server is at version `t`; its staleness is `tau_i = t - v_i` and its update
`y_i - x_{v_i}`. With `n_i` its number of examples and `s` the staleness function,
the server update over the buffered replies is

    x_{t+1} = x_t + server_learning_rate * sum_i n_i s(tau_i) (y_i - x_{v_i}) / sum_i n_i

Dividing by `sum_i n_i` (not by the staleness-weighted total) makes stale replies
move the model less, as the paper's `1/K sum_i s(tau_i) Delta_i` does for equal
`n_i`; with fresh replies only and a rate of 1 the update is FedAvg's weighted mean.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from flpg.app.records import Array, ArrayRecord
from flpg.errors import PayloadCorrupt
from flpg.serverapp.strategy.aggregate import (
    ReplyRejected,
    WeightedArrayMean,
    array_slices,
    cast_into,
    work_dtype,
)

StalenessFn = Callable[[int], float]
"""Staleness `tau >= 0` (server versions since the node's model) -> weight > 0."""

STALENESS_FUNCTIONS = ("constant", "polynomial", "hinge")


def staleness_function(
    name: str, *, exponent: float = 0.5, slope: float = 10.0, threshold: int = 4
) -> StalenessFn:
    """One of the paper's staleness weightings (ValueError, one line, for a bad name or
    parameter):

    - "constant": 1;
    - "polynomial": `(1 + tau) ** -exponent` (exponent 0.5: FedBuff's `1/sqrt(1 + tau)`);
    - "hinge": 1 while `tau <= threshold`, then `1 / (slope * (tau - threshold) + 1)`.
    """
    if not 0.0 <= exponent < math.inf:
        raise ValueError(f"staleness exponent must be a finite number >= 0, got {exponent}")
    if not 0.0 <= slope < math.inf:
        raise ValueError(f"hinge slope must be a finite number >= 0, got {slope}")
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 0:
        raise ValueError(f"hinge threshold must be an int >= 0, got {threshold!r}")
    if name == "constant":
        return lambda tau: 1.0
    if name == "polynomial":
        return lambda tau: float((1.0 + tau) ** -exponent)
    if name == "hinge":
        return lambda tau: 1.0 if tau <= threshold else 1.0 / (slope * (tau - threshold) + 1.0)
    raise ValueError(f"staleness function must be one of {STALENESS_FUNCTIONS}, got {name!r}")


def _add(
    total: npt.NDArray[Any],
    array: Array,
    weight: float,
    progress: list[int],
    *,
    check: bool,
    limit: int | None = None,
) -> None:
    """`total += weight * array` (its first `limit` elements), streamed chunk by chunk;
    `progress[0]` says how many elements were added, also when it raises. With `check`,
    ReplyRejected (that chunk not added) for NaN or Inf values."""
    progress[0] = 0
    for start, values in array_slices(array):
        if limit is not None:
            values = values[: max(limit - start, 0)]
        part = np.multiply(values, weight, dtype=total.dtype)
        if check and not np.isfinite(part).all():
            raise ReplyRejected("holds NaN or Inf values")
        total[start : start + part.size] += part
        progress[0] = start + part.size
        if limit is not None and progress[0] >= limit:
            return


class StalenessBuffer:
    """The staleness-weighted sum of the updates buffered for the next server update.

    Holds one float64 (complex128) sum per model array, whatever the number of replies:
    each reply, and the stale model version it started from, is read chunk by chunk
    straight into the sum (a stored array is never loaded whole). A fresh reply (its
    base is the model the update applies to) costs one read: its base is subtracted
    once, at `apply`. `reference` gives only names, dtypes and shapes.
    """

    def __init__(self, reference: ArrayRecord) -> None:
        self._checker = WeightedArrayMean(reference)
        self._spec = [(name, a.dtype, a.shape) for name, a in reference.items()]
        self._sums: dict[str, npt.NDArray[Any]] | None = None
        self._current_weight = 0.0
        self.examples = 0.0
        """Sum of the buffered replies' numbers of examples."""
        self.count = 0
        """Replies buffered."""

    def add(
        self, record: ArrayRecord, num_examples: float, weight: float, base: ArrayRecord | None
    ) -> None:
        """Buffer `num_examples * weight * (record - base)`; `base` None means the model
        `apply` will be given (a fresh reply).

        ReplyRejected (naming the array), the buffer unchanged, if the reply does not
        match the model (names, dtypes, shapes), holds NaN/Inf, its stored bytes are
        missing or corrupt, or `num_examples` or `weight` is not a positive number.
        """
        for what, value in (("num-examples", num_examples), ("staleness weight", weight)):
            if not (value > 0 and math.isfinite(value)):
                raise ReplyRejected(f"{what} {value!r} must be a positive number")
        self._checker.check(record)
        if base is not None:
            self._checker.check(base)
        if self._sums is None:
            self._sums = {
                name: np.zeros(math.prod(shape), dtype=work_dtype(dtype))
                for name, dtype, shape in self._spec
            }
        coefficient = num_examples * weight
        terms = [(record, coefficient, True)] + (
            [] if base is None else [(base, -coefficient, False)]
        )
        done: list[tuple[str, ArrayRecord, float]] = []
        progress = [0]
        try:
            for source, factor, check in terms:
                for name, _, _ in self._spec:
                    _add(self._sums[name], source[name], factor, progress, check=check)
                    done.append((name, source, factor))
        except (ReplyRejected, PayloadCorrupt) as exc:
            failed = (name, source, factor)
            self._undo(done, failed, progress[0])
            raise ReplyRejected(f"array {failed[0]!r}: {exc}") from exc
        if base is None:
            self._current_weight += coefficient
        self.examples += num_examples
        self.count += 1

    def _undo(
        self,
        done: list[tuple[str, ArrayRecord, float]],
        failed: tuple[str, ArrayRecord, float],
        added: int,
    ) -> None:
        """Take back what a failed `add` added (read again)."""
        assert self._sums is not None
        progress = [0]
        name, source, factor = failed
        if added:
            _add(self._sums[name], source[name], -factor, progress, check=False, limit=added)
        for name, source, factor in done:
            _add(self._sums[name], source[name], -factor, progress, check=False)

    def apply(self, current: ArrayRecord, server_learning_rate: float) -> ArrayRecord:
        """The new global model, in the model's dtypes (`cast_into`: integers rounded):
        `current + server_learning_rate * sum / examples`, `current` being the model the
        fresh replies started from. ValueError if nothing was buffered. Takes the sums
        apart as it goes: call it once."""
        if self._sums is None or not self.count:
            raise ValueError("no replies were buffered")
        self._checker.check(current)
        step = server_learning_rate / self.examples
        keep = 1.0 - step * self._current_weight
        out = ArrayRecord()
        for name, dtype, shape in self._spec:
            total = self._sums.pop(name)
            total *= step
            progress = [0]
            if keep != 0.0:
                _add(total, current[name], keep, progress, check=False)
            new = np.empty(shape, dtype=np.dtype(dtype))
            cast_into(total.reshape(shape), new)
            del total
            out[name] = new
        self._sums = None
        return out


def unread(record: ArrayRecord) -> ArrayRecord:
    """`record` with a new `Array` for each stored one (same source, nothing read), so
    that someone reading the caller's arrays (an `evaluate_fn`) never makes the copy
    hold values in memory. In-memory arrays are kept as they are."""
    out = ArrayRecord()
    for name, array in record.items():
        source = array.source
        if source is None:
            out[name] = array
        else:
            stored_dtype = np.dtype(array.dtype).newbyteorder("<").str
            out[name] = Array.stored(stored_dtype, array.shape, source)
    return out


class ModelVersions:
    """The global model's versions that work in flight started from, by version number.

    `hold` takes the current version for one dispatch, `release` gives it back; a
    version neither current nor held is dropped at once, so at most (in-flight
    dispatches + 1) versions are kept. Stored arrays are kept `unread`: only dtype,
    shape and where the bytes are (for FedBuff, in the database).
    """

    def __init__(self, version: int, arrays: ArrayRecord) -> None:
        self.version = version
        """The current version's number."""
        self._arrays = {version: unread(arrays)}
        self._held: dict[int, int] = {}

    @property
    def current(self) -> ArrayRecord:
        """The current version's arrays."""
        return self._arrays[self.version]

    def hold(self) -> int:
        """Take the current version for one dispatch; its number."""
        self._held[self.version] = self._held.get(self.version, 0) + 1
        return self.version

    def get(self, version: int) -> ArrayRecord:
        """The arrays of a held or current version (KeyError for another)."""
        return self._arrays[version]

    def release(self, version: int) -> None:
        """Give back one `hold` of `version` (ValueError if it has none)."""
        count = self._held.get(version, 0)
        if not count:
            raise ValueError(f"model version {version} is not held")
        if count > 1:
            self._held[version] = count - 1
            return
        del self._held[version]
        if version != self.version:
            del self._arrays[version]

    def advance(self, arrays: ArrayRecord) -> int:
        """Make `arrays` the next version; its number. The old current version is
        dropped unless held."""
        old = self.version
        self.version += 1
        self._arrays[self.version] = unread(arrays)
        if old not in self._held:
            del self._arrays[old]
        return self.version

    def kept(self) -> list[int]:
        """The versions kept, ascending."""
        return sorted(self._arrays)
