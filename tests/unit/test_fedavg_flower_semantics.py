"""FedAvg as Flower's behaves when an app drives it itself, and Flower's strategy_utils.

Flower's `aggregate_train`/`aggregate_evaluate` take any iterable of replies (the
advanced-pytorch example passes `grid.send_and_receive(...)`, a list) and leave out
error replies; its `configure_*` set `server-round`; `summary()` logs the strategy's
parameters. The expected numbers and log lines below are what Flower 1.23 gives for
the same inputs. Where Flower raises InconsistentMessageReplies (a reply lacking the
weight), flpg leaves that reply out and aggregates the others, as its round loop does.

No database: replies are built in memory, and a stored array is stood in for by a
source that refuses to be loaded whole; the grid is a stand-in that only lists nodes
and builds messages (configuring touches nothing else).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import pytest

from flpg.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flpg.serverapp.grid import Grid
from flpg.serverapp.strategy import FedAvg, Strategy
from flpg.serverapp.strategy import strategy_utils as su
from flpg.serverapp.strategy.aggregate import ReplyRejected
from flpg.serverapp.strategy.strategy import _round_config
from flpg.serverapp.strategy.tally import ReplyTally


class StandInGrid:
    """What FedAvg's configure methods use of a Grid: node ids, run id, messages."""

    def __init__(self, node_ids: list[int]) -> None:
        self.node_ids = node_ids
        self.run_id = 7

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)


def grid(*node_ids: int) -> Grid:
    return cast(Grid, StandInGrid(list(node_ids)))


def reply(
    node: int,
    arrays: list[npt.NDArray[Any]] | None,
    metrics: dict[str, Any],
    message_id: int | None = None,
) -> Message:
    content = RecordDict({"metrics": MetricRecord(metrics)})
    if arrays is not None:
        content["arrays"] = ArrayRecord(arrays)
    out = Message(content, reply_to=Message(RecordDict(), node, "train"))
    out.metadata.message_id = message_id
    return out


def error_reply(node: int, reason: str = "boom") -> Message:
    return Message(Error(0, reason), reply_to=Message(RecordDict(), node, "train"))


def f32(*values: float) -> npt.NDArray[Any]:
    return np.array(values, dtype=np.float32)


ONES = reply(1, [f32(1, 1, 1)], {"num-examples": 1, "loss": 1.0})
ZEROS = reply(2, [f32(0, 0, 0)], {"num-examples": 3, "loss": 3.0})
NO_WEIGHT = reply(3, [f32(9, 9, 9)], {"loss": 9.0}, message_id=33)


