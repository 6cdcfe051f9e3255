"""FedXgbBagging and FedXgbCyclic through `Strategy.start` on a real database, with
real xgboost boosters (the `xgboost` extra; these tests fail without it).

The nodes are a thread answering through the node's production reply path, training
on disjoint shards of breast_cancer as Flower's XGBoost apps do. Bagging starts from
an empty model and rejects a garbage reply with its reason on its row; cyclic, killed
after round 2 and resumed, visits the same nodes and ends with the same booster as an
uninterrupted run (its node order is checkpointed).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from flpg.app.message import Message
from flpg.app.records import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flpg.serverapp.grid import Grid
from flpg.serverapp.strategy.fedxgb_bagging import FedXgbBagging
from flpg.serverapp.strategy.fedxgb_cyclic import FedXgbCyclic
from flpg.serverapp.strategy.result import Result
from flpg.serverapp.strategy.strategy import Strategy
from flpg.states import RunStatus, node_channel
from flpg.store import runs as store_runs
from flpg.store.db import Connection, connect
from tests.db import _replies as reply_path

from ._answering import AnsweringNodes
from .conftest import Federation, create_run, make_federation
from .test_checkpoints import launch

PARAMS = {"objective": "binary:logistic", "eta": 0.1, "max_depth": 3, "nthread": 1}
CHUNK = 4096


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


Trainer = Callable[[bytes, int, int], bytes]
"""(received booster bytes, node index, round) -> the booster bytes to reply with."""


class XgbNodes(AnsweringNodes):
    """Answers train instructions with `trainer`'s booster and evaluate instructions
    with a metric; notes (run, round, node index) of every train instruction."""

    def __init__(self, url: str, node_ids: list[int], trainer: Trainer) -> None:
        super().__init__(url, node_ids, "xgb-nodes")
        self.trainer = trainer
        self.trained: list[tuple[int, int, int]] = []

    def answer(self, conn: Connection, msg: Message) -> None:
        index = self.node_ids.index(msg.metadata.dst_node_id or 0)
        config = msg.content["config"]
        assert isinstance(config, ConfigRecord)
        server_round = int(config["server-round"])  # type: ignore[arg-type]
        metrics = MetricRecord({"num-examples": 100 + index, "node": index})
        content = RecordDict({"metrics": metrics})
        if msg.metadata.message_type == "train":
            self.trained.append((msg.metadata.run_id, server_round, index))
            received = msg.content["arrays"]
            assert isinstance(received, ArrayRecord)
            booster = self.trainer(received["0"].numpy().tobytes(), index, server_round)
            content["arrays"] = ArrayRecord([np.frombuffer(booster, dtype=np.uint8)])
        reply = Message(content, reply_to=msg)
        reply_path.reply(
            conn, "t", int(msg.metadata.message_id or 0), msg.metadata.run_id, reply, CHUNK
        )

    def finish(self) -> None:
        self.stop.set()
        with connect(self.url) as conn:
            conn.execute("SELECT pg_notify(%s, '')", (node_channel(self.node_ids[0]),))
        self.join(10)
        assert not self.is_alive() and self.errors == []


def shards() -> list[tuple[Any, Any]]:
    x, y = load_breast_cancer(return_X_y=True)
    parts = np.array_split(np.random.default_rng(0).permutation(len(y)), 3)
    return [(x[p], y[p]) for p in parts]


def bagging_trainer(xgb: ModuleType) -> Trainer:
    """Flower's bagging ClientApp: one local round, the new trees sent back; node 2
    answers round 2 with bytes that are no booster."""
    data = shards()

    def train(model: bytes, index: int, server_round: int) -> bytes:
        if index == 2 and server_round == 2:
            return b"this is not a booster"
        matrix = xgb.DMatrix(data[index][0], label=data[index][1])
        if not model:
            return bytes(xgb.train(PARAMS, matrix, num_boost_round=1).save_raw("json"))
        booster = xgb.Booster(params=PARAMS)
        booster.load_model(bytearray(model))
        booster.update(matrix, booster.num_boosted_rounds())
        done = booster.num_boosted_rounds()
        return bytes(booster[done - 1 : done].save_raw("json"))

    return train


def cyclic_trainer(xgb: ModuleType) -> Trainer:
    """A cyclic ClientApp: one more boosting round on the whole model, sent back whole."""
    data = shards()

    def train(model: bytes, index: int, server_round: int) -> bytes:
        matrix = xgb.DMatrix(data[index][0], label=data[index][1])
        if not model:
            return bytes(xgb.train(PARAMS, matrix, num_boost_round=1).save_raw("json"))
        booster = xgb.Booster(params=PARAMS)
        booster.load_model(bytearray(model))
        booster.update(matrix, booster.num_boosted_rounds())
        return bytes(booster.save_raw("json"))

    return train


@pytest.fixture
def fed(conn: Connection, db_url: str) -> Federation:
    return make_federation(conn, db_url, n_selected=3)


@contextmanager
def nodes(fed: Federation, trainer: Trainer) -> Iterator[XgbNodes]:
    thread = XgbNodes(fed.url, fed.selected, trainer)
    thread.start()
    try:
        yield thread
    finally:
        thread.finish()


def empty_model() -> ArrayRecord:
    return ArrayRecord([np.frombuffer(b"", dtype=np.uint8)])


def run(url: str, run_id: int, strategy: Strategy, rounds: int) -> tuple[Result, bytes]:
    """One ServerApp's life: a new Grid, `start` for `rounds`; the final booster."""
    grid = Grid(url, run_id, poll=0.5, chunk_size=CHUNK)
    try:
        result = strategy.start(grid, empty_model(), num_rounds=rounds, timeout=60)
        return result, result.arrays["0"].numpy().tobytes()
    finally:
        grid.close()


