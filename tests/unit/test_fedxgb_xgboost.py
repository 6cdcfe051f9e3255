"""FedXgbBagging and FedXgbCyclic with real xgboost boosters (the `xgboost` extra).

Three nodes hold disjoint shards of breast_cancer and train as Flower's XGBoost apps
do: from scratch on an empty model, else load the global booster, boost one more
round and reply with that round's trees. The merged booster must load in xgboost,
predict exactly what its trees add up to, and beat each shard's own booster of the
same size. These tests fail (they do not skip) without xgboost: install the extra.
"""

from __future__ import annotations

import importlib
import json
from types import ModuleType
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import pytest
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.metrics import log_loss
from sklearn.model_selection import train_test_split

from flpg.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flpg.serverapp.grid import Grid
from flpg.serverapp.strategy.fedxgb_bagging import FedXgbBagging
from flpg.serverapp.strategy.fedxgb_cyclic import FedXgbCyclic

BINARY = {"objective": "binary:logistic", "eta": 0.1, "max_depth": 3, "nthread": 1}
ROUNDS = 5
NODES = (1, 2, 3)


@pytest.fixture(scope="module")
def xgb() -> ModuleType:
    try:
        return importlib.import_module("xgboost")
    except ImportError as exc:
        problem = str(exc)
    pytest.fail(
        f"xgboost is missing ({problem}): these tests need flpg's xgboost extra, "
        "pip install -e '.[xgboost]' (xgboost-cpu)",
        pytrace=False,
    )


class StandInGrid:
    run_id = 5

    def get_node_ids(self) -> list[int]:
        return list(NODES)

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str
    ) -> Message:
        return Message(content, dst_node_id, message_type, group_id=group_id)


GRID = cast(Grid, StandInGrid())

Data = tuple[npt.NDArray[Any], npt.NDArray[Any]]


def split(dataset: Any) -> tuple[dict[int, Data], Data]:
    """Disjoint training shards, one per node, and a held-out test set."""
    x, y = dataset(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.3, random_state=0, stratify=y
    )
    order = np.random.default_rng(0).permutation(len(y_train))
    parts = np.array_split(order, len(NODES))
    return {n: (x_train[p], y_train[p]) for n, p in zip(NODES, parts, strict=True)}, (
        x_test,
        y_test,
    )


def local_round(xgb: ModuleType, params: dict[str, Any], model: bytes, data: Data) -> bytes:
    """A node's training, as Flower's XGBoost ClientApp does it (one local round)."""
    train = xgb.DMatrix(data[0], label=data[1])
    if not model:
        booster = xgb.train(params, train, num_boost_round=1)
    else:
        booster = xgb.Booster(params=params)
        booster.load_model(bytearray(model))
        booster.update(train, booster.num_boosted_rounds())
        done = booster.num_boosted_rounds()
        booster = booster[done - 1 : done]
    return bytes(booster.save_raw("json"))


def to_record(model: bytes) -> ArrayRecord:
    return ArrayRecord([np.frombuffer(model, dtype=np.uint8)])


def answer(message: Message, model: bytes, num_examples: int) -> Message:
    metrics = MetricRecord({"num-examples": num_examples, "loss": 0.25})
    return Message(RecordDict({"arrays": to_record(model), "metrics": metrics}), reply_to=message)


def load(xgb: ModuleType, model: bytes) -> Any:
    booster = xgb.Booster()
    booster.load_model(bytearray(model))
    return booster


def margin(xgb: ModuleType, model: bytes, x: npt.NDArray[Any]) -> npt.NDArray[Any]:
    out: npt.NDArray[Any] = load(xgb, model).predict(xgb.DMatrix(x), output_margin=True)
    return out