def printed(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().out.splitlines()


# --- aggregate_* take any iterable of replies ---------------------------------------


def test_aggregate_train_takes_a_list_and_leaves_error_replies_out(
    capsys: pytest.CaptureFixture[str],
) -> None:
    arrays, metrics = FedAvg().aggregate_train(1, [ONES, ZEROS, error_reply(7)])
    assert arrays is not None and metrics is not None
    np.testing.assert_array_equal(arrays["0"].numpy(), f32(0.25, 0.25, 0.25))
    assert arrays["0"].dtype == "float32"
    assert dict(metrics) == {"loss": 2.5}
    assert printed(capsys) == [
        "aggregate_train: Received 2 results and 1 failures",
        "\t> node 7: boom",
    ]


def test_aggregate_train_takes_a_generator_without_configure_train() -> None:
    """Without a configure_train the first usable reply gives the model's shape."""
    arrays, metrics = FedAvg().aggregate_train(3, iter([ZEROS, ONES]))
    assert arrays is not None and metrics == MetricRecord({"loss": 2.5})
    np.testing.assert_array_equal(arrays["0"].numpy(), f32(0.25, 0.25, 0.25))


def test_a_reply_lacking_the_weight_is_left_out_not_raised(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Flower raises InconsistentMessageReplies here; flpg aggregates the others."""
    arrays, metrics = FedAvg().aggregate_train(1, [NO_WEIGHT, ONES, ZEROS])
    assert arrays is not None and dict(metrics or {}) == {"loss": 2.5}
    np.testing.assert_array_equal(arrays["0"].numpy(), f32(0.25, 0.25, 0.25))
    lines = printed(capsys)
    assert lines[0] == "aggregate_train: Received 2 results and 1 failures"
    assert "reply 33 rejected: reply has no numeric metric 'num-examples'" in lines[1]


@pytest.mark.parametrize(
    "replies", [[], [error_reply(1)], [NO_WEIGHT], [reply(4, None, {"num-examples": 2})]]
)
def test_nothing_usable_gives_none_as_in_flower(replies: list[Message]) -> None:
    assert FedAvg().aggregate_train(1, replies) == (None, None)


def test_a_reply_whose_arrays_do_not_match_the_configured_model_is_left_out() -> None:
    strategy = FedAvg()
    strategy.configure_train(1, ArrayRecord([f32(5, 5, 5)]), ConfigRecord(), grid(1, 2))
    wrong = reply(5, [f32(1, 2)], {"num-examples": 10})
    arrays, _ = strategy.aggregate_train(1, [wrong, ONES])
    assert arrays is not None
    np.testing.assert_array_equal(arrays["0"].numpy(), f32(1, 1, 1))


def test_aggregate_evaluate_takes_a_list_and_leaves_out_errors_and_unweighted(
    capsys: pytest.CaptureFixture[str],
) -> None:
    metrics = FedAvg().aggregate_evaluate(1, [ONES, error_reply(7), NO_WEIGHT, ZEROS])
    assert metrics == MetricRecord({"loss": 2.5})
    assert printed(capsys)[0] == "aggregate_evaluate: Received 2 results and 2 failures"
    assert FedAvg().aggregate_evaluate(1, [error_reply(1)]) is None


def test_the_metric_aggregation_functions_are_flowers_attributes() -> None:
    strategy = FedAvg()
    assert strategy.train_metrics_aggr_fn is su.aggregate_metricrecords
    assert strategy.evaluate_metrics_aggr_fn is su.aggregate_metricrecords
    seen: list[list[RecordDict]] = []

    def count(records: list[RecordDict], key: str) -> MetricRecord:
        seen.append(records)
        return MetricRecord({"n": len(records), "key": len(key)})

    custom = FedAvg(train_metrics_aggr_fn=count)
    _, metrics = custom.aggregate_train(1, [ONES, NO_WEIGHT, ZEROS])
    assert metrics == MetricRecord({"n": 2, "key": len("num-examples")})
    assert [list(r) for r in seen[0]] == [["metrics"], ["metrics"]]  # metrics only, no arrays


# --- the streaming path stays streaming ---------------------------------------------


class RefusesLoad:
    """A stored array's source: read chunk by chunk, never loaded whole."""

    run_id = 1
    array_id = 1
    digest = b""

    def __init__(self, values: npt.NDArray[Any]) -> None:
        self.raw = values.astype("<f4").tobytes()
        self.read = False

    def load(self) -> npt.NDArray[Any]:
        raise AssertionError("the array was materialised")

    def chunks(self) -> Iterator[bytes]:
        half = len(self.raw) // 2
        yield self.raw[:half]
        yield self.raw[half:]
        self.read = True


def stored_reply(node: int, values: npt.NDArray[Any], weight: int) -> tuple[Message, RefusesLoad]:
    source = RefusesLoad(values)
    array = Array.stored("<f4", values.shape, source)
    content = RecordDict(
        {"arrays": ArrayRecord({"w": array}), "metrics": MetricRecord({"num-examples": weight})}
    )
    return Message(content, reply_to=Message(RecordDict(), node, "train")), source


@pytest.mark.parametrize("wrap", [ReplyTally, iter], ids=["tally", "plain iterator"])
def test_replies_are_aggregated_one_at_a_time_and_read_in_chunks(wrap: Any) -> None:
    """Each reply is folded in before the next is asked for; stored arrays are never
    loaded whole, whether `start`'s tally or a plain iterator brings them."""
    sources: list[RefusesLoad] = []

    def arrive() -> Iterator[Message]:
        for node in range(1, 5):
            assert all(s.read for s in sources), "a reply was held back"
            message, source = stored_reply(node, np.full(6, float(node), np.float32), node)
            sources.append(source)
            yield message

    strategy = FedAvg()
    strategy.configure_train(1, ArrayRecord({"w": np.zeros(6, np.float32)}), ConfigRecord(), grid())
    arrays, _ = strategy.aggregate_train(1, wrap(arrive()))
    assert arrays is not None and all(s.read for s in sources)
    np.testing.assert_allclose(arrays["w"].numpy(), np.full(6, 30 / 10, np.float32))


def test_the_round_tally_counts_rejections_and_start_does_the_logging(
    capsys: pytest.CaptureFixture[str],
) -> None:
    tally = ReplyTally(iter([ONES, error_reply(4), NO_WEIGHT, ZEROS]))
    arrays, _ = FedAvg().aggregate_train(1, tally)
    assert arrays is not None
    assert (tally.received, tally.failures, tally.rejected) == (
        4,
        2,
        [("33", tally.rejected[0][1])],
    )
    assert printed(capsys) == []


def test_a_subclass_passing_a_list_of_the_rounds_replies_counts_in_the_round() -> None:
    """Like tests/compat/apps/flwr-custom-strategy: `list(replies)` handed to FedAvg
    while `start` aggregates a round. A rejection reaches the round's tally, which
    `start` records (the reply row's reason) and counts against min_train_nodes."""

    class ListFedAvg(FedAvg):
        def aggregate_train(
            self, server_round: int, replies: Any
        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
            return super().aggregate_train(server_round, list(replies))

    strategy = ListFedAvg()
    round_tally = ReplyTally(iter([ONES, error_reply(4), NO_WEIGHT]))
    strategy._round_tally = round_tally  # as Strategy._train_round sets it
    arrays, _ = strategy.aggregate_train(1, round_tally)
    assert arrays is not None
    assert round_tally.failures == 2 and [i for i, _ in round_tally.rejected] == ["33"]


# --- configure_* set server-round ---------------------------------------------------


def test_configure_train_and_evaluate_set_server_round_as_flowers_do() -> None:
    """A strategy whose own `start` calls them with its own config sends the round."""
    strategy = FedAvg(min_train_nodes=1, min_evaluate_nodes=1, min_available_nodes=1)
    config = ConfigRecord({"lr": 0.1})
    arrays = ArrayRecord([f32(1, 2)])
    for rnd in (1, 2):
        train = list(strategy.configure_train(rnd, arrays, config, grid(1, 2)))
        assert [m.content["config"]["server-round"] for m in train] == [rnd, rnd]
        assert config == ConfigRecord({"lr": 0.1, "server-round": rnd})  # in place, as Flower
        evaluate = list(strategy.configure_evaluate(rnd, arrays, ConfigRecord(), grid(3)))
        assert [m.content["config"]["server-round"] for m in evaluate] == [rnd]
        assert [m.metadata.message_type for m in evaluate] == ["evaluate"]


def test_starts_round_config_is_a_copy_with_the_round() -> None:
    """`start` gives configure a fresh record each round: the caller's is left alone,
    and FedAvg setting the same key again changes nothing."""
    mine = ConfigRecord({"lr": 0.5})
    first = _round_config(mine, 1)
    second = _round_config(mine, 2)
    assert mine == ConfigRecord({"lr": 0.5})
    assert (first["server-round"], second["server-round"]) == (1, 2)
    strategy = FedAvg(min_train_nodes=1, min_available_nodes=1)
    (message,) = strategy.configure_train(2, ArrayRecord([f32(1)]), second, grid(1))
    assert message.content["config"] == ConfigRecord({"lr": 0.5, "server-round": 2})
    assert _round_config(None, 3) == ConfigRecord({"server-round": 3})


# --- summary ------------------------------------------------------------------------


def test_fedavg_summary_logs_flowers_lines(capsys: pytest.CaptureFixture[str]) -> None:
    FedAvg().summary()
    assert printed(capsys) == [
        "\t├──> Sampling:",
        "\t│\t├──Fraction: train (1.00) | evaluate ( 1.00)",
        "\t│\t├──Minimum nodes: train (2) | evaluate (2)",
        "\t│\t└──Minimum available nodes: 2",
        "\t└──> Keys in records:",
        "\t\t├── Weighted by: 'num-examples'",
        "\t\t├── ArrayRecord key: 'arrays'",
        "\t\t└── ConfigRecord key: 'config'",
    ]
    FedAvg(fraction_evaluate=0.0, weighted_by_key="n").summary()
    lines = printed(capsys)
    assert lines[1] == "\t│\t├──Fraction: train (1.00) | evaluate ( 0.00)"
    assert lines[2] == "\t│\t├──Minimum nodes: train (2) | evaluate (0)"
    assert lines[5] == "\t\t├── Weighted by: 'n'"


def test_a_strategy_need_not_define_summary(capsys: pytest.CaptureFixture[str]) -> None:
    class Minimal(Strategy):
        def configure_train(self, *args: Any) -> list[Message]:
            return []

        def aggregate_train(self, *args: Any) -> tuple[None, None]:
            return None, None

        def configure_evaluate(self, *args: Any) -> list[Message]:
            return []

        def aggregate_evaluate(self, *args: Any) -> None:
            return None

    Minimal().summary()
    assert printed(capsys) == []


# --- strategy_utils -----------------------------------------------------------------


def test_log_strategy_start_info_logs_flowers_lines_without_reading_arrays(
    capsys: pytest.CaptureFixture[str],
) -> None:
    stored, _ = stored_reply(1, np.zeros(1000, np.float32), 1)
    arrays = stored.content["arrays"]
    assert isinstance(arrays, ArrayRecord)
    su.log_strategy_start_info(3, arrays, ConfigRecord({"lr": 0.1, "b": b"x"}), None)
    assert printed(capsys) == [
        "\t├── Number of rounds: 3",
        "\t├── ArrayRecord (0.00 MB)",
        "\t├── ConfigRecord (train): {'lr': 0.1, 'b': <bytes>}",
        "\t├── ConfigRecord (evaluate): (empty!)",
    ]
    big = ArrayRecord([np.zeros(1 << 20, np.float32)])
    su.log_strategy_start_info(1, big, ConfigRecord(), ConfigRecord({"x": 1}))
    assert printed(capsys)[1:] == [
        "\t├── ArrayRecord (4.00 MB)",
        "\t├── ConfigRecord (train): (empty!)",
        "\t├── ConfigRecord (evaluate): {'x': 1}",
    ]


def contents(*replies: Message) -> list[RecordDict]:
    return [r.content for r in replies]


def test_aggregate_arrayrecords_and_metricrecords_are_flowers_weighted_means() -> None:
    arrays = su.aggregate_arrayrecords(contents(ONES, ZEROS), "num-examples")
    np.testing.assert_array_equal(arrays["0"].numpy(), f32(0.25, 0.25, 0.25))
    assert su.aggregate_arrayrecords([], "num-examples") == ArrayRecord()
    lists = [
        RecordDict({"m": MetricRecord({"w": 1, "acc": [1.0, 0.0], "n": 4})}),
        RecordDict({"m": MetricRecord({"w": 3, "acc": [0.0, 1.0], "n": 8})}),
    ]
    assert su.aggregate_metricrecords(lists, "w") == MetricRecord({"acc": [0.25, 0.75], "n": 7.0})
    assert su.aggregate_metricrecords([], "w") == MetricRecord()


def test_aggregate_arrayrecords_refuses_what_it_cannot_average() -> None:
    with pytest.raises(ReplyRejected, match="no numeric metric 'num-examples'"):
        su.aggregate_arrayrecords(contents(ONES, NO_WEIGHT), "num-examples")
    short = reply(5, [f32(1, 2)], {"num-examples": 1})
    with pytest.raises(ValueError, match="the global model's is float32\\[3\\]"):
        su.aggregate_arrayrecords(contents(ONES, short), "num-examples")


def test_validate_message_reply_consistency_raises_as_flowers_does() -> None:
    su.validate_message_reply_consistency(contents(ONES, ZEROS), "num-examples", True)
    with pytest.raises(su.InconsistentMessageReplies, match="same keys"):
        su.validate_message_reply_consistency(contents(ONES, NO_WEIGHT), "num-examples", True)
    with pytest.raises(su.InconsistentMessageReplies, match="Missing required key"):
        su.validate_message_reply_consistency(contents(NO_WEIGHT), "num-examples", False)
    with pytest.raises(su.InconsistentMessageReplies, match="one ArrayRecord"):
        su.validate_message_reply_consistency(
            contents(reply(1, None, {"num-examples": 1})), "num-examples", True
        )


def test_sample_nodes_and_config_to_str() -> None:
    sampled, online = su.sample_nodes(grid(4, 5, 6), 2, 2)
    assert online == [4, 5, 6] and len(sampled) == 2 and set(sampled) <= {4, 5, 6}
    assert su.config_to_str(ConfigRecord({"a": 1, "b": b"\x00"})) == "{'a': 1, 'b': <bytes>}"


def test_strategy_utils_resolve_through_the_hook_as_flpgs_functions() -> None:
    code = (
        "import json\n"
        "from flpg.compat.flwr import install\n"
        "install()\n"
        "from flwr.serverapp.strategy.strategy_utils import (\n"
        "    aggregate_arrayrecords, aggregate_metricrecords, log_strategy_start_info)\n"
        "import flwr.serverapp.strategy as s\n"
        "from flpg.serverapp.strategy import strategy_utils as su\n"
        "print(json.dumps([aggregate_arrayrecords is su.aggregate_arrayrecords,\n"
        "    aggregate_metricrecords is su.aggregate_metricrecords,\n"
        "    log_strategy_start_info is su.log_strategy_start_info,\n"
        "    s.strategy_utils.sample_nodes is su.sample_nodes]))\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=root
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [True, True, True, True]
