"""FedXgbCyclic: one node per round, in a fixed order that survives nodes coming and
going and a resume (its state); the chosen node's booster becomes the model; bad
replies are rejected with reasons. No database and no xgboost needed."""

from __future__ import annotations

import json
from typing import Any, cast

import numpy as np
import pytest

from flpg.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flpg.serverapp.grid import Grid
from flpg.serverapp.strategy import StrategyState
from flpg.serverapp.strategy.fedxgb_cyclic import FedXgbCyclic
from flpg.serverapp.strategy.tally import ReplyTally

from .test_fedxgb_bagging import booster, booster_reply, global_arrays, marks, raw


class StandInGrid:
    """Node ids that the test changes between rounds; messages built in memory."""

    run_id = 11

    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str
    ) -> Message:
        return Message(content, dst_node_id, message_type, group_id=group_id)


def chosen(messages: Any) -> list[int]:
    return [m.metadata.dst_node_id for m in messages]


def train_targets(strategy: FedXgbCyclic, grid: StandInGrid, rounds: range) -> list[int]:
    out = []
    for r in rounds:
        messages = list(
            strategy.configure_train(r, global_arrays(None), ConfigRecord(), cast(Grid, grid))
        )
        assert len(messages) == 1 and messages[0].metadata.message_type == "train"
        out.extend(chosen(messages))
    return out


def test_one_node_per_round_in_a_fixed_cycle() -> None:
    grid = StandInGrid([10, 20, 30, 40])
    strategy = FedXgbCyclic()
    targets = train_targets(strategy, grid, range(1, 9))
    assert sorted(targets[:4]) == [10, 20, 30, 40]
    assert targets[4:] == targets[:4]
    order = sorted(strategy.registered_nodes, key=strategy.registered_nodes.__getitem__)
    assert targets[:4] == order
    assert sorted(strategy.registered_nodes.values()) == [1, 2, 3, 4]


def test_the_order_depends_on_the_seed_only() -> None:
    nodes = list(range(1, 13))
    one = train_targets(FedXgbCyclic(seed=5), StandInGrid(nodes), range(1, 13))
    again = train_targets(FedXgbCyclic(seed=5), StandInGrid(nodes[::-1]), range(1, 13))
    other = train_targets(FedXgbCyclic(seed=6), StandInGrid(nodes), range(1, 13))
    assert one == again and sorted(one) == nodes and one != other


def test_evaluation_goes_to_the_node_that_trained() -> None:
    grid = cast(Grid, StandInGrid([1, 2, 3]))
    strategy = FedXgbCyclic()
    for r in (1, 2, 3, 4):
        train = chosen(strategy.configure_train(r, global_arrays(None), ConfigRecord(), grid))
        config = ConfigRecord()
        evaluate = list(strategy.configure_evaluate(r, global_arrays(None), config, grid))
        assert chosen(evaluate) == train and evaluate[0].metadata.message_type == "evaluate"
        assert config["server-round"] == r


def test_nodes_that_join_or_leave_keep_the_cycle_of_the_others() -> None:
    grid = StandInGrid([1, 2, 3])
    strategy = FedXgbCyclic(seed=1)
    first = train_targets(strategy, grid, range(1, 4))
    place = dict(strategy.registered_nodes)
    grid.nodes = [1, 2, 3, 4]
    (fourth,) = train_targets(strategy, grid, range(4, 5))
    assert strategy.registered_nodes == {**place, 4: 4}
    assert fourth == 4  # round 4 -> index 3 of [first..., 4]
    grid.nodes = [n for n in [1, 2, 3, 4] if n != first[0]]
    # Three online, ordered by place: round 5 -> index (5 - 1) % 3 = 1.
    online = sorted(grid.nodes, key=strategy.registered_nodes.__getitem__)
    assert train_targets(strategy, grid, range(5, 6)) == [online[1]]


def test_state_continues_the_cycle_after_a_resume() -> None:
    grid = StandInGrid([5, 6, 7, 8, 9])
    original = FedXgbCyclic()
    targets = train_targets(original, grid, range(1, 4))
    state = original.state()
    assert (
        list(state.arrays["registered_nodes"]["node_ids"].numpy())
        == targets
        + [n for n in sorted(original.registered_nodes, key=original.registered_nodes.__getitem__)][
            3:
        ]
    )
    resumed = FedXgbCyclic(seed=999)  # a different seed: the order must come from the state
    resumed.load_state(state)
    assert resumed.registered_nodes == original.registered_nodes
    assert train_targets(resumed, grid, range(4, 11)) == train_targets(original, grid, range(4, 11))
    assert train_targets(resumed, grid, range(1, 4)) == targets


