"""FedAvgM, FedProx, FedAdagrad, FedAdam, FedYogi and QFedAvg against numpy references
written from the papers' update rules (float64 throughout), over several rounds with
uneven weights and rejected replies; their state through `state()`/`load_state`.

No database: replies are built in memory (one reply's array is a stored stand-in read
chunk by chunk, with a NaN in its second chunk), and the grid only lists nodes and
builds messages.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import pytest

from flpg.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flpg.serverapp.grid import Grid
from flpg.serverapp.strategy import (
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedOpt,
    FedProx,
    FedYogi,
    QFedAvg,
    StrategyState,
)
from flpg.serverapp.strategy.strategy import AggregationError

F64 = npt.NDArray[np.float64]
RTOL = 1e-6


class StandInGrid:
    """What the configure methods use of a Grid: node ids, run id, messages."""

    run_id = 7

    def get_node_ids(self) -> list[int]:
        return [1, 2, 3, 4]

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str
    ) -> Message:
        return Message(content, dst_node_id, message_type, group_id=group_id)


GRID = cast(Grid, StandInGrid())


class NanInSecondChunk:
    """A stored array's source whose second chunk holds a NaN (never loaded whole)."""

    run_id = 1
    array_id = 1
    digest = b""

    def __init__(self, values: npt.NDArray[Any]) -> None:
        bad = values.astype("<f4").copy()
        bad[-1] = np.nan
        self.raw = bad.tobytes()

    def load(self) -> npt.NDArray[Any]:
        raise AssertionError("the array was materialised")

    def chunks(self) -> Iterator[bytes]:
        half = (len(self.raw) // 8) * 4
        yield self.raw[:half]
        yield self.raw[half:]


def model(seed: int = 0) -> dict[str, npt.NDArray[Any]]:
    rng = np.random.default_rng(seed)
    return {
        "w": rng.normal(1.0, 0.5, (3, 5)).astype(np.float32),
        "b": rng.normal(0.0, 0.3, 7).astype(np.float32),
    }


def node_arrays(x: dict[str, npt.NDArray[Any]], node: int, rnd: int) -> dict[str, Any]:
    """A node's trained arrays: a deterministic move away from x."""
    rng = np.random.default_rng(100 * rnd + node)
    return {k: (v + rng.normal(0.1 * node, 0.2, v.shape)).astype(np.float32) for k, v in x.items()}


WEIGHTS = {1: 1, 2: 5, 3: 2}
LOSSES = {1: 0.5, 2: 2.0, 3: 1.25}


def replies(x: dict[str, npt.NDArray[Any]], rnd: int) -> list[Message]:
    """Three usable replies (uneven weights, losses) and two the strategy rejects: one
    with a wrong shape, one whose stored array holds a NaN in its second chunk."""
    out = []
    for node, weight in WEIGHTS.items():
        metrics = MetricRecord({"num-examples": weight, "train_loss": LOSSES[node], "acc": node})
        content = RecordDict({"arrays": ArrayRecord(node_arrays(x, node, rnd)), "m": metrics})
        out.append(Message(content, reply_to=Message(RecordDict(), node, "train")))
    wrong = {"w": np.zeros((3, 4), np.float32), "b": x["b"]}
    stored = {
        "w": x["w"],
        "b": Array.stored("<f4", x["b"].shape, NanInSecondChunk(x["b"])),
    }
    for node, arrays in ((4, wrong), (5, stored)):
        metrics = MetricRecord({"num-examples": 100, "train_loss": 1.0})
        content = RecordDict({"arrays": ArrayRecord(arrays), "m": metrics})
        out.insert(1, Message(content, reply_to=Message(RecordDict(), node, "train")))
    return out


def weighted_mean(x: dict[str, npt.NDArray[Any]], rnd: int) -> dict[str, F64]:
    total = sum(WEIGHTS.values())
    arrays = {n: node_arrays(x, n, rnd) for n in WEIGHTS}
    return {
        k: sum(WEIGHTS[n] * arrays[n][k].astype(np.float64) for n in WEIGHTS) / total for k in x
    }


def run(strategy: FedAvg, x: dict[str, npt.NDArray[Any]], rounds: range) -> dict[str, Any]:
    """Drive configure_train/aggregate_train as `start` does; the final arrays."""
    for rnd in rounds:
        list(strategy.configure_train(rnd, ArrayRecord(dict(x)), ConfigRecord(), GRID))
        new, metrics = strategy.aggregate_train(rnd, replies(x, rnd))
        assert new is not None and metrics is not None
        assert metrics["acc"] == pytest.approx((1 * 1 + 2 * 5 + 3 * 2) / 8)
        x = {k: a.numpy() for k, a in new.items()}
        assert all(x[k].dtype == np.float32 for k in x)
    return x


Reference = Callable[[dict[str, npt.NDArray[Any]], int], dict[str, F64]]


def check(strategy: FedAvg, reference: Reference, rounds: int = 3) -> None:
    x = model()
    got = run(strategy, x, range(1, rounds + 1))
    want: dict[str, Any] = dict(x)
    for rnd in range(1, rounds + 1):
        want = {k: v.astype(np.float32) for k, v in reference(want, rnd).items()}
    for k in x:
        np.testing.assert_allclose(got[k], want[k], rtol=RTOL, atol=1e-7)
        assert not np.allclose(got[k], x[k])  # something moved


# --- references, from the papers' rules ------------------------------------------------


def fedavgm_reference(lr: float, momentum: float) -> Reference:
    velocity: dict[str, F64] = {}

    def step(x: dict[str, npt.NDArray[Any]], rnd: int) -> dict[str, F64]:
        mean = weighted_mean(x, rnd)
        out = {}
        for k in x:
            g = x[k].astype(np.float64) - mean[k]
            velocity[k] = momentum * velocity.get(k, 0.0) + g
            out[k] = x[k] - lr * (velocity[k] if momentum > 0 else g)
        return out

    return step


def adaptive_reference(kind: str, eta: float, b1: float, b2: float, tau: float) -> Reference:
    m: dict[str, F64] = {}
    v: dict[str, F64] = {}

    def step(x: dict[str, npt.NDArray[Any]], rnd: int) -> dict[str, F64]:
        mean = weighted_mean(x, rnd)
        out = {}
        for k in x:
            d = mean[k] - x[k]
            m[k] = b1 * m.get(k, 0.0) + (1 - b1) * d
            prev = v.get(k, np.zeros_like(d))
            if kind == "adagrad":
                v[k] = prev + d**2
            elif kind == "adam":
                v[k] = b2 * prev + (1 - b2) * d**2
            else:  # yogi
                v[k] = prev - (1 - b2) * d**2 * np.sign(prev - d**2)
            size = eta
            if kind == "adam":
                size = eta * np.sqrt(1 - b2 ** (rnd + 1)) / (1 - b1 ** (rnd + 1))
            out[k] = x[k] + size * m[k] / (np.sqrt(v[k]) + tau)
        return out

    return step


def qfedavg_reference(q: float, client_lr: float) -> Reference:
    big_l = 1.0 / client_lr

    def step(x: dict[str, npt.NDArray[Any]], rnd: int) -> dict[str, F64]:
        deltas: dict[str, F64] = {k: np.zeros(v.shape) for k, v in x.items()}
        total_h = 0.0
        for node in WEIGHTS:
            w = node_arrays(x, node, rnd)
            loss = LOSSES[node] + 1e-10
            grad = {k: big_l * (x[k].astype(np.float64) - w[k]) for k in x}
            norm = sum(float(np.sum(g**2)) for g in grad.values())
            for k in x:
                deltas[k] += loss**q * grad[k]
            total_h += q * loss ** (q - 1) * norm + big_l * loss**q
        return {k: x[k] - deltas[k] / total_h for k in x}

    return step


# --- the strategies against them -------------------------------------------------------


@pytest.mark.parametrize(("lr", "momentum"), [(1.0, 0.9), (0.5, 0.0), (0.7, 0.5)])
def test_fedavgm_matches_sgd_with_server_momentum(lr: float, momentum: float) -> None:
    strategy = FedAvgM(server_learning_rate=lr, server_momentum=momentum)
    check(strategy, fedavgm_reference(lr, momentum))
    assert (strategy.momentum_vector is not None) == (momentum > 0)


def test_fedavgm_without_server_optimization_is_fedavg() -> None:
    strategy = FedAvgM()
    assert not strategy.server_opt
    check(strategy, weighted_mean)
    assert strategy.state() == StrategyState()


@pytest.mark.parametrize(
    ("strategy", "reference"),
    [
        (FedAdagrad(), adaptive_reference("adagrad", 0.1, 0.0, 0.0, 1e-3)),
        (FedAdagrad(eta=0.05, tau=0.01), adaptive_reference("adagrad", 0.05, 0.0, 0.0, 0.01)),
        (FedAdam(), adaptive_reference("adam", 0.1, 0.9, 0.99, 1e-3)),
        (FedAdam(eta=0.03, beta_1=0.0, tau=0.1), adaptive_reference("adam", 0.03, 0, 0.99, 0.1)),
        (FedYogi(), adaptive_reference("yogi", 1e-2, 0.9, 0.99, 1e-3)),
        (FedYogi(beta_2=0.5), adaptive_reference("yogi", 1e-2, 0.9, 0.5, 1e-3)),
    ],
    ids=["adagrad", "adagrad-params", "adam", "adam-no-m", "yogi", "yogi-b2"],
)
def test_adaptive_optimizers_match_the_paper(strategy: FedOpt, reference: Reference) -> None:
    check(strategy, reference, rounds=4)
    assert strategy.v_t is not None
    assert (strategy.m_t is not None) == (strategy.beta_1 > 0)


def test_fedopt_itself_applies_no_server_step_as_in_flower() -> None:
    strategy = FedOpt(beta_1=0.9, beta_2=0.9)
    check(strategy, weighted_mean)
    assert strategy.state() == StrategyState()


@pytest.mark.parametrize(("q", "lr"), [(0.1, 0.1), (0.0, 0.5), (2.0, 0.01)])
def test_qfedavg_matches_the_q_ffl_update(q: float, lr: float) -> None:
    check(QFedAvg(lr, q=q), qfedavg_reference(q, lr))


def test_qfedavg_leaves_out_a_reply_without_its_loss(capsys: pytest.CaptureFixture[str]) -> None:
    x = model()
    strategy = QFedAvg(0.1)
    list(strategy.configure_train(1, ArrayRecord(dict(x)), ConfigRecord(), GRID))
    no_loss = Message(
        RecordDict(
            {"arrays": ArrayRecord(node_arrays(x, 9, 1)), "m": MetricRecord({"num-examples": 3})}
        ),
        reply_to=Message(RecordDict(), 9, "train"),
    )
    new, _ = strategy.aggregate_train(1, [no_loss, *replies(x, 1)])
    assert new is not None
    want = qfedavg_reference(0.1, 0.1)(x, 1)
    for k in x:
        np.testing.assert_allclose(new[k].numpy(), want[k].astype(np.float32), rtol=RTOL)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "aggregate_train: Received 3 results and 3 failures"
    assert any("'train_loss'" in line for line in lines)
    assert any("NaN or Inf" in line for line in lines)


def test_fedprox_sends_proximal_mu_and_aggregates_as_fedavg() -> None:
    strategy = FedProx(proximal_mu=0.25)
    config = ConfigRecord({"lr": 0.1})
    messages = list(strategy.configure_train(3, ArrayRecord(model()), config, GRID))
    assert len(messages) == 4
    for message in messages:
        sent = message.content["config"]
        assert isinstance(sent, ConfigRecord)
        assert dict(sent) == {"lr": 0.1, "proximal-mu": 0.25, "server-round": 3}
    check(FedProx(proximal_mu=0.1), weighted_mean)


# --- state across a resume -------------------------------------------------------------


def _stored_copy(state: StrategyState) -> StrategyState:
    """The state as a checkpoint gives it back: copies, unrelated to the originals."""
    return StrategyState(
        arrays={
            r: ArrayRecord({n: a.numpy().copy() for n, a in rec.items()})
            for r, rec in state.arrays.items()
        },
        values=dict(state.values),
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda: FedAvgM(server_learning_rate=0.8, server_momentum=0.9),
        lambda: FedAdam(eta=0.05),
        lambda: FedYogi(),
        lambda: FedAdagrad(),
    ],
    ids=["fedavgm", "fedadam", "fedyogi", "fedadagrad"],
)
def test_a_strategy_given_the_saved_state_continues_bit_for_bit(make: Callable[[], Any]) -> None:
    x = model(3)
    straight = run(make(), x, range(1, 5))
    first = make()
    halfway = run(first, x, range(1, 3))
    state = _stored_copy(first.state())
    assert state.arrays, "no state to save"
    resumed = make()
    resumed.load_state(state)
    final = run(resumed, halfway, range(3, 5))
    for k in x:
        np.testing.assert_array_equal(final[k], straight[k])
    # Without the state the continuation differs: the state matters.
    forgetful = run(make(), halfway, range(3, 5))
    assert not all(np.array_equal(forgetful[k], straight[k]) for k in x)


