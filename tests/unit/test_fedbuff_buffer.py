"""FedBuff's arithmetic against a numpy reference written from the paper (float64):
staleness functions, the staleness-weighted buffer over replies from several model
versions (stored stand-ins read chunk by chunk, never whole), rejected replies, the
model versions kept for in-flight work, and FedBuff's parameters."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import pytest

from flpg.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flpg.serverapp.grid import Grid
from flpg.serverapp.strategy.aggregate import ReplyRejected
from flpg.serverapp.strategy.fedavg import FedAvg
from flpg.serverapp.strategy.fedbuff import FedBuff
from flpg.serverapp.strategy.fedbuff_buffer import (
    ModelVersions,
    StalenessBuffer,
    staleness_function,
)
from flpg.serverapp.strategy.strategy import AggregationError

RTOL = 1e-6
Arrays = dict[str, npt.NDArray[Any]]


class Chunked:
    """A stored array's source yielding odd-sized chunks; `nan_at` poisons one value.
    Loading it whole is a failure of the streaming contract."""

    run_id = 1
    array_id = 1
    digest = b""

    def __init__(self, values: npt.NDArray[Any], nan_at: int | None = None) -> None:
        raw = values.astype("<f4").copy().reshape(-1)
        if nan_at is not None:
            raw[nan_at] = np.nan
        self.raw = raw.tobytes()
        self.reads = 0

    def load(self) -> npt.NDArray[Any]:
        raise AssertionError("the array was materialised")

    def chunks(self) -> Iterator[bytes]:
        self.reads += 1
        for start in range(0, len(self.raw), 10):  # 10 bytes: chunks split floats
            yield self.raw[start : start + 10]


def stored(values: npt.NDArray[Any], nan_at: int | None = None) -> Array:
    return Array.stored("<f4", values.shape, Chunked(values, nan_at))


def version(seed: int) -> Arrays:
    rng = np.random.default_rng(seed)
    return {
        "w": rng.normal(1.0, 0.5, (4, 7)).astype(np.float32),
        "b": rng.normal(0.0, 0.3, 5).astype(np.float32),
    }


def trained(base: Arrays, node: int) -> Arrays:
    rng = np.random.default_rng(1000 + node)
    return {
        k: (v + rng.normal(0.1 * node, 0.2, v.shape)).astype(np.float32) for k, v in base.items()
    }


def polynomial(tau: int) -> float:
    return float((1 + tau) ** -0.5)


@pytest.mark.parametrize(
    ("name", "kwargs", "expected"),
    [
        ("constant", {}, lambda t: 1.0),
        ("polynomial", {}, lambda t: 1 / np.sqrt(1 + t)),
        ("polynomial", {"exponent": 1.0}, lambda t: 1 / (1 + t)),
        ("hinge", {}, lambda t: 1.0 if t <= 4 else 1 / (10 * (t - 4) + 1)),
        (
            "hinge",
            {"slope": 0.5, "threshold": 1},
            lambda t: 1.0 if t <= 1 else 1 / (0.5 * (t - 1) + 1),
        ),
    ],
)
def test_staleness_functions_follow_their_definitions(
    name: str, kwargs: dict[str, Any], expected: Any
) -> None:
    fn = staleness_function(name, **kwargs)
    for tau in range(10):
        assert fn(tau) == pytest.approx(expected(tau), rel=1e-12)


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("linear", {}, "must be one of"),
        ("polynomial", {"exponent": -1.0}, "exponent"),
        ("hinge", {"slope": float("inf")}, "slope"),
        ("hinge", {"threshold": -1}, "threshold"),
    ],
)
def test_bad_staleness_parameters_are_refused(
    name: str, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        staleness_function(name, **kwargs)


def reference(
    current: Arrays, replies: list[tuple[Arrays, Arrays, float, float]], rate: float
) -> dict[str, npt.NDArray[np.float64]]:
    """x + rate * sum(n s (y - base)) / sum(n), in float64."""
    total = sum(n for _, _, n, _ in replies)
    return {
        k: current[k].astype(np.float64)
        + rate
        * sum(n * s * (y[k].astype(np.float64) - b[k].astype(np.float64)) for y, b, n, s in replies)
        / total
        for k in current
    }


def test_buffer_matches_the_reference_over_versions_with_stored_replies_and_bases() -> None:
    x0, x1, x2 = version(0), version(1), version(2)  # x2 is current
    taus = {0: 2, 1: 1, 2: 0}
    plan = [(x0, 0, 3, 0), (x2, 2, 5, 1), (x1, 1, 2, 2), (x2, 2, 7, 3)]  # base, v, n, node
    buffer = StalenessBuffer(ArrayRecord(dict(x2)))
    used = []
    sources: list[Chunked] = []
    for base, v, n, node in plan:
        y = trained(base, node)
        record = ArrayRecord({"w": stored(y["w"]), "b": y["b"]})
        sources.append(cast(Chunked, record["w"].source))
        base_record = None
        if v != 2:
            base_record = ArrayRecord({"w": base["w"], "b": stored(base["b"])})
        buffer.add(record, n, polynomial(taus[v]), base_record)
        used.append((y, base, float(n), polynomial(taus[v])))
    assert (buffer.count, buffer.examples) == (4, 17.0)
    current = ArrayRecord({"w": stored(x2["w"]), "b": x2["b"]})
    new = buffer.apply(current, 0.7)
    want = reference(x2, used, 0.7)
    for k in x2:
        assert new[k].numpy().dtype == np.float32
        np.testing.assert_allclose(new[k].numpy(), want[k], rtol=RTOL, atol=1e-7)
    assert all(s.reads == 1 for s in sources), "each reply is read once"


def test_fresh_replies_at_rate_one_give_fedavgs_weighted_mean() -> None:
    x = version(3)
    buffer = StalenessBuffer(ArrayRecord(dict(x)))
    ys = [trained(x, node) for node in range(3)]
    for y, n in zip(ys, (1, 4, 2), strict=True):
        buffer.add(ArrayRecord(dict(y)), n, 1.0, None)
    new = buffer.apply(ArrayRecord(dict(x)), 1.0)
    for k in x:
        mean = sum(n * y[k].astype(np.float64) for y, n in zip(ys, (1, 4, 2), strict=True)) / 7
        np.testing.assert_allclose(new[k].numpy(), mean, rtol=RTOL, atol=1e-7)


def test_a_rejected_reply_leaves_the_buffer_as_it_was() -> None:
    x0, x1 = version(0), version(1)
    buffer = StalenessBuffer(ArrayRecord(dict(x1)))
    good = trained(x1, 1)
    buffer.add(ArrayRecord(dict(good)), 2, 1.0, None)
    poisoned = trained(x0, 2)
    # The NaN sits in "b", after "w" was added: what was added is taken back.
    bad = ArrayRecord({"w": poisoned["w"], "b": stored(poisoned["b"], nan_at=4)})
    with pytest.raises(ReplyRejected, match=r"'b'.*NaN"):
        buffer.add(bad, 9, 0.5, ArrayRecord(dict(x0)))
    with pytest.raises(ReplyRejected, match=r"\[4, 8\]"):
        buffer.add(ArrayRecord({"w": np.zeros((4, 8), np.float32), "b": x1["b"]}), 1, 1.0, None)
    for n, s in ((0, 1.0), (1, 0.0), (float("nan"), 1.0)):
        with pytest.raises(ReplyRejected, match="positive"):
            buffer.add(ArrayRecord(dict(good)), n, s, None)
    assert (buffer.count, buffer.examples) == (1, 2.0)
    new = buffer.apply(ArrayRecord(dict(x1)), 0.5)
    want = reference(x1, [(good, x1, 2.0, 1.0)], 0.5)
    for k in x1:
        np.testing.assert_allclose(new[k].numpy(), want[k], rtol=RTOL, atol=1e-7)


def test_integer_arrays_are_rounded_and_an_empty_buffer_refuses_to_apply() -> None:
    x = {"n": np.array([10, 20, 30], np.int64)}
    buffer = StalenessBuffer(ArrayRecord(dict(x)))
    with pytest.raises(ValueError, match="no replies"):
        buffer.apply(ArrayRecord(dict(x)), 1.0)
    buffer.add(ArrayRecord({"n": np.array([11, 23, 30], np.int64)}), 1, 0.5, None)
    new = buffer.apply(ArrayRecord(dict(x)), 1.0)
    np.testing.assert_array_equal(new["n"].numpy(), [10, 22, 30])  # 10.5 -> 10, 21.5 -> 22
    assert new["n"].numpy().dtype == np.int64


def test_model_versions_keep_only_current_and_held_versions() -> None:
    versions = ModelVersions(3, ArrayRecord({"v": np.array([3.0])}))
    a, b = versions.hold(), versions.hold()
    assert (a, b) == (3, 3)
    assert versions.advance(ArrayRecord({"v": np.array([4.0])})) == 4
    c = versions.hold()
    versions.advance(ArrayRecord({"v": np.array([5.0])}))
    assert versions.kept() == [3, 4, 5]
    assert versions.get(3)["v"].numpy()[0] == 3.0
    versions.release(a)
    assert versions.kept() == [3, 4, 5]  # version 3 is still held once
    versions.release(b)
    versions.release(c)
    assert versions.kept() == [5]
    assert versions.current["v"].numpy()[0] == 5.0
    with pytest.raises(ValueError, match="not held"):
        versions.release(5)
    with pytest.raises(KeyError):
        versions.get(4)


class Loadable(Chunked):
    def load(self) -> npt.NDArray[Any]:
        return np.frombuffer(self.raw, dtype="<f4").copy()


def test_model_versions_hold_stored_arrays_unread_whoever_reads_the_callers() -> None:
    values = np.arange(6, dtype=np.float32)
    record = ArrayRecord({"w": Array.stored("<f4", (6,), Loadable(values)), "b": np.ones(2)})
    versions = ModelVersions(0, record)
    newer = ArrayRecord({"w": Array.stored("<f4", (6,), Loadable(values + 1)), "b": np.ones(2)})
    versions.hold()
    versions.advance(newer)
    for caller in (record, newer):
        caller["w"].numpy()  # an evaluate_fn reading the model
        assert caller["w"].in_memory
    for v in (0, 1):
        kept = versions.get(v)["w"]
        assert not kept.in_memory and kept.dtype == "float32" and kept.shape == (6,)
    np.testing.assert_array_equal(versions.get(1)["w"].numpy(), values + 1)


class StandInGrid:
    run_id = 7

    def get_node_ids(self) -> list[int]:
        return [1, 2, 3, 4]

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str
    ) -> Message:
        return Message(content, dst_node_id, message_type, group_id=group_id)


def test_fedbuff_driven_by_an_apps_loop_is_fedavg_with_a_server_step() -> None:
    x = version(5)
    grid = cast(Grid, StandInGrid())
    ys = {node: trained(x, node) for node in (1, 2, 3)}

    def replies() -> list[Message]:
        out = []
        for node, y in ys.items():
            content = RecordDict(
                {"arrays": ArrayRecord(dict(y)), "m": MetricRecord({"num-examples": node})}
            )
            out.append(Message(content, reply_to=Message(RecordDict(), node, "train")))
        return out

    fedavg = FedAvg()
    list(fedavg.configure_train(1, ArrayRecord(dict(x)), ConfigRecord(), grid))
    mean, _ = fedavg.aggregate_train(1, replies())
    buff = FedBuff(concurrency=2, server_learning_rate=0.5)
    sent = list(buff.configure_train(1, ArrayRecord(dict(x)), ConfigRecord(), grid))
    assert [m.metadata.dst_node_id for m in sent] == [1, 2]
    new, _ = buff.aggregate_train(1, replies())
    assert mean is not None and new is not None
    for k in x:
        half_step = x[k] + 0.5 * (mean[k].numpy().astype(np.float64) - x[k])
        np.testing.assert_allclose(new[k].numpy(), half_step, rtol=RTOL, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"buffer_size": 0}, "buffer_size"),
        ({"concurrency": 0}, "concurrency"),
        ({"server_learning_rate": 0.0}, "server_learning_rate"),
        ({"server_learning_rate": -1.0}, "server_learning_rate"),
        ({"staleness_fn": "exponential"}, "staleness function"),
        ({"staleness_exponent": -0.5}, "exponent"),
        ({"fraction_evaluate": 1.5}, "fraction_evaluate"),
    ],
)
def test_fedbuff_refuses_bad_parameters_at_construction(
    kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        FedBuff(**kwargs)


def test_fedbuff_aggregate_train_without_configure_train_needs_rate_one() -> None:
    x = version(6)
    reply = Message(
        RecordDict({"arrays": ArrayRecord(dict(x)), "m": MetricRecord({"num-examples": 2})}),
        reply_to=Message(RecordDict(), 1, "train"),
    )
    new, _ = FedBuff().aggregate_train(1, [reply])
    assert new is not None
    np.testing.assert_array_equal(new["w"].numpy(), x["w"])
    with pytest.raises(AggregationError, match="configure_train"):
        FedBuff(server_learning_rate=0.5).aggregate_train(1, [reply])


def test_a_custom_staleness_function_must_give_a_positive_weight() -> None:
    strategy = FedBuff(staleness_fn=lambda tau: 1.0 - tau)
    assert strategy.staleness_weight(0) == 1.0
    with pytest.raises(ValueError, match=r"staleness_fn\(1\) gave 0.0"):
        strategy.staleness_weight(1)