def test_state_array_changes_only_when_a_node_joins() -> None:
    grid = StandInGrid([1, 2])
    strategy = FedXgbCyclic()
    assert not strategy.state()
    train_targets(strategy, grid, range(1, 3))
    array = strategy.state().arrays["registered_nodes"]["node_ids"]
    train_targets(strategy, grid, range(3, 5))
    assert strategy.state().arrays["registered_nodes"]["node_ids"] is array
    grid.nodes = [1, 2, 3]
    train_targets(strategy, grid, range(5, 6))
    new = strategy.state().arrays["registered_nodes"]["node_ids"]
    assert new is not array and list(new.numpy())[-1] == 3


def test_load_state_refuses_a_bad_order() -> None:
    bad = StrategyState(arrays={"registered_nodes": ArrayRecord({"node_ids": np.zeros(2)})})
    with pytest.raises(ValueError, match="int64 node_ids"):
        FedXgbCyclic().load_state(bad)


def test_fractions_other_than_zero_or_one_are_refused() -> None:
    with pytest.raises(ValueError, match=r"fraction_train can only be 1\.0 or 0\.0"):
        FedXgbCyclic(fraction_train=0.5)
    with pytest.raises(ValueError, match=r"fraction_evaluate can only be 1\.0 or 0\.0"):
        FedXgbCyclic(fraction_evaluate=0.3)


def test_a_zero_fraction_skips_its_phase() -> None:
    grid = cast(Grid, StandInGrid([1, 2]))
    strategy = FedXgbCyclic(fraction_train=0.0, fraction_evaluate=0.0)
    assert (strategy.min_train_nodes, strategy.min_evaluate_nodes) == (0, 0)
    assert list(strategy.configure_train(1, global_arrays(None), ConfigRecord(), grid)) == []
    assert list(strategy.configure_evaluate(1, global_arrays(None), ConfigRecord(), grid)) == []
    defaults = FedXgbCyclic()
    assert (defaults.min_train_nodes, defaults.min_evaluate_nodes) == (1, 1)
    assert defaults.min_available_nodes == 2


def test_the_replying_nodes_booster_becomes_the_model() -> None:
    strategy = FedXgbCyclic()
    doc = booster([["a0"], ["a1"]])
    arrays, metrics = strategy.aggregate_train(3, [booster_reply(2, doc, weight=4)])
    assert arrays is not None and metrics is not None
    assert arrays["0"].numpy().tobytes() == raw(doc)
    assert metrics["loss"] == 2.0


def test_bad_replies_are_rejected_and_the_first_usable_one_is_kept() -> None:
    strategy = FedXgbCyclic()
    no_weight = Message(
        RecordDict({"arrays": global_arrays(booster([["w"]]))}),
        reply_to=Message(RecordDict(), 1, "train"),
    )
    floats = RecordDict(
        {"arrays": ArrayRecord([np.zeros(3, np.float64)]), "m": MetricRecord({"num-examples": 1})}
    )
    wrong = Message(floats, reply_to=Message(RecordDict(), 2, "train"))
    garbage = booster_reply(3, b"not json")
    good = booster_reply(4, booster([["g"]]))
    later = booster_reply(5, booster([["h"]]))
    tally = ReplyTally([no_weight, wrong, garbage, good, later])
    arrays, metrics = strategy.aggregate_train(1, tally)
    assert arrays is not None and marks(json.loads(arrays["0"].numpy().tobytes())) == ["g"]
    assert metrics is not None and metrics["loss"] == pytest.approx(4.5)
    assert tally.usable == 2 and len(tally.reasons) == 3
    assert "numeric metric" in tally.reasons[0] and "1-D uint8" in tally.reasons[1]
    assert "not booster JSON" in tally.reasons[2]
    assert strategy.aggregate_train(2, [garbage]) == (None, None)


def test_summary_prints_fedavgs_lines(capsys: pytest.CaptureFixture[str]) -> None:
    FedXgbCyclic(min_available_nodes=3).summary()
    out = capsys.readouterr().out
    assert "\t│\t├──Minimum nodes: train (1) | evaluate (1)\n" in out
    assert "\t│\t└──Minimum available nodes: 3\n" in out
    assert "\t\t├── ArrayRecord key: 'arrays'\n" in out
