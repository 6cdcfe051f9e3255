"""The differential-privacy strategy wrappers around FedAvg, without a database:
their aggregate against a numpy reference (clipped updates, weighted mean, Flower's
noise), the streaming of replies, Flower's rules for errors, the clipping norm in
the config and the ClientApp mods that read it, the adaptive norm and its state."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import pytest

from flpg.app.context import Context
from flpg.app.message import Error, Message
from flpg.app.records import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flpg.clientapp import ClientApp
from flpg.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod
from flpg.serverapp.grid import Grid
from flpg.serverapp.strategy import FedAvg
from flpg.serverapp.strategy.dp_adaptive_clipping import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
)
from flpg.serverapp.strategy.dp_fixed_clipping import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
    validate_replies,
)
from flpg.serverapp.strategy.state import StrategyState
from flpg.serverapp.strategy.tally import ReplyTally

F64 = np.float64
Arrays = list[npt.NDArray[Any]]
GLOBAL: Arrays = [np.zeros((2, 2), np.float32), np.array([1.0, -1.0, 0.5], np.float32)]


class StandInGrid:
    """What FedAvg's configure methods use of a Grid."""

    run_id = 7

    def __init__(self, n: int) -> None:
        self.node_ids = list(range(1, n + 1))

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, **_: Any
    ) -> Message:
        return Message(content, dst_node_id, message_type, group_id=group_id)


def grid(n: int = 4) -> Grid:
    return cast(Grid, StandInGrid(n))


def model(arrays: Arrays) -> ArrayRecord:
    return ArrayRecord({"w": Array(arrays[0].copy()), "b": Array(arrays[1].copy())})


def reply(arrays: Arrays, weight: int, node: int = 1, **metrics: Any) -> Message:
    content = RecordDict(
        {"arrays": model(arrays), "metrics": MetricRecord({"num-examples": weight} | metrics)}
    )
    return Message(content, reply_to=Message(RecordDict(), node, "train"))


def error_reply(node: int = 9) -> Message:
    return Message(Error(0, "out of memory"), reply_to=Message(RecordDict(), node, "train"))


def shifted(delta: float) -> Arrays:
    return [g + np.float32(delta) for g in GLOBAL]


def clip(update_of: Arrays, c: float) -> tuple[Arrays, bool]:
    """FlatClip of `update_of - GLOBAL`, in float64."""
    update = [r.astype(F64) - g.astype(F64) for g, r in zip(GLOBAL, update_of, strict=True)]
    norm = math.sqrt(sum(float((u**2).sum()) for u in update))
    scale = min(1.0, c / norm)
    return [g.astype(F64) + u * scale for g, u in zip(GLOBAL, update, strict=True)], scale < 1


def mean(replies: list[tuple[Arrays, int]]) -> Arrays:
    total = sum(w for _, w in replies)
    return [sum(a[i] * w for a, w in replies) / total for i in range(len(GLOBAL))]  # type: ignore[misc]


def noise_added(expected: Arrays, std: float) -> Arrays:
    """`expected` in float32 plus the noise numpy's global state draws next, as Flower adds it."""
    out = []
    for e in expected:
        a = e.astype(np.float32)
        out.append(a + np.random.normal(0, std, a.shape).astype(np.float32))
    return out


def assert_arrays(got: ArrayRecord | None, expected: Arrays) -> None:
    assert got is not None
    for g, e in zip(got.to_numpy_ndarrays(), expected, strict=True):
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, e, rtol=1e-6, atol=1e-6)


# --- server-side fixed clipping -------------------------------------------------------

ROUND = [(shifted(0.1), 1), (shifted(3.0), 3), (shifted(-0.05), 2)]  # norms 0.26, 7.9, 0.13