def test_each_update_hands_out_new_state_arrays_and_keeps_returned_ones_unchanged() -> None:
    strategy = FedAdam()
    x = model()
    x = run(strategy, x, range(1, 2))
    before = strategy.state()
    snapshot = {
        r: {n: a.numpy().copy() for n, a in rec.items()} for r, rec in before.arrays.items()
    }
    assert strategy.state().arrays["v_t"]["w"] is before.arrays["v_t"]["w"]  # unchanged: same
    run(strategy, x, range(2, 3))
    after = strategy.state()
    for record, arrays in before.arrays.items():
        for name, array in arrays.items():
            assert after.arrays[record][name] is not array  # changed: new objects
            assert not np.array_equal(after.arrays[record][name].numpy(), snapshot[record][name])


def test_load_state_refuses_a_state_that_does_not_fit_the_model() -> None:
    strategy = FedAdam()
    strategy.load_state(StrategyState(arrays={"v_t": ArrayRecord({"w": np.zeros(3, np.float32)})}))
    x = model()
    list(strategy.configure_train(1, ArrayRecord(dict(x)), ConfigRecord(), GRID))
    with pytest.raises(ValueError, match=r"strategy state for array 'w' is float32\[3\]"):
        strategy.aggregate_train(1, replies(x, 1))