def test_bagging_grows_the_booster_and_rejects_a_garbage_reply(
    conn: Connection, fed: Federation, xgb: ModuleType
) -> None:
    with nodes(fed, bagging_trainer(xgb)):
        launch(conn, fed.run_id)
        strategy = FedXgbBagging(min_available_nodes=3, fraction_evaluate=0.0)
        result, model = run(fed.url, fed.run_id, strategy, 3)
    booster = xgb.Booster()
    booster.load_model(bytearray(model))
    assert booster.num_boosted_rounds() == 3 + 2 + 3  # round 2 lost node 2's trees
    x, y = load_breast_cancer(return_X_y=True)
    assert np.mean((booster.predict(xgb.DMatrix(x)) > 0.5) == y) > 0.9
    assert result.train_metrics_clientapp[2]["node"] == pytest.approx((100 * 0 + 101) / 201)
    reasons = conn.execute(
        "SELECT rejected_reason FROM messages WHERE run_id = %s AND rejected_reason IS NOT NULL",
        [fed.run_id],
    ).fetchall()
    assert len(reasons) == 1 and reasons[0][0].startswith("not booster JSON")


def test_cyclic_resumed_after_round_2_continues_the_same_cycle(
    conn: Connection, fed: Federation, xgb: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    rounds = 5
    with nodes(fed, cyclic_trainer(xgb)) as thread:
        launch(conn, fed.run_id)
        _, straight = run(fed.url, fed.run_id, FedXgbCyclic(seed=3), rounds)

        run_id = create_run(conn, fed.selected, lr=0.1)
        launch(conn, run_id)
        run(fed.url, run_id, FedXgbCyclic(seed=3), 2)  # its ServerApp dies after round 2
        reason = "ServerApp was killed by SIGKILL"
        assert store_runs.finish(conn, run_id, RunStatus.FAILED, reason) == RunStatus.FAILED
        assert store_runs.resume(conn, run_id) == 2
        assert launch(conn, run_id) == 2
        capsys.readouterr()
        # A different seed: only the checkpointed order can give the same cycle.
        _, resumed = run(fed.url, run_id, FedXgbCyclic(seed=4), rounds)
        visits = thread.trained
    log = capsys.readouterr().out
    assert f"resuming FedXgbCyclic after round 2 of {rounds}, run {run_id} attempt 2" in log
    assert "round 3/5 train: 1 ok, 0 failed" in log and "round 2/5" not in log
    first = [index for r, _, index in visits if r == fed.run_id]
    second = [index for r, _, index in visits if r == run_id]
    assert sorted(first[:3]) == [0, 1, 2] and first[3:] == first[:2]
    assert second == first
    assert resumed == straight
