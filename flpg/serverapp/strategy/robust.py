"""Chunk-wise aggregation across replies: order statistics and distances without
holding N models.

The flattened model (every array's values, in record order; a complex value counts
as two real coordinates) is cut into *blocks* of consecutive coordinates, each a
list of `Piece`s (a coordinate range of one array). A *pass* reads the replies
block by block: `open_pass(members, plan)` gives one iterator per reply (the
sequence may have a `close` method, called when the pass ends or is abandoned)
that yields, for each block of the plan, that reply's coordinates as a 1-D array
of any real dtype (pieces concatenated; the engine converts them to float64 as it
stacks them, so a reader may hand out views of the bytes it read), then stops; it
raises ReplyRejected for a reply it cannot
read (the pass then names that reply, see RepliesUnusable). For each block the
engine stacks the replies' values into an `(n, width)` float64 matrix and either
reduces it column-wise into the result (median, trimmed mean, weighted mean,
Bulyan's closest-to-median mean) or adds its pairwise squared distances to an
`(n, n)` matrix (Krum, MultiKrum, Bulyan's selection).

Memory: the result (one model, in its dtypes) plus a few `(n, width)` float64
matrices; `width` is `budget // n` coordinates, so the working set does not grow
with the number of replies. Values are checked for NaN/Inf as they are read.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from flpg.serverapp.strategy.aggregate import ReplyRejected

Matrix = npt.NDArray[np.float64]
Spec = Sequence[tuple[str, str, tuple[int, ...]]]
"""`(name, dtype, shape)` of each array of the model, in record order."""

DEFAULT_BUDGET = 1 << 21
"""Coordinates per block summed over the replies: a 16 MiB float64 matrix (the
readers hold about as many coordinates again, as read: one block and the next)."""

MIN_WIDTH = 1 << 12
"""The narrowest block, whatever the number of replies (bounds the query count)."""


@dataclass(frozen=True)
class Piece:
    """Coordinates [start, stop) of the model's array number `array`."""

    array: int
    start: int
    stop: int


Plan = list[list[Piece]]
OpenPass = Callable[[Sequence[int], Plan], Sequence[Iterator[npt.NDArray[Any]]]]
Reduce = Callable[[Matrix], Matrix]


class RepliesUnusable(Exception):
    """A pass could not use some replies: `failures` maps each one (its index as the
    caller numbers replies) to the reason. Nothing of the pass is returned."""

    def __init__(self, failures: dict[int, str]) -> None:
        super().__init__("; ".join(f"reply {m}: {r}" for m, r in failures.items()))
        self.failures = failures


def coordinate_dtype(dtype: np.dtype[Any]) -> np.dtype[Any]:
    """The real scalar type of a dtype's coordinates (byte order kept): a complex
    dtype's float half, any other dtype itself."""
    if dtype.kind == "c":
        return np.dtype(f"{dtype.byteorder}f{dtype.itemsize // 2}")
    return dtype


def coordinates(dtype: str, shape: tuple[int, ...]) -> int:
    """How many real coordinates an array of `dtype` and `shape` has."""
    return math.prod(shape) * (2 if np.dtype(dtype).kind == "c" else 1)


def make_plan(sizes: Sequence[int], width: int) -> Plan:
    """Blocks of at most `width` consecutive coordinates of arrays of `sizes`
    coordinates; a block may end one array and start the next."""
    plan: Plan = []
    block: list[Piece] = []
    room = width
    for index, size in enumerate(sizes):
        start = 0
        while start < size:
            stop = min(size, start + room)
            block.append(Piece(index, start, stop))
            room -= stop - start
            start = stop
            if room == 0:
                plan.append(block)
                block, room = [], width
    if block:
        plan.append(block)
    return plan


