"""FedBuff on a real Grid: the server keeps updating while a slow node trains, the slow
node's stale reply counts with its staleness weight, and a resumed run ignores the
previous attempt's in-flight work.

The ServerApp (FedBuff.start) runs in a thread; the test answers as the nodes, one
reply at a time through the node's production reply path, so which replies form each
server update is fixed by the script, and the final model is checked against a numpy
reference of the same script. Nothing here is timed: progress is read from the
checkpoint, round records and message states.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from flpg import bus
from flpg.app.message import Error, Message
from flpg.app.records import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flpg.errors import LeaseLost
from flpg.serverapp.grid import Grid
from flpg.serverapp.strategy.fedbuff import FedBuff
from flpg.serverapp.strategy.result import Result
from flpg.serverapp.strategy.strategy import TooFewReplies
from flpg.states import RunStatus
from flpg.store import messages as store_messages
from flpg.store import runs as store_runs
from flpg.store.db import Connection
from tests.db import _replies as reply_path

from .conftest import Federation, make_federation, scalar
from .test_checkpoints import launch

CHUNK = 1000
SIZE = 700
RATE = 0.8
DELTA = {0: 1.0, 1: 2.0, 2: 10.0}  # node index -> what its training adds
EXAMPLES = {0: 1, 1: 3, 2: 2}
WAIT = 20.0


@pytest.fixture
def fed(conn: Connection, db_url: str) -> Federation:
    return make_federation(conn, db_url, n_selected=3)


def x0() -> npt.NDArray[np.float32]:
    return (np.arange(SIZE) * 1e-3).astype(np.float32)


class ServerThread(threading.Thread):
    """`FedBuff.start` on its own Grid, as a ServerApp runs it."""

    def __init__(
        self,
        fed: Federation,
        strategy: FedBuff,
        rounds: int,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
    ) -> None:
        super().__init__(daemon=True)
        self.fed, self.strategy, self.rounds = fed, strategy, rounds
        self.evaluate_fn = evaluate_fn
        self.result: Result | None = None
        self.final: npt.NDArray[Any] | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        grid = Grid(self.fed.url, self.fed.run_id, poll=0.5, chunk_size=CHUNK)
        try:
            self.result = self.strategy.start(
                grid,
                ArrayRecord({"w": x0()}),
                num_rounds=self.rounds,
                timeout=WAIT,
                evaluate_fn=self.evaluate_fn,
            )
            self.final = self.result.arrays["w"].numpy()
        except BaseException as exc:
            self.error = exc
        finally:
            grid.close()

    def finish(self) -> Result:
        self.join(WAIT)
        assert not self.is_alive() and self.error is None, self.error
        assert self.result is not None
        return self.result


def until(what: str, found: Callable[[], Any]) -> Any:
    """Wait for a condition of the database (not a timing assertion)."""
    deadline = time.monotonic() + WAIT
    while not (value := found()):
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.02)
    return value


def claim(conn: Connection, node: int) -> Message:
    """The next instruction for `node` (waits until there is one)."""
    rows = until(
        f"an instruction for node {node}",
        lambda: store_messages.claim(conn, worker="t", node_ids=[node], lease=60, limit=1),
    )
    (msg,) = bus.load(conn, rows)
    return msg


def answer(conn: Connection, fed: Federation, msg: Message) -> int:
    """Reply `base + DELTA`, then wait until the ServerApp took the reply; the model
    version the instruction carried."""
    index = fed.selected.index(msg.metadata.dst_node_id or 0)
    config = msg.content["config"]
    arrays = msg.content["arrays"]
    assert isinstance(config, ConfigRecord) and isinstance(arrays, ArrayRecord)
    base = arrays["w"].numpy()
    content = RecordDict(
        {
            "arrays": ArrayRecord({"w": (base + DELTA[index]).astype(np.float32)}),
            "metrics": MetricRecord({"num-examples": EXAMPLES[index], "loss": float(index)}),
        }
    )
    reply_id = reply_path.reply(
        conn, "t", int(msg.metadata.message_id or 0), fed.run_id, Message(content, reply_to=msg)
    )
    until(
        "the ServerApp to take the reply",
        lambda: scalar(conn, "SELECT state = 'done' FROM messages WHERE id = %s", [reply_id]),
    )
    version = int(config["model-version"])  # type: ignore[arg-type]
    assert config["server-round"] == version + 1
    return version


class Reference:
    """The FedBuff update rule in numpy, fed the same replies in the same order."""

    def __init__(self, buffer_size: int) -> None:
        self.versions = [x0()]
        self.buffer_size = buffer_size
        self.pending: list[tuple[int, int]] = []
        self.staleness: list[list[int]] = []

    def reply(self, index: int, version: int) -> None:
        self.pending.append((index, version))
        if len(self.pending) < self.buffer_size:
            return
        current = len(self.versions) - 1
        x = self.versions[-1].astype(np.float64)
        total = np.zeros(SIZE)
        for i, v in self.pending:
            y = (self.versions[v] + DELTA[i]).astype(np.float32).astype(np.float64)
            s = (1 + current - v) ** -0.5
            total += EXAMPLES[i] * s * (y - self.versions[v].astype(np.float64))
        examples = sum(EXAMPLES[i] for i, _ in self.pending)
        self.versions.append((x + RATE * total / examples).astype(np.float32))
        self.staleness.append(sorted(current - v for _, v in self.pending))
        self.pending = []


def round_staleness(conn: Connection, run_id: int) -> dict[int, float]:
    rows = conn.execute(
        "SELECT round, (metrics->>'staleness-max')::float8 FROM round_metrics "
        "WHERE run_id = %s AND phase = 'train' ORDER BY round",
        [run_id],
    ).fetchall()
    return {int(r): float(m) for r, m in rows}


def test_updates_go_on_without_the_slow_node_and_its_stale_reply_is_weighted_down(
    conn: Connection, fed: Federation, capsys: pytest.CaptureFixture[str]
) -> None:
    launch(conn, fed.run_id)
    fast_a, fast_b, slow = fed.selected
    strategy = FedBuff(buffer_size=2, concurrency=3, server_learning_rate=RATE)
    held: dict[int, list[tuple[int, bool]]] = {}

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        """Reads the model (as an app's evaluation does), then notes which versions
        FedBuff holds for in-flight nodes and whether any holds its values in memory."""
        value = float(arrays["w"].numpy().sum())
        versions = strategy._versions
        if versions is None:  # round 0: the initial model, before any dispatch
            return MetricRecord({"sum": value})
        held[server_round] = [
            (v, any(a.in_memory for a in versions.get(v).values())) for v in versions.kept()
        ]
        return MetricRecord({"sum": value})

    server = ServerThread(fed, strategy, rounds=4, evaluate_fn=evaluate_fn)
    server.start()
    ref = Reference(buffer_size=2)
    slow_msg = claim(conn, slow)  # the slow node takes version 0 and trains for long
    for _ in range(3):  # three updates from the fast nodes alone
        for node in (fast_a, fast_b):
            ref.reply(fed.selected.index(node), answer(conn, fed, claim(conn, node)))
    assert until("checkpoint 3", lambda: scalar(conn, "SELECT round FROM checkpoints") == 3 or None)
    assert (
        scalar(conn, "SELECT state FROM messages WHERE id = %s", [slow_msg.metadata.message_id])
        == "claimed"
    ), "the server waited for the slow node"
    # The slow node's reply from version 0 arrives at version 3: staleness 3.
    ref.reply(2, answer(conn, fed, slow_msg))
    ref.reply(0, answer(conn, fed, claim(conn, fast_a)))
    result = server.finish()

    assert max(ref.staleness[-1]) == 3 and max(max(s) for s in ref.staleness[:3]) <= 1
    assert server.final is not None
    np.testing.assert_allclose(server.final, ref.versions[-1], rtol=1e-6)
    unweighted = ref.versions[3] + RATE * (2 * 10.0 + 1 * 1.0) / 3
    assert not np.allclose(server.final, unweighted, rtol=1e-3), "staleness was not weighted"
    assert round_staleness(conn, fed.run_id) == {
        r: float(max(s)) for r, s in enumerate(ref.staleness, 1)
    }
    assert result.train_metrics_clientapp[4]["staleness-max"] == 3
    # Versions still in flight are kept, stored (never in memory), the rest dropped:
    # after update 3 the slow node still trains from version 0.
    assert held[3] == [(0, False), (2, False), (3, False)]
    assert all(len(kept) <= 3 + 1 and not any(m for _, m in kept) for kept in held.values())
    assert result.train_metrics_clientapp[4]["loss"] == pytest.approx((2 * 2.0 + 1 * 0.0) / 3)
    log = capsys.readouterr().out
    assert f"round 4/4 train: 2 ok, 0 failed, staleness {ref.staleness[-1]}" in log
    # No more than concurrency instructions were ever in flight at once per node.
    per_node = conn.execute(
        "SELECT dst_node_id, count(*) FILTER (WHERE state IN ('queued', 'claimed')) "
        "FROM messages WHERE run_id = %s AND reply_to IS NULL GROUP BY dst_node_id",
        [fed.run_id],
    ).fetchall()
    assert all(open_ <= 1 for _, open_ in per_node)


def test_a_resumed_run_continues_from_its_checkpoint_without_the_old_in_flight_work(
    conn: Connection, fed: Federation, capsys: pytest.CaptureFixture[str]
) -> None:
    launch(conn, fed.run_id)
    fast_a, fast_b, slow = fed.selected
    first = ServerThread(fed, FedBuff(buffer_size=2, concurrency=2, server_learning_rate=RATE), 1)
    first.start()
    ref = Reference(buffer_size=2)
    for node in (fast_a, fast_b):
        ref.reply(fed.selected.index(node), answer(conn, fed, claim(conn, node)))
    first.finish()
    leftover = claim(conn, fast_a)  # sent when fast_a's first reply was buffered
    reason = "ServerApp was killed by SIGKILL"
    assert store_runs.finish(conn, fed.run_id, RunStatus.FAILED, reason) == RunStatus.FAILED
    assert store_runs.resume(conn, fed.run_id) == 2
    assert launch(conn, fed.run_id) == 2
    capsys.readouterr()

    second = ServerThread(fed, FedBuff(buffer_size=2, concurrency=2, server_learning_rate=RATE), 2)
    second.start()
    new_b = claim(conn, fast_b)
    # The run's end cancelled the old attempt's instruction: its reply cannot count.
    with pytest.raises(LeaseLost):
        reply_path.reply(
            conn,
            "t",
            int(leftover.metadata.message_id or 0),
            fed.run_id,
            Message(RecordDict({"metrics": MetricRecord({"num-examples": 1})}), reply_to=leftover),
        )
    ref.reply(1, answer(conn, fed, new_b))
    ref.reply(1, answer(conn, fed, claim(conn, fast_b)))
    second.finish()
    assert second.final is not None
    np.testing.assert_allclose(second.final, ref.versions[-1], rtol=1e-6)
    assert (
        scalar(conn, "SELECT state FROM messages WHERE id = %s", [leftover.metadata.message_id])
        == "cancelled"
    )
    log = capsys.readouterr().out
    assert f"resuming FedBuff after round 1 of 2, run {fed.run_id} attempt 2" in log
    assert "round 2/2 train: 2 ok, 0 failed, staleness [0, 0]" in log
    assert scalar(conn, "SELECT round FROM checkpoints WHERE run_id = %s", [fed.run_id]) == 2
    del slow


def answer_with(
    conn: Connection, fed: Federation, msg: Message, content: RecordDict | None
) -> None:
    """Reply `content`, or an error reply if None."""
    message_id = int(msg.metadata.message_id or 0)
    if content is None:
        reply_id = reply_path.error_reply(conn, "t", message_id, Error(0, "out of memory"))
    else:
        reply_id = reply_path.reply(
            conn, "t", message_id, fed.run_id, Message(content, reply_to=msg)
        )
    until(
        "the ServerApp to take the reply",
        lambda: scalar(conn, "SELECT state = 'done' FROM messages WHERE id = %s", [reply_id]),
    )


def round_rows(conn: Connection, run_id: int) -> list[tuple[int, int, int]]:
    rows = conn.execute(
        "SELECT round, num_replies, num_failures FROM round_metrics "
        "WHERE run_id = %s AND phase = 'train' ORDER BY round",
        [run_id],
    ).fetchall()
    return [(int(r), int(ok), int(failed)) for r, ok, failed in rows]


@pytest.fixture
def fed2(conn: Connection, db_url: str) -> Federation:
    return make_federation(conn, db_url, n_selected=2)


def test_a_failed_node_sits_out_the_update_and_unusable_replies_are_rejected(
    conn: Connection, fed2: Federation, capsys: pytest.CaptureFixture[str]
) -> None:
    launch(conn, fed2.run_id)
    node_a, node_b = fed2.selected
    server = ServerThread(fed2, FedBuff(buffer_size=2), rounds=2)
    server.start()
    answer_with(conn, fed2, claim(conn, node_a), None)
    for _ in range(2):  # node_b fills update 1 alone; node_a gets no work meanwhile
        answer(conn, fed2, claim(conn, node_b))
    wrong = RecordDict(
        {
            "arrays": ArrayRecord({"w": np.zeros(3, np.float32)}),
            "metrics": MetricRecord({"num-examples": 5}),
        }
    )
    answer_with(conn, fed2, claim(conn, node_a), wrong)  # back at work after update 1
    for _ in range(2):
        answer(conn, fed2, claim(conn, node_b))
    server.finish()
    assert round_rows(conn, fed2.run_id) == [(1, 2, 1), (2, 2, 1)]
    reasons = conn.execute(
        "SELECT src_node_id, rejected_reason FROM messages WHERE run_id = %s "
        "AND rejected_reason IS NOT NULL",
        [fed2.run_id],
    ).fetchall()
    assert reasons == [(node_a, f"array 'w' is float32[3], the global model's is float32[{SIZE}]")]
    log = capsys.readouterr().out
    assert f"round 1/2 train failure: node {node_a}: out of memory" in log


def test_an_update_every_online_node_failed_ends_the_run_with_its_tally_recorded(
    conn: Connection, fed2: Federation
) -> None:
    launch(conn, fed2.run_id)
    server = ServerThread(fed2, FedBuff(buffer_size=2), rounds=2)
    server.start()
    for node in fed2.selected:
        answer_with(conn, fed2, claim(conn, node), None)
    server.join(WAIT)
    assert isinstance(server.error, TooFewReplies)
    assert "every online node failed this round" in str(server.error)
    assert round_rows(conn, fed2.run_id) == [(1, 0, 2)]
    assert scalar(conn, "SELECT round FROM checkpoints WHERE run_id = %s", [fed2.run_id]) == 0