@pytest.mark.parametrize("z", [0.0, 1.3])
def test_server_side_fixed_clipping_is_the_noisy_mean_of_clipped_updates(z: float) -> None:
    dp = DifferentialPrivacyServerSideFixedClipping(FedAvg(), z, 0.5, 3)
    list(dp.configure_train(1, model(GLOBAL), ConfigRecord(), grid()))
    np.random.seed(11)
    arrays, metrics = dp.aggregate_train(1, [reply(a, w, i) for i, (a, w) in enumerate(ROUND)])
    clipped = [(clip(a, 0.5)[0], w) for a, w in ROUND]
    assert [clip(a, 0.5)[1] for a, _ in ROUND] == [False, True, False]
    np.random.seed(11)
    assert_arrays(arrays, noise_added(mean(clipped), z * 0.5 / 3))
    assert metrics is not None and "num-examples" not in metrics


def test_replies_stream_one_at_a_time_through_clipping() -> None:
    """Each reply is clipped and aggregated before the next is asked for."""
    handed: list[int] = []
    aggregated: list[int] = []

    class Watching(FedAvg):
        def aggregate_train(self, server_round: int, replies: Any) -> Any:
            def watch() -> Iterator[Message]:
                for r in replies:
                    aggregated.append(len(handed))
                    yield r

            return super().aggregate_train(server_round, ReplyTally(watch()))

    def arrive() -> Iterator[Message]:
        for i, (a, w) in enumerate(ROUND):
            assert len(aggregated) == i, "a reply was held back"
            handed.append(i)
            yield reply(a, w, i)

    dp = DifferentialPrivacyServerSideFixedClipping(Watching(), 0.0, 0.5, 3)
    list(dp.configure_train(1, model(GLOBAL), ConfigRecord(), grid()))
    arrays, _ = dp.aggregate_train(1, arrive())
    assert aggregated == [1, 2, 3] and arrays is not None


def test_an_error_reply_skips_the_round_as_in_flower(capsys: pytest.CaptureFixture[str]) -> None:
    dp = DifferentialPrivacyServerSideFixedClipping(FedAvg(), 1.0, 0.5, 3)
    list(dp.configure_train(1, model(GLOBAL), ConfigRecord(), grid()))
    replies = [reply(*ROUND[0]), error_reply(), reply(*ROUND[1])]
    assert dp.aggregate_train(1, replies) == (None, None)
    out = capsys.readouterr().out
    assert "aggregate_train: Received 2 results and 1 failures" in out
    assert "Some clients reported errors. Skipping aggregation." in out


def test_an_unusable_reply_is_rejected_on_the_rounds_tally_and_the_rest_aggregated(
    capsys: pytest.CaptureFixture[str],
) -> None:
    dp = DifferentialPrivacyServerSideFixedClipping(FedAvg(), 0.0, 0.5, 3)
    list(dp.configure_train(1, model(GLOBAL), ConfigRecord(), grid()))
    wrong = reply([np.zeros(3, np.float32), GLOBAL[1]], 5)
    unweighted = Message(
        RecordDict({"arrays": model(shifted(1.0))}), reply_to=Message(RecordDict(), 3, "train")
    )
    tally = ReplyTally(iter([reply(*ROUND[0]), wrong, unweighted, reply(*ROUND[2])]))
    arrays, _ = dp.aggregate_train(1, tally)
    assert (tally.received, tally.failures) == (4, 2)
    assert "float32[3]" in tally.reasons[0] and "num-examples" in tally.reasons[1]
    warning = "parameters (2) differs from the number of sampled clients (3)"
    assert warning in capsys.readouterr().out
    assert_arrays(arrays, mean([(clip(a, 0.5)[0], w) for a, w in (ROUND[0], ROUND[2])]))


def test_aggregate_train_needs_the_global_arrays_of_configure_train() -> None:
    dp = DifferentialPrivacyServerSideFixedClipping(FedAvg(), 0.0, 0.5, 3)
    with pytest.raises(ValueError, match="call configure_train before aggregate_train"):
        dp.aggregate_train(1, [reply(*ROUND[0])])


def test_a_model_that_is_not_numeric_is_refused_before_sending() -> None:
    dp = DifferentialPrivacyServerSideFixedClipping(FedAvg(), 0.0, 0.5, 3)
    flags = ArrayRecord({"mask": Array(np.zeros(3, bool))})
    with pytest.raises(ValueError, match="array 'mask' is bool"):
        dp.configure_train(1, flags, ConfigRecord(), grid())