# --- integer arrays, misuse, bad parameters, summaries ---------------------------------


def test_integer_arrays_keep_their_dtype_rounded() -> None:
    strategy = FedAdam(eta=1.0)
    x = ArrayRecord({"steps": np.array([10, 20], np.int64)})
    list(strategy.configure_train(1, x, ConfigRecord(), GRID))
    reply = Message(
        RecordDict(
            {
                "arrays": ArrayRecord({"steps": np.array([14, 20], np.int64)}),
                "m": MetricRecord({"num-examples": 1}),
            }
        ),
        reply_to=Message(RecordDict(), 1, "train"),
    )
    new, _ = strategy.aggregate_train(1, [reply])
    assert new is not None
    steps = new["steps"].numpy()
    assert steps.dtype == np.int64
    # delta (4, 0): m = 0.4, v = 0.16, eta_t = sqrt(1 - .99**2) / (1 - .9**2) = 0.7427...
    size = np.sqrt(1 - 0.99**2) / (1 - 0.9**2)
    assert steps.tolist() == [int(np.rint(10 + size * 0.4 / (0.4 + 1e-3))), 20]
    assert strategy.v_t is not None and strategy.v_t["steps"].numpy().dtype == np.float64


@pytest.mark.parametrize("strategy", [FedAvgM(server_momentum=0.9), FedAdam(), QFedAvg(0.1)])
def test_aggregating_before_configure_train_is_an_aggregation_error(strategy: FedAvg) -> None:
    x = model()
    with pytest.raises(AggregationError, match="needs configure_train before aggregate_train"):
        strategy.aggregate_train(1, replies(x, 1))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: FedAvgM(server_learning_rate=-0.1), "server_learning_rate must be a finite"),
        (lambda: FedAvgM(server_momentum=-1.0), "server_momentum must be a finite number >= 0"),
        (lambda: FedProx(proximal_mu=-1.0), "proximal_mu must be a finite number >= 0"),
        (lambda: FedAdam(eta=-1e-3), "eta must be a finite number >= 0"),
        (lambda: FedYogi(eta_l=float("nan")), "eta_l must be a finite number >= 0"),
        (lambda: FedAdam(beta_1=1.0), r"beta_1 must be within \[0, 1\), got 1.0"),
        (lambda: FedYogi(beta_2=-0.5), r"beta_2 must be within \[0, 1\)"),
        (lambda: FedAdagrad(tau=0.0), "tau must be a finite number > 0, got 0.0"),
        (lambda: QFedAvg(0.0), "client_learning_rate must be a finite number > 0"),
        (lambda: QFedAvg(0.1, q=-1.0), "q must be a finite number >= 0"),
    ],
)
def test_impossible_parameters_fail_at_construction(make: Callable[[], Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def printed(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().out.splitlines()


def test_summaries_log_the_parameters_in_flowers_lines(capsys: pytest.CaptureFixture[str]) -> None:
    FedAvgM(server_momentum=0.9).summary()
    lines = printed(capsys)
    assert lines[:4] == [
        "\t├──> FedAvgM settings:",
        "\t│\t├── Server optimization: ON",
        "\t│\t├── Server learning rate: 1.0",
        "\t│\t└── Server Momentum: 0.9",
    ]
    assert lines[4] == "\t├──> Sampling:"  # then FedAvg's lines
    FedYogi().summary()
    assert printed(capsys)[:4] == [
        "\t├──> FedOpt settings:",
        "\t│\t├── eta (0.01) | eta_l (0.0316)",
        "\t│\t├── beta_1 (0.9) | beta_2 (0.99)",
        "\t│\t└── tau (0.001)",
    ]
    QFedAvg(0.05).summary()
    assert printed(capsys)[:4] == [
        "\t├──> q-FedAvg settings:",
        "\t│\t├── client_learning_rate: 0.05",
        "\t│\t├── q: 0.1",
        "\t│\t└── train_loss_key: 'train_loss'",
    ]
    FedProx(proximal_mu=0.0).summary()
    lines = printed(capsys)
    assert "proximal_mu=0.0" in lines[0] and "FedAvg" in lines[0]
    assert lines[1:3] == ["\t├──> FedProx settings:", "\t│\t└── Proximal mu: 0.0"]


def test_flowers_defaults() -> None:
    adam, yogi, adagrad, opt = FedAdam(), FedYogi(), FedAdagrad(), FedOpt()
    assert (adam.eta, adam.eta_l, adam.beta_1, adam.beta_2, adam.tau) == (0.1, 0.1, 0.9, 0.99, 1e-3)
    assert (yogi.eta, yogi.eta_l, yogi.beta_1, yogi.beta_2) == (1e-2, 0.0316, 0.9, 0.99)
    assert (adagrad.beta_1, adagrad.beta_2, adagrad.tau) == (0.0, 0.0, 1e-3)
    assert (opt.beta_1, opt.beta_2) == (0.0, 0.0)
    q = QFedAvg(0.1)
    assert (q.q, q.train_loss_key, q.min_train_nodes) == (0.1, "train_loss", 2)
    m = FedAvgM()
    assert (m.server_learning_rate, m.server_momentum) == (1.0, 0.0)
    assert FedProx().proximal_mu == 0.0


# --- memory: a small multiple of the model, whatever the number of replies ------------

SIZE = 1 << 20  # elements of the one float32 array: a 4 MiB model


class Generated:
    """A stored array's source that makes its bytes chunk by chunk (64 KiB), so the
    replies themselves cost no memory; never loaded whole."""

    run_id = 1
    array_id = 1
    digest = b""

    def __init__(self, value: float) -> None:
        self.value = value

    def load(self) -> npt.NDArray[Any]:
        raise AssertionError("the array was materialised")

    def chunks(self) -> Iterator[bytes]:
        step = 1 << 14
        for start in range(0, SIZE, step):
            yield np.full(min(step, SIZE - start), self.value, "<f4").tobytes()


def generated_replies(n: int) -> Iterator[Message]:
    for node in range(n):
        array = Array.stored("<f4", (SIZE,), Generated(1.0 + 0.01 * node))
        metrics = MetricRecord({"num-examples": 1 + node, "train_loss": 0.5 + node})
        content = RecordDict({"arrays": ArrayRecord({"w": array}), "m": metrics})
        yield Message(content, reply_to=Message(RecordDict(), node + 1, "train"))


def peak_of_round_2(strategy: FedAvg, n: int) -> int:
    """Peak bytes allocated while round 2 aggregates `n` replies (round 1 ran first,
    so FedAdam's moments exist and are not counted: they are held across rounds)."""
    import tracemalloc

    x = ArrayRecord({"w": np.zeros(SIZE, np.float32)})
    for rnd in (1, 2):
        list(strategy.configure_train(rnd, x, ConfigRecord(), GRID))
        if rnd == 2:
            tracemalloc.start()
        new, _ = strategy.aggregate_train(rnd, generated_replies(n))
        assert new is not None
        x = new
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


@pytest.mark.parametrize("make", [FedAdam, lambda: QFedAvg(0.1)], ids=["fedadam", "qfedavg"])
def test_memory_does_not_grow_with_the_number_of_replies(make: Callable[[], FedAvg]) -> None:
    model_bytes = 4 * SIZE
    few, many = peak_of_round_2(make(), 2), peak_of_round_2(make(), 24)
    assert many < 3.25 * model_bytes, many / model_bytes  # about 3: float64 sum + mean
    assert abs(many - few) < model_bytes / 4, (few, many)
