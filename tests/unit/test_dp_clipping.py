"""The arithmetic of the differential-privacy wrappers (dp_clipping), against numpy
formulas written from Flower's definitions: FlatClip of a reply's update, the
noise's stddev and draws, the adaptive noise parameters and the norm's update."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from flpg.app.records import Array, ArrayRecord
from flpg.serverapp.strategy import dp_clipping as dp
from flpg.serverapp.strategy.aggregate import ReplyRejected

F64 = np.float64


class ChunkedSource:
    """A stored array's bytes in odd-sized chunks; loading it whole is refused."""

    run_id = 1
    array_id = 1
    digest = b""

    def __init__(self, values: npt.NDArray[Any], chunk: int = 7) -> None:
        self.raw = values.tobytes()
        self.chunk = chunk
        self.reads = 0

    def load(self) -> npt.NDArray[Any]:
        raise AssertionError("a reply's array was loaded whole")

    def chunks(self) -> Iterator[bytes]:
        self.reads += 1
        for start in range(0, len(self.raw), self.chunk):
            yield self.raw[start : start + self.chunk]


def stored(values: npt.NDArray[Any]) -> tuple[Array, ChunkedSource]:
    source = ChunkedSource(values)
    return Array.stored(values.dtype.str, values.shape, source), source


def flat_clip(
    model: list[npt.NDArray[Any]], reply: list[npt.NDArray[Any]], c: float
) -> tuple[list[npt.NDArray[Any]], bool]:
    """FlatClip written out: update = reply - model, scaled by min(1, c / ||update||)."""
    update = [r.astype(F64) - m.astype(F64) for m, r in zip(model, reply, strict=True)]
    norm = math.sqrt(sum(float((u**2).sum()) for u in update))
    scale = min(1.0, c / norm)
    return [m.astype(F64) + u * scale for m, u in zip(model, update, strict=True)], scale < 1


MODEL = [np.arange(6, dtype=np.float32).reshape(2, 3), np.array([0.5, -1.0], np.float32)]


def record(arrays: list[npt.NDArray[Any]]) -> ArrayRecord:
    return ArrayRecord({"w": Array(arrays[0]), "b": Array(arrays[1])})


def test_the_update_norm_is_the_l2_norm_over_all_arrays() -> None:
    rng = np.random.default_rng(1)
    reply = [m + rng.normal(size=m.shape).astype(np.float32) for m in MODEL]
    diffs = [r.astype(F64) - m.astype(F64) for m, r in zip(MODEL, reply, strict=True)]
    expected = math.sqrt(sum(float((d**2).sum()) for d in diffs))
    norm = dp.Reference(record(MODEL)).update_norm(record(reply))
    assert norm == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("c", [0.1, 1.0, 2.5, 100.0])
def test_a_long_update_is_scaled_to_the_norm_and_a_short_one_is_kept(c: float) -> None:
    reply = [m + np.float32(0.7) for m in MODEL]  # norm 0.7 * sqrt(8) ~ 1.98
    expected, was_clipped = flat_clip(MODEL, reply, c)
    given = record(reply)
    out, bit = dp.Reference(record(MODEL)).clip(given, c)
    assert bit == was_clipped
    if not was_clipped:
        assert out is given  # passed on as it is
    got = out.to_numpy_ndarrays()
    for g, e in zip(got, expected, strict=True):
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, e, rtol=1e-6, atol=1e-6)
    if was_clipped:
        assert dp.Reference(record(MODEL)).update_norm(out) == pytest.approx(c, abs=1e-5)


def test_stored_reply_arrays_are_read_chunk_by_chunk_never_whole() -> None:
    values = [m + np.float32(3.0) for m in MODEL]
    (w, sw), (b, sb) = stored(values[0]), stored(values[1])
    reference = dp.Reference(record(MODEL))
    out, bit = reference.clip(ArrayRecord({"w": w, "b": b}), 1.0)
    assert bit and (sw.reads, sb.reads) == (2, 2)  # once for the norm, once to clip
    for g, e in zip(out.to_numpy_ndarrays(), flat_clip(MODEL, values, 1.0)[0], strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-6)
    kept, bit = reference.clip(ArrayRecord({"w": w, "b": b}), 100.0)
    assert not bit and not kept["w"].in_memory  # within the norm: read for the norm only


def test_integer_arrays_are_clipped_and_rounded() -> None:
    model: list[npt.NDArray[Any]] = [np.array([10, 20], np.int64), np.zeros(2, np.float32)]
    reply: list[npt.NDArray[Any]] = [np.array([13, 24], np.int64), np.zeros(2, np.float32)]
    out, bit = dp.Reference(record(model)).clip(record(reply), 2.5)
    assert bit
    np.testing.assert_array_equal(out["w"].numpy(), [12, 22])  # 10 + 1.5, 20 + 2.0, rounded
    assert out["w"].numpy().dtype == np.int64