def test_a_seed_repeats_a_rounds_noise_and_none_follows_numpys_global_state() -> None:
    def run(seed: int | None, server_round: int) -> npt.NDArray[Any]:
        dp = DifferentialPrivacyServerSideFixedClipping(FedAvg(), 1.0, 0.5, 3, seed=seed)
        list(dp.configure_train(server_round, model(GLOBAL), ConfigRecord(), grid()))
        arrays, _ = dp.aggregate_train(server_round, [reply(a, w) for a, w in ROUND])
        assert arrays is not None
        return arrays["w"].numpy()

    np.testing.assert_array_equal(run(5, 2), run(5, 2))
    assert not np.array_equal(run(5, 2), run(5, 3))
    np.random.seed(1)
    first = run(None, 2)
    np.random.seed(1)
    np.testing.assert_array_equal(first, run(None, 2))


# --- client-side fixed clipping, with the ClientApp mod ---------------------------------


def client_app(mod: Any, delta: float, norm_bit_metrics: bool = True) -> ClientApp:
    app = ClientApp(mods=[mod])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        arrays = msg.content["arrays"]
        assert isinstance(arrays, ArrayRecord)
        out = ArrayRecord({k: Array(a.numpy() + np.float32(delta)) for k, a in arrays.items()})
        metrics = MetricRecord({"num-examples": 2})
        return Message(RecordDict({"arrays": out, "metrics": metrics}), reply_to=msg)

    return app


def context() -> Context:
    return Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})


def test_client_side_fixed_clipping_sends_the_norm_and_the_mod_clips_to_it() -> None:
    dp = DifferentialPrivacyClientSideFixedClipping(FedAvg(), 0.0, 0.5, 2)
    messages = list(dp.configure_train(1, model(GLOBAL), ConfigRecord({"lr": 0.1}), grid(2)))
    assert len(messages) == 2
    for msg in messages:
        config = msg.content["config"]
        assert isinstance(config, ConfigRecord)
        assert (config["clipping_norm"], config["lr"]) == (0.5, 0.1)
    replies = [
        client_app(fixedclipping_mod, d)(m, context())
        for m, d in zip(messages, (3.0, 0.1), strict=True)
    ]
    arrays, _ = dp.aggregate_train(1, replies)
    expected = mean([(clip(shifted(3.0), 0.5)[0], 2), (clip(shifted(0.1), 0.5)[0], 2)])
    assert_arrays(arrays, expected)


# --- adaptive clipping ------------------------------------------------------------------


def adapted(norm: float, clipped: int, total: int, sigma: float, q: float, lr: float) -> float:
    """Flower's rule from numpy's global state: norm * exp(-lr * (N(clipped, sigma)/total - q))."""
    fraction = float(np.random.normal(clipped, sigma)) / total
    return norm * math.exp(-lr * (fraction - q))


def test_server_side_adaptive_clips_adapts_the_norm_then_noises_with_it() -> None:
    dp = DifferentialPrivacyServerSideAdaptiveClipping(
        FedAvg(), 0.5, 3, initial_clipping_norm=0.5, clipped_count_stddev=1.0
    )
    z_eff = (0.5**-2 - 2.0**-2) ** -0.5
    assert dp.noise_multiplier == pytest.approx(z_eff)
    list(dp.configure_train(1, model(GLOBAL), ConfigRecord(), grid()))
    np.random.seed(4)
    arrays, _ = dp.aggregate_train(1, [reply(a, w) for a, w in ROUND])
    np.random.seed(4)
    norm = adapted(0.5, 1, 3, 1.0, 0.5, 0.2)  # one of three updates was clipped
    assert dp.clipping_norm == pytest.approx(norm)
    clipped = [(clip(a, 0.5)[0], w) for a, w in ROUND]
    assert_arrays(arrays, noise_added(mean(clipped), z_eff * norm / 3))


