"""The chunk-wise engine against plain numpy on the whole stacked models.

No database: replies are ArrayRecords in memory, or stored arrays stood in for by a
source whose chunks have sizes that are not a multiple of any element size (so
slices and elements straddle chunk boundaries). Blocks are made small so every
array is cut into several slices whose width does not divide the array's size,
and a block often ends one array and starts the next.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from flpg.app import arrays as wire
from flpg.app.records import Array, ArrayRecord
from flpg.errors import PayloadCorrupt
from flpg.serverapp.strategy.replyslices import ReplySlices, array_values
from flpg.serverapp.strategy.robust import (
    MIN_WIDTH,
    ChunkwiseEngine,
    Matrix,
    Plan,
    RepliesUnusable,
    closest_to_median_mean,
    krum_scores,
    make_plan,
    median,
    select_krum,
    trimmed_mean,
    weighted_mean,
)

SHAPES: dict[str, tuple[str, tuple[int, ...]]] = {
    "conv": ("float32", (7, 3, 331)),  # 6951 values
    "half": ("float16", (1001,)),
    "big-endian": (">f4", (4099,)),
    "bias": ("float64", (5,)),
    "empty": ("float32", (0, 4)),
    "scalar": ("float32", ()),
    "counts": ("int32", (3001,)),
    "mask": ("bool", (999,)),
    "phase": ("complex64", (2500,)),
}


def model(rng: np.random.Generator, shift: float = 0.0) -> ArrayRecord:
    out: dict[str, npt.NDArray[Any]] = {}
    for name, (dtype, shape) in SHAPES.items():
        kind = np.dtype(dtype).kind
        value: npt.NDArray[Any]
        if kind == "b":
            value = rng.random(shape) < 0.5
        elif kind == "i":
            value = rng.integers(-1000, 1000, shape)
        elif kind == "c":
            value = rng.normal(shift, 1, shape) + 1j * rng.normal(0, 1, shape)
        else:
            value = rng.normal(shift, 1, shape)
        out[name] = np.asarray(value).astype(dtype)
    return ArrayRecord(out)


class OddChunks:
    """An ArraySource serving an array's bytes in chunks of 997 bytes."""

    def __init__(self, value: npt.NDArray[Any], corrupt: bool = False) -> None:
        self.raw = wire.encode(value, "x").data.tobytes()
        self.run_id, self.array_id = 1, 1
        self.digest = wire.digest(self.raw)
        self.corrupt = corrupt

    def load(self) -> npt.NDArray[Any]:
        raise AssertionError("the engine must not load a stored array whole")

    def chunks(self) -> Iterator[bytes]:
        for start in range(0, len(self.raw), 997):
            yield self.raw[start : start + 997]
        if self.corrupt:
            raise PayloadCorrupt("array 'x' fails its digest check")


def stored(record: ArrayRecord, corrupt: str | None = None) -> ArrayRecord:
    out = ArrayRecord()
    for name, array in record.items():
        value = array.numpy()
        source = OddChunks(value, corrupt=name == corrupt)
        out[name] = Array.stored(wire.dtype_str(value.dtype), value.shape, source)
    return out


def engine(records: Sequence[ArrayRecord], budget: int = 3 * MIN_WIDTH) -> ChunkwiseEngine:
    spec = [(name, a.dtype, a.shape) for name, a in records[0].items()]
    return ChunkwiseEngine(spec, ReplySlices(records).open, budget=budget)


def stack(records: Sequence[ArrayRecord], name: str) -> Matrix:
    """The replies' values of one array, as float64 coordinates, one row each."""
    return np.stack([array_values(r[name]) for r in records])