class ChunkwiseEngine:
    """Passes over N replies of a model of `spec`, one block at a time.

    `budget` bounds each block's matrix (coordinates summed over the replies), at
    least MIN_WIDTH coordinates per reply.
    """

    def __init__(self, spec: Spec, open_pass: OpenPass, budget: int = DEFAULT_BUDGET) -> None:
        self.spec = list(spec)
        self._open = open_pass
        self.budget = budget
        self.sizes = [coordinates(dtype, shape) for _, dtype, shape in self.spec]

    def plan(self, n: int) -> Plan:
        """The blocks of a pass over `n` replies."""
        return make_plan(self.sizes, max(MIN_WIDTH, self.budget // max(n, 1)))

    def blocks(self, members: Sequence[int]) -> Iterator[tuple[list[Piece], Matrix]]:
        """One pass: each block's pieces and `(len(members), width)` values (the
        matrix is reused: consume it before the next block). Raises RepliesUnusable
        naming every reply that failed in the block where the first failure showed
        (or at the end, when a reply fails its final checks)."""
        plan = self.plan(len(members))
        width = max((sum(p.stop - p.start for p in block) for block in plan), default=0)
        buffer = np.empty((len(members), width), dtype=np.float64)
        opened = self._open(members, plan)
        readers = list(opened)
        try:
            for block in plan:
                used = sum(p.stop - p.start for p in block)
                values = buffer[:, :used]
                self._fill(members, readers, values)
                yield block, values
            self._finish(members, readers)
        finally:
            for closable in [*readers, opened]:
                close = getattr(closable, "close", None)
                if close is not None:
                    close()

    @staticmethod
    def _fill(
        members: Sequence[int], readers: list[Iterator[npt.NDArray[Any]]], values: Matrix
    ) -> None:
        failures: dict[int, str] = {}
        for row, (member, reader) in enumerate(zip(members, readers, strict=True)):
            try:
                got = next(reader)
            except ReplyRejected as exc:
                failures[member] = str(exc)
                continue
            except StopIteration:
                failures[member] = "its arrays ended before the model's did"
                continue
            if got.shape != (values.shape[1],):
                failures[member] = f"gave {got.shape[0]} values for a {values.shape[1]} slice"
                continue
            values[row] = got
            # A finite sum means every value is finite; only then skip the exact test.
            if not math.isfinite(float(values[row].sum())) and not np.isfinite(values[row]).all():
                failures[member] = "its arrays hold NaN or Inf values"
        if failures:
            raise RepliesUnusable(failures)

    @staticmethod
    def _finish(members: Sequence[int], readers: list[Iterator[npt.NDArray[Any]]]) -> None:
        failures: dict[int, str] = {}
        for member, reader in zip(members, readers, strict=True):
            try:
                next(reader)
            except StopIteration:
                continue
            except ReplyRejected as exc:
                failures[member] = str(exc)
                continue
            failures[member] = "its arrays hold more values than the model's"
        if failures:
            raise RepliesUnusable(failures)

    def distances(self, members: Sequence[int]) -> Matrix:
        """The `(n, n)` squared L2 distances between the members' flattened models.

        Accumulated block by block from centred Gram matrices in float64 (distances do
        not change when every reply is moved by the same vector; centring keeps the
        cancellation of |a|² + |b|² - 2a·b small). The diagonal is 0, nothing < 0.
        """
        n = len(members)
        total = np.zeros((n, n), dtype=np.float64)
        for _, values in self.blocks(members):
            values -= values.mean(axis=0)
            gram = values @ values.T
            norms = np.diag(gram).copy()
            total += norms[:, None] + norms[None, :] - 2.0 * gram
        np.maximum(total, 0.0, out=total)
        np.fill_diagonal(total, 0.0)
        return total

    def reduce(self, members: Sequence[int], reduce: Reduce) -> list[npt.NDArray[Any]]:
        """The model whose every coordinate is `reduce` of the members' values of it
        (`reduce` maps an `(n, width)` matrix, which it may change, to `width` values),
        in the spec's dtypes and shapes: integers rounded, bool true from 0.5."""
        outputs = [np.empty(shape, dtype=np.dtype(dtype)) for _, dtype, shape in self.spec]
        flats = [
            out.reshape(-1).view(coordinate_dtype(out.dtype)) if out.size else out.reshape(-1)
            for out in outputs
        ]
        for block, values in self.blocks(members):
            result = reduce(values)
            offset = 0
            for piece in block:
                part = result[offset : offset + piece.stop - piece.start]
                _store(flats[piece.array], piece, part)
                offset += piece.stop - piece.start
        return outputs


def _store(flat: npt.NDArray[Any], piece: Piece, values: Matrix) -> None:
    target = flat[piece.start : piece.stop]
    kind = flat.dtype.kind
    if kind in "iu":
        info = np.iinfo(flat.dtype)
        target[...] = np.clip(np.rint(values), info.min, info.max)
    elif kind == "b":
        target[...] = values >= 0.5
    else:
        target[...] = values


def _columns(values: Matrix) -> Matrix:
    """The matrix transposed into contiguous rows, one per column of `values`:
    numpy sorts contiguous short rows several times faster than strided columns."""
    return np.ascontiguousarray(values.T)


def _middle(ordered: Matrix) -> Matrix:
    """The median of each row of a row-sorted matrix."""
    n = ordered.shape[1]
    if n % 2:
        return ordered[:, n // 2].copy()
    result: Matrix = (ordered[:, n // 2 - 1] + ordered[:, n // 2]) / 2.0
    return result


def median(values: Matrix) -> Matrix:
    """Column-wise median (the mean of the two middle values for an even count)."""
    rows = _columns(values)
    rows.sort(axis=1)
    return _middle(rows)


def trimmed_mean(beta: float) -> Reduce:
    """Column-wise mean after cutting `int(beta * n)` values off each end (as
    scipy's `trim_mean`); ValueError if that leaves nothing."""

    def reduce(values: Matrix) -> Matrix:
        n = values.shape[0]
        low = int(beta * n)
        high = n - low
        if low >= high:
            raise ValueError(f"beta={beta} trims all {n} replies")
        if not low:
            result: Matrix = values.mean(axis=0)
            return result
        rows = _columns(values)
        rows.sort(axis=1)
        trimmed: Matrix = rows[:, low:high].mean(axis=1)
        return trimmed

    return reduce


def weighted_mean(weights: Sequence[float]) -> Reduce:
    """Column-wise mean weighted by `weights` (one per member, in order)."""
    w = np.asarray(weights, dtype=np.float64)
    total = float(w.sum())

    def reduce(values: Matrix) -> Matrix:
        result: Matrix = (w @ values) / total
        return result

    return reduce


def closest_to_median_mean(beta: int) -> Reduce:
    """Bulyan's second step: per column, the mean of the `beta` values closest to
    the column's median (of equally close values, the earlier replies')."""
    if beta < 1:
        raise ValueError(f"beta must be >= 1, got {beta}")

    def reduce(values: Matrix) -> Matrix:
        rows = _columns(values)
        centre = _middle(np.sort(rows, axis=1))
        distance = np.abs(rows - centre[:, None])
        closest = np.argsort(distance, axis=1, kind="stable")[:, :beta]
        result: Matrix = np.take_along_axis(rows, closest, axis=1).mean(axis=1)
        return result

    return reduce


def krum_scores(distances: Matrix, num_malicious_nodes: int) -> Matrix:
    """Each reply's Krum score: the sum of its squared distances to its
    `max(1, n - f - 2)` nearest other replies (all others if there are fewer)."""
    n = distances.shape[0]
    closest = min(max(1, n - num_malicious_nodes - 2), n - 1)
    scores = np.zeros(n, dtype=np.float64)
    for i in range(n):
        others = np.delete(distances[i], i)
        scores[i] = np.sort(others)[:closest].sum()
    return scores


def select_krum(distances: Matrix, num_malicious_nodes: int, num_to_select: int) -> list[int]:
    """Positions of the `num_to_select` lowest Krum scores, lowest first (ties: the
    earlier reply)."""
    scores = krum_scores(distances, num_malicious_nodes)
    order = np.argsort(scores, kind="stable")[:num_to_select]
    return [int(i) for i in order]
