"""A stateful strategy's state survives a ServerApp that dies: FedAdam killed after
round 2 and resumed (`flpg resume`'s path: failed, resumed, launched again as
attempt 2, a new Grid and a new strategy) ends with exactly the arrays of an
uninterrupted run, because its moments were checkpointed and loaded back.

The nodes are a thread answering through the node's production reply path; a
checkpoint saved twice in a round (server evaluation adds metrics) links the
unchanged state arrays instead of writing them again.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from flpg.app.message import Message
from flpg.app.records import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flpg.serverapp.grid import Grid
from flpg.serverapp.strategy import FedAdam, Result, StrategyState
from flpg.serverapp.strategy.state import STATE_PREFIX, StateSaver, StateValue, split
from flpg.states import RunStatus, node_channel
from flpg.store import runs as store_runs
from flpg.store.db import Connection, connect
from tests.db import _replies as reply_path

from ._answering import AnsweringNodes
from .conftest import Federation, create_run, make_federation, scalar
from .test_checkpoints import launch

CHUNK = 64
ROUNDS = 4


class AnsweringNode(AnsweringNodes):
    """Answers every train instruction with `0.9 * x + offset(node, round)`, weighted
    unevenly; the third node answers round 2 with a wrongly shaped array."""

    def __init__(self, url: str, node_ids: list[int]) -> None:
        super().__init__(url, node_ids, "answering-node")

    def answer(self, conn: Connection, msg: Message) -> None:
        index = self.node_ids.index(msg.metadata.dst_node_id or 0)
        config = msg.content["config"]
        assert isinstance(config, ConfigRecord)
        server_round = int(config["server-round"])  # type: ignore[arg-type]
        rng = np.random.default_rng(10 * server_round + index)
        arrays: dict[str, Any] = {}
        received = msg.content["arrays"]
        assert isinstance(received, ArrayRecord)
        for name, array in received.items():
            x = array.numpy()
            arrays[name] = (0.9 * x + rng.normal(0.2 * index, 0.1, x.shape)).astype(x.dtype)
        if index == 2 and server_round == 2:
            arrays["w"] = np.zeros(3, np.float32)
        content = RecordDict(
            {
                "arrays": ArrayRecord(arrays),
                "metrics": MetricRecord({"num-examples": 1 + 3 * index, "loss": float(index)}),
            }
        )
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


class RecordingGrid(Grid):
    """A Grid that notes, for every checkpoint it saves, its round and the stored id of
    each array."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.saves: list[tuple[int, dict[str, int]]] = []

    def save_checkpoint(
        self, server_round: int, arrays: ArrayRecord, metrics: dict[str, Any] | None = None
    ) -> ArrayRecord:
        stored = super().save_checkpoint(server_round, arrays, metrics)
        ids = {}
        for name, array in stored.items():
            assert array.source is not None
            ids[name] = array.source.array_id
        self.saves.append((server_round, ids))
        return stored


@pytest.fixture
def fed(conn: Connection, db_url: str) -> Iterator[Federation]:
    federation = make_federation(conn, db_url, n_selected=3)
    node = AnsweringNode(db_url, federation.selected)
    node.start()
    try:
        yield federation
    finally:
        node.finish()


def initial() -> ArrayRecord:
    rng = np.random.default_rng(0)
    return ArrayRecord(
        {"w": rng.normal(0, 1, 50).astype(np.float32), "b": rng.normal(0, 1, 3).astype(np.float32)}
    )


def run_fedadam(url: str, run_id: int, rounds: int) -> tuple[Result, RecordingGrid]:
    """One ServerApp's life: a new Grid and a new FedAdam, `start` for `rounds`."""
    grid = RecordingGrid(url, run_id, poll=0.5, chunk_size=CHUNK)
    try:
        strategy = FedAdam(eta=0.05, min_available_nodes=3, fraction_evaluate=0.0)
        result = strategy.start(
            grid,
            initial(),
            num_rounds=rounds,
            timeout=30,
            evaluate_fn=lambda rnd, arrays: MetricRecord(
                {"norm": float(np.abs(arrays["w"].numpy()).sum())}
            ),
        )
        for array in result.arrays.values():
            array.numpy()  # read while the grid is open
        return result, grid
    finally:
        grid.close()