@pytest.mark.parametrize(
    ("reply", "match"),
    [
        ([np.zeros((2, 3), np.float32)], r"array names \['w'\] do not match"),
        ([np.zeros((3, 2), np.float32), np.zeros(2, np.float32)], r"is float32\[3, 2\]"),
        ([np.full((2, 3), np.nan, np.float32), np.zeros(2, np.float32)], "NaN or Inf"),
        ([np.zeros((2, 3), np.float64), np.zeros(2, np.float32)], "is float64"),
    ],
)
def test_replies_that_cannot_be_clipped_are_rejected(
    reply: list[npt.NDArray[Any]], match: str
) -> None:
    given = ArrayRecord(dict(zip(["w", "b"], [Array(a) for a in reply], strict=False)))
    with pytest.raises(ReplyRejected, match=match):
        dp.Reference(record(MODEL)).clip(given, 1.0)


def test_only_float_and_integer_models_can_be_clipped() -> None:
    with pytest.raises(ValueError, match="float and integer arrays only; array 'm' is bool"):
        dp.check_numeric(ArrayRecord({"m": Array(np.zeros(2, bool))}), "X")


def test_the_noise_stddev_is_flowers() -> None:
    assert dp.compute_stdv(1.5, 0.2, 10) == pytest.approx(1.5 * 0.2 / 10)


def test_noise_is_drawn_as_flower_draws_it_from_numpys_global_state() -> None:
    """Per array, in order: N(0, std) of the array's shape, cast to its dtype, added
    (drawn in STEP pieces, which is the same sequence)."""
    big = np.linspace(0, 1, dp.STEP + 5, dtype=np.float32)
    arrays: list[npt.NDArray[Any]] = [big, np.arange(4, dtype=np.float64)]
    np.random.seed(3)
    expected = [a + np.random.normal(0, 0.3, a.shape).astype(a.dtype) for a in arrays]
    np.random.seed(3)
    got = dp.add_gaussian_noise(
        ArrayRecord({"x": Array(arrays[0].copy()), "y": Array(arrays[1].copy())}), 0.3, np.random
    )
    for g, e in zip(got.to_numpy_ndarrays(), expected, strict=True):
        assert g.dtype == e.dtype
        np.testing.assert_array_equal(g, e)


def test_noise_from_a_seeded_generator_repeats() -> None:
    def draw() -> npt.NDArray[Any]:
        record = ArrayRecord({"x": Array(np.zeros(10, np.float32))})
        noised = dp.add_gaussian_noise(record, 1.0, np.random.default_rng([5, 2]))
        return noised["x"].numpy()

    first = draw()
    np.testing.assert_array_equal(first, draw())
    expected = np.random.default_rng([5, 2]).normal(0, 1.0, 10).astype(np.float32)
    np.testing.assert_array_equal(first, expected)


@pytest.mark.parametrize(
    ("z", "n", "sigma", "expected_sigma"),
    [(1.0, 100, None, 5.0), (1.0, 10, 2.0, 2.0), (0.0, 10, None, 0.0), (0.0, 10, 0.5, 0.5)],
)
def test_adaptive_noise_params_split_the_budget_as_andrew_et_al(
    z: float, n: int, sigma: float | None, expected_sigma: float
) -> None:
    got_sigma, got_z = dp.adaptive_noise_params(z, n, sigma)
    assert got_sigma == expected_sigma
    expected_z = (z**-2 - (2 * expected_sigma) ** -2) ** -0.5 if z > 0 else 0.0
    assert got_z == pytest.approx(expected_z)


def test_a_noise_multiplier_the_count_cannot_afford_is_refused() -> None:
    with pytest.raises(ValueError, match=r"noise_multiplier \(1.0\) must be below 2 x"):
        dp.adaptive_noise_params(1.0, 10, None)  # sigma_b = 0.5


def test_the_geometric_update_is_flowers_rule() -> None:
    assert dp.geometric_update(0.1, 1.0, 0.5, 0.2) == pytest.approx(0.1 * math.exp(-0.1))
    assert dp.geometric_update(2.0, 0.25, 0.5, 0.2) == pytest.approx(2.0 * math.exp(0.05))


def test_noise_leaves_a_stored_arrays_values_as_stored() -> None:
    values = np.arange(5, dtype=np.float32)
    array = Array.stored("<f4", (5,), LoadableSource(values))
    array.numpy()  # read: its values are now in memory
    noised = dp.add_gaussian_noise(ArrayRecord({"x": array}), 1.0, np.random.default_rng(1))
    np.testing.assert_array_equal(array.numpy(), values)
    assert not np.array_equal(noised["x"].numpy(), values)


class LoadableSource(ChunkedSource):
    def load(self) -> npt.NDArray[Any]:
        return np.frombuffer(self.raw, np.float32).copy()