def test_client_side_adaptive_sends_the_norm_and_adapts_from_the_mods_norm_bits() -> None:
    dp = DifferentialPrivacyClientSideAdaptiveClipping(FedAvg(), 0.0, 3, initial_clipping_norm=1.0)
    for server_round, norm in ((1, 1.0), (2, dp.clipping_norm * math.exp(-0.2 * (2 / 3 - 0.5)))):
        messages = list(dp.configure_train(server_round, model(GLOBAL), ConfigRecord(), grid(3)))
        assert [m.content["config"]["clipping_norm"] for m in messages] == [norm] * 3
        deltas = (3.0, 0.1, 2.0) if server_round == 1 else (0.1, 0.1, 0.1)
        app = [client_app(adaptiveclipping_mod, d) for d in deltas]
        replies = [a(m, context()) for a, m in zip(app, messages, strict=True)]
        assert [r.content["metrics"]["norm_bit"] for r in replies] == (
            [1, 0, 1] if server_round == 1 else [0, 0, 0]
        )
        arrays, _ = dp.aggregate_train(server_round, replies)
        expected = mean([(clip(shifted(d), norm)[0], 2) for d in deltas])
        assert_arrays(arrays, expected)
    assert dp.clipping_norm == pytest.approx(norm * math.exp(-0.2 * (0 - 0.5)))


def test_a_reply_without_a_norm_bit_is_rejected_and_the_rest_count() -> None:
    dp = DifferentialPrivacyClientSideAdaptiveClipping(FedAvg(), 0.0, 2, initial_clipping_norm=1.0)
    list(dp.configure_train(1, model(GLOBAL), ConfigRecord(), grid(2)))
    tally = ReplyTally(iter([reply(shifted(0.1), 1), reply(shifted(0.1), 1, norm_bit=1)]))
    arrays, _ = dp.aggregate_train(1, tally)
    assert arrays is not None and tally.failures == 1
    assert "no numeric metric 'norm_bit'" in tally.reasons[0]
    assert dp.clipping_norm == pytest.approx(math.exp(-0.2 * (1 - 0.5)))  # 1 of 1 clipped


# --- state, delegation and bad input ----------------------------------------------------


class CountingFedAvg(FedAvg):
    """A FedAvg with state: rounds aggregated and a running sum updated in place."""

    def __init__(self) -> None:
        super().__init__(min_train_nodes=3, min_available_nodes=4)
        self.rounds = 0
        self.total = np.zeros(1)

    def aggregate_train(self, server_round: int, replies: Any) -> Any:
        out = super().aggregate_train(server_round, replies)
        self.rounds += 1
        self.total += 1
        return out

    def state(self) -> StrategyState:
        return StrategyState(
            {"sum": ArrayRecord({"t": Array(self.total)})}, {"rounds": self.rounds}
        )

    def load_state(self, state: StrategyState) -> None:
        self.rounds = int(state.values["rounds"])  # type: ignore[arg-type]
        self.total = state.arrays["sum"]["t"].numpy().copy()


def test_the_adaptive_norm_and_the_wrapped_state_survive_a_resume() -> None:
    dp = DifferentialPrivacyServerSideAdaptiveClipping(CountingFedAvg(), 0.0, 3)
    list(dp.configure_train(1, model(GLOBAL), ConfigRecord(), grid()))
    dp.aggregate_train(1, [reply(a, w) for a, w in ROUND])
    saved = dp.state()
    assert saved.values == {"strategy.rounds": 1, "clipping_norm": dp.clipping_norm}
    assert list(saved.arrays) == ["strategy.sum"]
    resumed = DifferentialPrivacyServerSideAdaptiveClipping(CountingFedAvg(), 0.0, 3)
    resumed.load_state(saved)
    assert resumed.clipping_norm == dp.clipping_norm != 0.1
    inner = cast(CountingFedAvg, resumed.strategy)
    assert inner.rounds == 1 and inner.total.tolist() == [1.0]
    with pytest.raises(ValueError, match="saved clipping norm must be a positive number"):
        resumed.load_state(StrategyState(values={"strategy.rounds": 1}))


def test_a_skipped_round_puts_the_wrapped_strategys_state_back() -> None:
    inner = CountingFedAvg()
    dp = DifferentialPrivacyClientSideFixedClipping(inner, 0.0, 0.5, 3)
    list(dp.configure_train(1, model(GLOBAL), ConfigRecord(), grid()))
    assert dp.aggregate_train(1, [reply(*ROUND[0]), error_reply()]) == (None, None)
    assert inner.rounds == 0 and inner.total.tolist() == [0.0]


