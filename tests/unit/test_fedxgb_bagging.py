"""FedXgbBagging and its JSON tree merge (`xgb_trees`), on boosters written by hand
(no xgboost needed): the merged document against one built by hand, reply order,
rejected replies with their reasons, and, when a Flower install is present, Flower's
own `aggregate_bagging` on the same boosters."""

from __future__ import annotations

import copy
import json
import os
import subprocess
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest

from flpg.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flpg.app.error import Error
from flpg.serverapp.grid import Grid
from flpg.serverapp.strategy.fedxgb_bagging import FedXgbBagging
from flpg.serverapp.strategy.strategy_utils import InconsistentMessageReplies
from flpg.serverapp.strategy.tally import ReplyTally
from flpg.serverapp.strategy.xgb_trees import BoosterError, TreeBag, aggregate_bagging

FLWR_PYTHON = Path(os.environ.get("FLWR_VENV", "/tmp/flwr-venv")) / "bin" / "python"


class StandInGrid:
    """What the configure methods use of a Grid: node ids, run id, messages."""

    run_id = 3

    def get_node_ids(self) -> list[int]:
        return [1, 2, 3]

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str
    ) -> Message:
        return Message(content, dst_node_id, message_type, group_id=group_id)


GRID = cast(Grid, StandInGrid())


def tree(mark: str, tid: int = 0) -> dict[str, Any]:
    """A stand-in tree: the merge never looks inside one (`mark` tells them apart)."""
    return {"id": tid, "mark": mark, "tree_param": {"num_nodes": "1", "num_feature": "4"}}


def booster(
    iterations: list[list[str]],
    *,
    objective: str = "binary:logistic",
    num_class: int = 0,
    num_feature: int = 4,
) -> dict[str, Any]:
    """A gbtree booster document whose iterations hold trees marked as given; in a
    multi-output booster the i-th tree of an iteration belongs to output i."""
    trees: list[dict[str, Any]] = []
    info: list[int] = []
    indptr = [0]
    for iteration in iterations:
        for k, mark in enumerate(iteration):
            trees.append(tree(mark, len(trees)))
            info.append(k if num_class else 0)
        indptr.append(len(trees))
    return {
        "learner": {
            "attributes": {},
            "feature_names": [],
            "gradient_booster": {
                "model": {
                    "cats": {"enc": [], "feature_segments": [], "sorted_idx": []},
                    "gbtree_model_param": {"num_parallel_tree": "1", "num_trees": str(len(trees))},
                    "iteration_indptr": indptr,
                    "tree_info": info,
                    "trees": trees,
                },
                "name": "gbtree",
            },
            "learner_model_param": {
                "base_score": "[5E-1]",
                "num_class": str(num_class),
                "num_feature": str(num_feature),
                "num_target": "1",
            },
            "objective": {"name": objective},
        },
        "version": [3, 2, 0],
    }


def raw(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()


def marks(doc: dict[str, Any]) -> list[str]:
    return [t["mark"] for t in doc["learner"]["gradient_booster"]["model"]["trees"]]


def expected_merge(base: dict[str, Any], added: list[list[str]], infos: list[int]) -> Any:
    """`base` with each list of marks appended as one iteration, written out by hand."""
    doc = copy.deepcopy(base)
    model = doc["learner"]["gradient_booster"]["model"]
    for iteration in added:
        for mark in iteration:
            model["trees"].append(tree(mark, len(model["trees"])))
        model["tree_info"].extend(infos[: len(iteration)])
        model["iteration_indptr"].append(len(model["trees"]))
    model["gbtree_model_param"]["num_trees"] = str(len(model["trees"]))
    return doc


def test_merge_appends_the_first_iteration_of_each_booster() -> None:
    base = booster([["g0"], ["g1"]])
    merged = aggregate_bagging(raw(base), raw(booster([["a0"], ["a1"]])))
    merged = aggregate_bagging(merged, raw(booster([["b0"]])))
    assert json.loads(merged) == expected_merge(base, [["a0"], ["b0"]], [0])


def test_merge_onto_nothing_returns_the_booster_whole() -> None:
    first = raw(booster([["a0"], ["a1"]]))
    assert aggregate_bagging(b"", first) == first
    with pytest.raises(BoosterError, match="not booster JSON"):
        aggregate_bagging(b"", b"{oops")


def test_merge_keeps_the_outputs_of_a_multi_class_iteration() -> None:
    base = booster([["g0", "g1", "g2"]], objective="multi:softprob", num_class=3)
    reply = booster([["a0", "a1", "a2"], ["x", "y", "z"]], objective="multi:softprob", num_class=3)
    merged = json.loads(aggregate_bagging(raw(base), raw(reply)))
    assert merged == expected_merge(base, [["a0", "a1", "a2"]], [0, 1, 2])


def test_merge_takes_the_largest_num_feature() -> None:
    merged = json.loads(
        aggregate_bagging(raw(booster([["g"]])), raw(booster([["a"]], num_feature=9)))
    )
    assert merged["learner"]["learner_model_param"]["num_feature"] == "9"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda d: d["learner"]["objective"].update(name="reg:squarederror"), "differs from"),
        (lambda d: d["learner"]["learner_model_param"].update(num_class="3"), "differs from"),
        (lambda d: d["learner"]["gradient_booster"].update(name="dart"), "'dart' is not gbtree"),
        (lambda d: d["learner"].pop("gradient_booster"), "no learner/gradient_booster"),
        (lambda d: d["learner"]["gradient_booster"]["model"]["trees"].pop(), "inconsistent"),
        (lambda d: d["learner"]["gradient_booster"]["model"].update(trees=[7]), "JSON objects"),
        (lambda d: d["learner"]["gradient_booster"]["model"].update(tree_info=["0"]), "integers"),
        (
            lambda d: d["learner"]["gradient_booster"]["model"].update(
                trees=[], tree_info=[], iteration_indptr=[0], gbtree_model_param={"num_trees": "0"}
            ),
            "no boosting iteration",
        ),
    ],
)
def test_merge_refuses_boosters_that_do_not_fit(change: Any, reason: str) -> None:
    reply = booster([["a"]])
    change(reply)
    bag = TreeBag(raw(booster([["g"]])))
    with pytest.raises(BoosterError, match=reason):
        bag.add(raw(reply))
    assert bag.count == 0