def as_dtype(values: npt.NDArray[Any], like: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """Reference coordinates cast as the engine casts them."""
    if like.dtype.kind in "iu":
        values = np.rint(values)
    elif like.dtype.kind == "b":
        values = values >= 0.5
    flat = np.empty(like.size, like.dtype)
    view = flat.view(np.dtype(f"{like.dtype.byteorder}f4")) if like.dtype.kind == "c" else flat
    view[...] = values
    return flat.reshape(like.shape)


@pytest.fixture
def replies() -> list[ArrayRecord]:
    rng = np.random.default_rng(16)
    return [model(rng, shift=float(i)) for i in range(6)]


def check(result: list[npt.NDArray[Any]], records: Sequence[ArrayRecord], ref: Any) -> None:
    for out, (name, array) in zip(result, records[0].items(), strict=True):
        like = array.numpy()
        assert out.dtype == like.dtype and out.shape == like.shape, name
        expected = as_dtype(ref(stack(records, name)), like)
        np.testing.assert_allclose(
            out.astype(np.complex128), expected.astype(np.complex128), rtol=1e-6, err_msg=name
        )


def test_the_plan_cuts_across_arrays_and_covers_every_coordinate() -> None:
    plan = make_plan([10, 0, 3, 25], 7)
    assert [sum(p.stop - p.start for p in block) for block in plan] == [7, 7, 7, 7, 7, 3]
    covered = [(p.array, c) for block in plan for p in block for c in range(p.start, p.stop)]
    assert covered == [(a, c) for a, n in enumerate([10, 0, 3, 25]) for c in range(n)]
    assert [p.array for p in plan[1]] == [0, 2, 3]  # arrays end and start mid-block


@pytest.mark.parametrize("source", ["memory", "stored"])
def test_median_matches_numpy(replies: list[ArrayRecord], source: str) -> None:
    records = replies if source == "memory" else [stored(r) for r in replies]
    eng = engine(records)
    assert len(eng.plan(len(records))) > 3, "the model must be cut into several slices"
    result = eng.reduce(range(6), median)
    check(result, replies, lambda x: np.median(x, axis=0))


def test_trimmed_mean_matches_the_definition(replies: list[ArrayRecord]) -> None:
    result = engine(replies).reduce([0, 1, 2, 3, 4, 5], trimmed_mean(0.2))

    def reference(x: Matrix) -> Any:
        cut = int(0.2 * x.shape[0])
        ordered = np.sort(x, axis=0)
        return ordered[cut : x.shape[0] - cut].mean(axis=0)

    check(result, replies, reference)


def test_weighted_mean_of_some_members(replies: list[ArrayRecord]) -> None:
    members = [4, 1, 3]
    weights = [1.0, 3.0, 0.5]
    result = engine([stored(r) for r in replies]).reduce(members, weighted_mean(weights))
    picked = [replies[m] for m in members]
    w = np.array(weights)
    check(result, picked, lambda x: (w[:, None] * x).sum(axis=0) / w.sum())


def test_closest_to_median_mean_matches_the_definition(replies: list[ArrayRecord]) -> None:
    result = engine(replies).reduce(range(6), closest_to_median_mean(3))

    def reference(x: Matrix) -> Any:
        distance = np.abs(x - np.median(x, axis=0))
        order = np.argsort(distance, axis=0, kind="stable")[:3]
        return np.take_along_axis(x, order, axis=0).mean(axis=0)

    check(result, replies, reference)


def test_distances_and_krum_match_the_whole_models(replies: list[ArrayRecord]) -> None:
    records = [stored(r) for r in replies]
    got = engine(records).distances([0, 1, 2, 3, 4, 5])
    flat = np.stack([np.concatenate([array_values(a) for a in r.values()]) for r in replies])
    expected = ((flat[:, None, :] - flat[None, :, :]) ** 2).sum(axis=2)
    np.testing.assert_allclose(got, expected, rtol=1e-9)
    f = 1
    closest = 6 - f - 2
    scores = [np.sort(np.delete(expected[i], i))[:closest].sum() for i in range(6)]
    np.testing.assert_allclose(krum_scores(got, f), scores, rtol=1e-9)
    assert select_krum(got, f, 2) == list(np.argsort(scores)[:2])


def test_krum_picks_the_honest_nodes_not_the_outlier() -> None:
    rng = np.random.default_rng(3)
    honest = [ArrayRecord({"w": rng.normal(0, 0.01, 9000).astype(np.float32)}) for _ in range(5)]
    outlier = ArrayRecord({"w": np.full(9000, 50.0, np.float32)})
    records = [*honest[:2], outlier, *honest[2:]]
    distances = engine(records).distances(range(6))
    assert 2 not in select_krum(distances, 1, 4)
    assert select_krum(distances, 1, 6)[-1] == 2


def test_a_reply_with_nan_is_named_in_the_block_that_holds_it(
    replies: list[ArrayRecord],
) -> None:
    bad = model(np.random.default_rng(1))
    bad["phase"].numpy()[-1] = complex(np.nan, 0)
    records = [*replies[:3], bad, *replies[3:]]
    with pytest.raises(RepliesUnusable) as caught:
        engine(records).reduce(range(7), median)
    assert caught.value.failures == {3: "its arrays hold NaN or Inf values"}


def test_a_corrupt_stored_reply_is_named_at_the_end_of_the_pass(
    replies: list[ArrayRecord],
) -> None:
    records = [stored(r, corrupt="mask" if i == 4 else None) for i, r in enumerate(replies)]
    with pytest.raises(RepliesUnusable) as caught:
        engine(records).distances(range(6))
    assert list(caught.value.failures) == [4]
    assert "digest" in caught.value.failures[4]


def test_a_short_stored_reply_is_named() -> None:
    value = np.arange(5000, dtype=np.float32)
    short = OddChunks(value)
    short.raw = short.raw[:-8]
    records = [
        ArrayRecord({"w": value}),
        ArrayRecord({"w": Array.stored("<f4", (5000,), short)}),
    ]
    with pytest.raises(RepliesUnusable) as caught:
        engine(records).reduce([0, 1], median)
    assert caught.value.failures == {1: "array 'w' holds fewer bytes than its shape"}


def iterators_from(models: Sequence[Matrix]) -> Any:
    """An `OpenPass` over plain float64 vectors: the per-reply iterators the engine
    takes, written without any reader."""

    def open_pass(members: Sequence[int], plan: Plan) -> list[Iterator[Matrix]]:
        def one(vector: Matrix) -> Iterator[Matrix]:
            for block in plan:
                yield np.concatenate([vector[p.start : p.stop] for p in block])

        return [one(models[m]) for m in members]

    return open_pass


def test_engine_takes_plain_per_reply_iterators() -> None:
    rng = np.random.default_rng(5)
    vectors = [rng.normal(size=10_001) for _ in range(4)]
    eng = ChunkwiseEngine([("w", "float64", (10_001,))], iterators_from(vectors), budget=8)
    (result,) = eng.reduce([0, 1, 2, 3], median)
    np.testing.assert_array_equal(result, np.median(np.stack(vectors), axis=0))