def test_fedadam_killed_after_round_2_and_resumed_ends_as_an_uninterrupted_run(
    conn: Connection, fed: Federation, capsys: pytest.CaptureFixture[str]
) -> None:
    launch(conn, fed.run_id)
    straight, _ = run_fedadam(fed.url, fed.run_id, ROUNDS)
    assert list(straight.arrays.keys()) == ["w", "b"]  # the model only

    run_id = create_run(conn, fed.selected, lr=0.1)
    launch(conn, run_id)
    run_fedadam(fed.url, run_id, 2)  # its ServerApp dies once round 2 is checkpointed
    reason = "ServerApp was killed by SIGKILL"
    assert store_runs.finish(conn, run_id, RunStatus.FAILED, reason) == RunStatus.FAILED
    assert store_runs.resume(conn, run_id) == 2
    assert launch(conn, run_id) == 2
    capsys.readouterr()
    resumed, _ = run_fedadam(fed.url, run_id, ROUNDS)
    log = capsys.readouterr().out
    assert f"resuming FedAdam after round 2 of {ROUNDS}, run {run_id} attempt 2" in log
    assert "round 3/4 train: 3 ok, 0 failed" in log
    assert "round 1/4" not in log and "round 2/4" not in log  # only the rounds left

    for name in ("w", "b"):
        np.testing.assert_array_equal(resumed.arrays[name].numpy(), straight.arrays[name].numpy())
    assert resumed.train_metrics_clientapp.keys() == {1, 2, 3, 4}
    # Round 2's wrongly shaped reply was left out, with its reason on its row.
    reasons = conn.execute(
        "SELECT rejected_reason FROM messages WHERE run_id = %s AND rejected_reason IS NOT NULL",
        [run_id],
    ).fetchall()
    assert [r[0] for r in reasons] == ["array 'w' is float32[3], the global model's is float32[50]"]
    # The checkpoint holds the moments beside the model, in the model's dtype.
    names = [
        r[0]
        for r in conn.execute(
            "SELECT array_name FROM checkpoint_arrays WHERE run_id = %s ORDER BY position",
            [run_id],
        )
    ]
    assert names == ["w", "b"] + [f"{STATE_PREFIX}{m}/{n}" for m in ("m_t", "v_t") for n in "wb"]


def test_a_round_saved_twice_links_its_unchanged_state_instead_of_writing_it(
    conn: Connection, fed: Federation
) -> None:
    launch(conn, fed.run_id)
    _, grid = run_fedadam(fed.url, fed.run_id, 3)
    saves = grid.saves
    assert [r for r, _ in saves] == [0, 1, 1, 2, 2, 3, 3]
    state = [n for n in saves[-1][1] if n.startswith(STATE_PREFIX)]
    assert len(state) == 4
    by_round: dict[int, list[dict[str, int]]] = {}
    for server_round, ids in saves:
        by_round.setdefault(server_round, []).append(ids)
    for server_round in (1, 2, 3):
        after_train, after_evaluation = by_round[server_round]
        assert after_train == after_evaluation  # the second save wrote nothing new
    for name in state:  # ...while each round's new moments were written
        assert by_round[2][0][name] != by_round[3][0][name]
    rows = scalar(conn, "SELECT count(*) FROM checkpoint_arrays WHERE run_id = %s", [fed.run_id])
    assert rows == 6


def test_state_values_and_arrays_come_back_from_the_database_as_they_were_saved(
    conn: Connection, fed: Federation
) -> None:
    launch(conn, fed.run_id)
    values: dict[str, StateValue] = {
        "clip": 0.1,
        "one": 1.0,
        "count": 3,
        "big": 2**53 + 1,
        "on": False,
        "s": "é",
        "n": None,
    }
    given = StrategyState(
        arrays={"m": ArrayRecord({"w": np.arange(5, dtype=np.float64) / 3, "i": np.arange(3)})},
        values=values,
    )
    content, doc = StateSaver().content(initial(), given, {"train_metrics_clientapp": {}})
    grid = Grid(fed.url, fed.run_id, chunk_size=CHUNK)
    try:
        grid.save_checkpoint(1, content, doc)
        checkpoint = grid.load_checkpoint()
        assert checkpoint is not None
        model, state = split(checkpoint.arrays, checkpoint.metrics)
        assert list(model.keys()) == ["w", "b"] and state is not None
        assert state.values == values
        assert {k: type(v) for k, v in state.values.items()} == {
            k: type(v) for k, v in values.items()
        }
        assert list(state.arrays) == ["m"] and list(state.arrays["m"].keys()) == ["w", "i"]
        for name, array in state.arrays["m"].items():
            original = given.arrays["m"][name].numpy()
            assert array.numpy().dtype == original.dtype
            np.testing.assert_array_equal(array.numpy(), original)
    finally:
        grid.close()