def reply(node: int, content: RecordDict) -> Message:
    return Message(content, reply_to=Message(RecordDict(), node, "train"))


def booster_reply(node: int, doc: dict[str, Any] | bytes, weight: float = 10.0) -> Message:
    data = doc if isinstance(doc, bytes) else raw(doc)
    arrays = ArrayRecord([np.frombuffer(data, dtype=np.uint8)])
    metrics = MetricRecord({"num-examples": weight, "loss": float(node)})
    return reply(node, RecordDict({"arrays": arrays, "metrics": metrics}))


def global_arrays(doc: dict[str, Any] | None) -> ArrayRecord:
    data = b"" if doc is None else raw(doc)
    return ArrayRecord([np.frombuffer(data, dtype=np.uint8)])


def run_round(
    strategy: FedXgbBagging, model: ArrayRecord, replies: list[Message]
) -> tuple[Any, MetricRecord | None]:
    list(strategy.configure_train(1, model, ConfigRecord(), GRID))
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert arrays is not None and list(arrays) == ["0"]
    assert arrays["0"].dtype == "uint8" and strategy.current_bst == arrays["0"].numpy().tobytes()
    return json.loads(strategy.current_bst), metrics


def test_bagging_merges_replies_in_node_order_whatever_their_arrival() -> None:
    base = booster([["g"]])
    replies = [booster_reply(n, booster([[f"n{n}"]]), weight=n) for n in (3, 1, 2)]
    merged, metrics = run_round(FedXgbBagging(), global_arrays(base), replies)
    assert merged == expected_merge(base, [["n1"], ["n2"], ["n3"]], [0])
    assert metrics is not None
    assert metrics["loss"] == pytest.approx((1 * 1 + 2 * 2 + 3 * 3) / 6)


def test_first_round_takes_the_smallest_nodes_booster_whole() -> None:
    replies = [
        booster_reply(2, booster([["b0"], ["b1"]])),
        booster_reply(1, booster([["a0"], ["a1"]])),
        booster_reply(3, booster([["c0"]])),
    ]
    merged, _ = run_round(FedXgbBagging(), global_arrays(None), replies)
    assert merged == expected_merge(booster([["a0"], ["a1"]]), [["b0"], ["c0"]], [0])


def test_unusable_replies_are_rejected_one_by_one_with_reasons() -> None:
    base = booster([["g"]])
    good = booster_reply(1, booster([["ok"]]))
    no_weight = reply(2, RecordDict({"arrays": global_arrays(booster([["w"]]))}))
    two = ArrayRecord({"0": np.zeros(3, np.uint8), "1": np.zeros(3, np.uint8)})
    two_arrays = reply(3, RecordDict({"arrays": two, "m": MetricRecord({"num-examples": 1})}))
    floats = ArrayRecord([np.zeros(4, np.float32)])
    wrong_dtype = reply(4, RecordDict({"arrays": floats, "m": MetricRecord({"num-examples": 1})}))
    not_json = booster_reply(5, b"\x00\x01garbage")
    other_objective = booster_reply(6, booster([["r"]], objective="reg:squarederror"))
    error = Message(Error(0, "boom"), reply_to=Message(RecordDict(), 7, "train"))
    strategy = FedXgbBagging()
    list(strategy.configure_train(1, global_arrays(base), ConfigRecord(), GRID))
    tally = ReplyTally([no_weight, two_arrays, good, wrong_dtype, not_json, other_objective, error])
    arrays, metrics = strategy.aggregate_train(1, tally)
    assert arrays is not None and metrics is not None
    assert marks(json.loads(arrays["0"].numpy().tobytes())) == ["g", "ok"]
    assert metrics["loss"] == 1.0
    assert (tally.received, tally.usable) == (7, 1)
    expected = [
        "node 7: boom",
        "node 2: reply None rejected: reply has no numeric metric 'num-examples'",
        "node 3: reply None rejected: expected exactly one array (the booster), got 2",
        "node 4: reply None rejected: array '0' must be 1-D uint8",
        "node 5: reply None rejected: not booster JSON",
        "node 6: reply None rejected: booster differs from the global one in objective",
    ]
    assert len(tally.reasons) == len(expected)
    for want in expected:
        assert sum(reason.startswith(want) for reason in tally.reasons) == 1, (want, tally.reasons)