def test_the_wrapper_has_the_wrapped_minimums_and_flowers_repr_and_summary(
    capsys: pytest.CaptureFixture[str],
) -> None:
    dp = DifferentialPrivacyServerSideAdaptiveClipping(CountingFedAvg(), 0.0, 3)
    assert (dp.min_train_nodes, dp.min_available_nodes) == (3, 4)
    assert repr(dp) == "Differential Privacy Strategy Wrapper (Server-Side Adaptive Clipping)"
    dp.summary()
    lines = capsys.readouterr().out.splitlines()
    assert lines[:5] == [
        "\t├──> DP settings:",
        "\t│\t├── Noise multiplier: 0.0",
        "\t│\t├── Clipping norm: 0.1",
        "\t│\t├── Target clipped quantile: 0.5",
        "\t│\t└── Clip norm learning rate: 0.2",
    ]
    assert lines[5] == "\t├──> Sampling:"  # FedAvg's summary follows


SF, CF = DifferentialPrivacyServerSideFixedClipping, DifferentialPrivacyClientSideFixedClipping
SA, CA = (
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyClientSideAdaptiveClipping,
)


@pytest.mark.parametrize(
    ("cls", "args", "kwargs", "error", "match"),
    [
        (SF, (-1, 1, 2), {}, ValueError, "noise multiplier should be a non-negative"),
        (SF, (1, 0, 2), {}, ValueError, "clipping norm should be a positive"),
        (CF, (1, 1, 0), {}, ValueError, "number of sampled clients should be a positive"),
        (CF, (math.nan, 1, 2), {}, TypeError, "noise_multiplier must be a finite number"),
        (CF, (1, 1, 2.5), {}, TypeError, "num_sampled_clients must be an int"),
        (SA, (0, 2), {"initial_clipping_norm": 0}, ValueError, "initial clipping norm should be"),
        (SA, (0, 2), {"target_clipped_quantile": 1.5}, ValueError, r"must be in \[0, 1\]"),
        (CA, (0, 2), {"clip_norm_lr": -0.1}, ValueError, "learning rate must be positive"),
        (CA, (0, 2), {"clipped_count_stddev": -1}, ValueError, "must be non-negative"),
        (CA, (1.0, 10), {}, ValueError, "must be below 2 x clipped_count_stddev"),
    ],
)
def test_impossible_parameters_are_refused_at_construction(
    cls: Any, args: tuple[Any, ...], kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        cls(FedAvg(), *args, **kwargs)
    with pytest.raises(TypeError, match="strategy must be a Strategy, got NoneType"):
        cls(None, 1.0, 1, 2) if cls in (SF, CF) else cls(None, 0.0, 2)


def test_validate_replies_is_flowers_check(capsys: pytest.CaptureFixture[str]) -> None:
    ok = [reply(*ROUND[0]), reply(*ROUND[1])]
    assert validate_replies(ok, 2) and validate_replies(ok, 3)
    assert not validate_replies(ok, 3, strict=True)
    assert not validate_replies([*ok, error_reply()], 3)
    out = capsys.readouterr().out
    assert "differs from the number of sampled clients (3)" in out
    assert out.rstrip().endswith("Some clients reported errors. Skipping aggregation.")


def test_a_wrapped_strategy_that_lists_the_replies_still_rejects_on_the_rounds_tally() -> None:
    class ListFedAvg(FedAvg):
        def aggregate_train(self, server_round: int, replies: Any) -> Any:
            return super().aggregate_train(server_round, list(replies))

    dp = DifferentialPrivacyClientSideFixedClipping(ListFedAvg(), 0.0, 0.5, 2)
    unweighted = Message(
        RecordDict({"arrays": model(shifted(1.0))}), reply_to=Message(RecordDict(), 3, "train")
    )
    tally = ReplyTally(iter([reply(*ROUND[0]), unweighted]))
    dp._round_tally = tally  # as Strategy.start sets it
    arrays, _ = dp.aggregate_train(1, tally)
    assert arrays is not None and tally.failures == 1 and "num-examples" in tally.reasons[0]