def bagging_run(
    xgb: ModuleType, params: dict[str, Any], shards: dict[int, Data], x_test: npt.NDArray[Any]
) -> bytes:
    """ROUNDS rounds of FedXgbBagging, checking that each merged booster's margin is
    its base's plus what each merged reply's trees add."""
    strategy = FedXgbBagging()
    model = b""
    for server_round in range(1, ROUNDS + 1):
        messages = list(
            strategy.configure_train(server_round, to_record(model), ConfigRecord(), GRID)
        )
        replies = {}
        for message in messages:
            node = message.metadata.dst_node_id or 0
            sent = message.content["arrays"]
            assert isinstance(sent, ArrayRecord)
            trained = local_round(xgb, params, sent["0"].numpy().tobytes(), shards[node])
            replies[node] = trained
        arrays, metrics = strategy.aggregate_train(
            server_round,
            [answer(m, replies[m.metadata.dst_node_id or 0], 10) for m in reversed(messages)],
        )
        assert arrays is not None and metrics is not None and metrics["loss"] == 0.25
        merged = arrays["0"].numpy().tobytes()
        assert load(xgb, merged).num_boosted_rounds() == server_round * len(NODES)
        # Round 1 starts from node 1's booster whole; later rounds from the global one.
        base, added = (model, NODES) if model else (replies[NODES[0]], NODES[1:])
        expected = margin(xgb, base, x_test)
        expected += sum(trees_margin(xgb, replies[n], x_test) for n in added)
        np.testing.assert_allclose(margin(xgb, merged, x_test), expected, rtol=1e-5, atol=1e-5)
        model = merged
    return model


def trees_margin(xgb: ModuleType, model: bytes, x: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """What the booster's trees add to the margin (a zero base margin replaces the
    booster's intercept)."""
    booster = load(xgb, model)
    config = json.loads(booster.save_config())
    outputs = int(config["learner"]["learner_model_param"]["num_class"])
    zeros = np.zeros((len(x), outputs) if outputs > 1 else len(x))
    out: npt.NDArray[Any] = booster.predict(xgb.DMatrix(x, base_margin=zeros), output_margin=True)
    return out


def test_bagging_merges_real_boosters_that_beat_each_shards_own(xgb: ModuleType) -> None:
    shards, (x_test, y_test) = split(load_breast_cancer)
    merged = bagging_run(xgb, BINARY, shards, x_test)
    probability = load(xgb, merged).predict(xgb.DMatrix(x_test))
    merged_loss = log_loss(y_test, probability)
    merged_accuracy = np.mean((probability > 0.5) == y_test)
    size = ROUNDS * len(NODES)
    for node, (x, y) in shards.items():
        alone = xgb.train(BINARY, xgb.DMatrix(x, label=y), num_boost_round=size)
        own = alone.predict(xgb.DMatrix(x_test))
        assert merged_loss < log_loss(y_test, own), node
        assert merged_accuracy >= np.mean((own > 0.5) == y_test), node


def test_bagging_merges_multi_class_boosters(xgb: ModuleType) -> None:
    params = {"objective": "multi:softprob", "num_class": 10, "max_depth": 3, "nthread": 1}
    shards, (x_test, y_test) = split(load_digits)
    merged = bagging_run(xgb, params, shards, x_test)
    accuracy = np.mean(load(xgb, merged).predict(xgb.DMatrix(x_test)).argmax(axis=1) == y_test)
    assert accuracy > 0.8


def cyclic_round(xgb: ModuleType, model: bytes, data: Data) -> bytes:
    """A node's turn in cyclic training: one more boosting round on the whole model,
    which it sends back whole."""
    train = xgb.DMatrix(data[0], label=data[1])
    if not model:
        return bytes(xgb.train(BINARY, train, num_boost_round=1).save_raw("json"))
    booster = xgb.Booster(params=BINARY)
    booster.load_model(bytearray(model))
    booster.update(train, booster.num_boosted_rounds())
    return bytes(booster.save_raw("json"))


def test_cyclic_passes_a_real_booster_around(xgb: ModuleType) -> None:
    shards, (x_test, y_test) = split(load_breast_cancer)
    strategy = FedXgbCyclic()
    model, visited = b"", []
    for server_round in range(1, 2 * len(NODES) + 1):
        (message,) = strategy.configure_train(server_round, to_record(model), ConfigRecord(), GRID)
        node = message.metadata.dst_node_id or 0
        visited.append(node)
        trained = cyclic_round(xgb, model, shards[node])
        arrays, _ = strategy.aggregate_train(server_round, [answer(message, trained, 5)])
        assert arrays is not None
        model = arrays["0"].numpy().tobytes()
        assert model == trained
    assert visited[:3] == visited[3:] and sorted(visited[:3]) == list(NODES)
    probability = load(xgb, model).predict(xgb.DMatrix(x_test))
    assert load(xgb, model).num_boosted_rounds() == 2 * len(NODES)
    assert np.mean((probability > 0.5) == y_test) > 0.85