def test_rejections_reach_the_round_tally() -> None:
    strategy = FedXgbBagging()
    list(strategy.configure_train(1, global_arrays(booster([["g"]])), ConfigRecord(), GRID))
    bad = booster_reply(2, booster([["x"]], num_class=2))
    tally = ReplyTally([booster_reply(1, booster([["a"]])), bad])
    strategy.aggregate_train(1, tally)
    assert tally.usable == 1 and tally.failures == 1
    assert "node 2" in tally.reasons[0] and "differs from the global one" in tally.reasons[0]


def test_no_usable_reply_gives_nothing() -> None:
    strategy = FedXgbBagging()
    list(strategy.configure_train(1, global_arrays(booster([["g"]])), ConfigRecord(), GRID))
    assert strategy.aggregate_train(1, [booster_reply(1, b"[]")]) == (None, None)


def test_without_configure_train_metrics_only_as_in_flower() -> None:
    arrays, metrics = FedXgbBagging().aggregate_train(1, [booster_reply(1, booster([["a"]]))])
    assert arrays is None and metrics is not None and metrics["loss"] == 1.0


def test_configure_train_refuses_a_model_that_is_not_one_booster() -> None:
    strategy = FedXgbBagging()
    two = ArrayRecord({"a": np.zeros(1, np.uint8), "b": np.zeros(1, np.uint8)})
    with pytest.raises(InconsistentMessageReplies, match="exactly one array"):
        strategy.configure_train(1, two, ConfigRecord(), GRID)
    with pytest.raises(ValueError, match="1-D uint8"):
        strategy.configure_train(1, ArrayRecord([np.zeros(3)]), ConfigRecord(), GRID)
    not_json = ArrayRecord([np.frombuffer(b"nope", np.uint8)])
    with pytest.raises(ValueError, match="global model: not booster JSON"):
        strategy.configure_train(1, not_json, ConfigRecord(), GRID)
    assert strategy.current_bst is None


def test_configure_train_sends_the_booster_to_every_sampled_node() -> None:
    model = global_arrays(booster([["g"]]))
    messages = list(FedXgbBagging().configure_train(2, model, ConfigRecord(), GRID))
    assert sorted(m.metadata.dst_node_id or 0 for m in messages) == [1, 2, 3]
    sent = messages[0].content["arrays"]
    assert isinstance(sent, ArrayRecord) and sent["0"] == Array(model["0"].numpy())
    config = messages[0].content["config"]
    assert isinstance(config, ConfigRecord) and config["server-round"] == 2


FLOWER_SCRIPT = """
import json, sys
from flwr.serverapp.strategy.strategy_utils import aggregate_bagging
blobs = json.load(open(sys.argv[1]))
out = b""
for blob in blobs:
    out = aggregate_bagging(out, blob.encode())
print(json.dumps(json.loads(out)))
"""


@pytest.mark.skipif(not FLWR_PYTHON.exists(), reason="no Flower install at FLWR_VENV")
def test_flowers_aggregate_bagging_agrees(tmp_path: Path) -> None:
    boosters = [booster([["a0"], ["a1"]]), booster([["b0"]]), booster([["c0"], ["c1"]])]
    (tmp_path / "boosters.json").write_text(json.dumps([json.dumps(b) for b in boosters]))
    done = subprocess.run(
        [str(FLWR_PYTHON), "-c", FLOWER_SCRIPT, str(tmp_path / "boosters.json")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    ours = b""
    for doc in boosters:
        ours = aggregate_bagging(ours, raw(doc))
    assert json.loads(ours) == json.loads(done.stdout.splitlines()[-1])
    strategy_merge, _ = run_round(
        FedXgbBagging(),
        global_arrays(None),
        [booster_reply(n, d) for n, d in enumerate(boosters, start=1)],
    )
    assert strategy_merge == json.loads(ours)


def test_without_a_global_booster_the_first_added_one_is_the_reference() -> None:
    bag = TreeBag(b"")
    bag.add(raw(booster([["a"]])), (2, ""))
    with pytest.raises(BoosterError, match="differs from the first one added"):
        bag.add(raw(booster([["b"]], objective="reg:squarederror")), (1, ""))
    assert bag.count == 1 and marks(json.loads(bag.result())) == ["a"]
    assert TreeBag(b"").result() == b""
