"""The ServerApp's Grid against a real run row, real nodes and a thread acting as a node."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from flpg import bus
from flpg.app.message import ErrorCode, Message
from flpg.app.records import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flpg.errors import SelectionError
from flpg.serverapp.grid import Grid, NodesUnavailable
from flpg.states import node_channel
from flpg.store import messages as store_messages
from flpg.store import nodes as store_nodes
from flpg.store.db import Connection, Listener, connect
from tests.db import _replies as reply_path

from .conftest import Federation, create_run, scalar

POLL = 15.0
"""The grid's safety-net poll: long, so only a NOTIFY can make it answer promptly."""

PROMPT = 5.0
"""Bound on an answer that a NOTIFY wakes: well below `POLL`, and seconds above what a
loaded machine takes."""

SLACK = 2.0
"""Allowed lateness of a wait that ends at its timeout (a loaded machine)."""


@pytest.fixture
def grid(fed: Federation) -> Iterator[Grid]:
    g = Grid(fed.url, fed.run_id, poll=POLL)
    try:
        yield g
    finally:
        g.close()


class ThreadNode(threading.Thread):
    """A node worker in a thread: waits on NOTIFY, claims, answers with `x + node_id`."""

    def __init__(self, url: str, node_ids: list[int], delay: float = 0.0) -> None:
        super().__init__(daemon=True)
        self.url, self.node_ids, self.delay = url, node_ids, delay
        self.stop = threading.Event()
        self.answered: list[int] = []
        self.errors: list[BaseException] = []
        self.listener = Listener(
            url, [node_channel(n) for n in node_ids], application_name="fake-node-listen"
        )

    def run(self) -> None:
        try:
            with connect(self.url, application_name="fake-node") as conn:
                while not self.stop.is_set():
                    rows = store_messages.claim(
                        conn, worker="fake", node_ids=self.node_ids, lease=30, limit=10
                    )
                    if not rows:
                        self.listener.wait(POLL)
                        continue
                    time.sleep(self.delay)
                    for msg in bus.load(conn, rows):
                        x = msg.content["arrays"]["x"].numpy()
                        node = msg.metadata.dst_node_id
                        assert node is not None
                        content = RecordDict(
                            {
                                "arrays": ArrayRecord({"y": x + node}),
                                "metrics": MetricRecord({"node": node, "num-examples": 10}),
                            }
                        )
                        reply = Message(content, reply_to=msg)
                        message_id = int(msg.metadata.message_id or 0)
                        reply_path.reply(conn, "fake", message_id, msg.metadata.run_id, reply)
                        self.answered.append(message_id)
        except BaseException as exc:
            self.errors.append(exc)
        finally:
            self.listener.close()

    def finish(self) -> None:
        self.stop.set()
        with connect(self.url) as conn:  # wake it up
            conn.execute("SELECT pg_notify(%s, '')", (node_channel(self.node_ids[0]),))
        self.join(10)
        assert not self.is_alive()
        assert self.errors == []


def _messages(grid: Grid, node_ids: list[int], x: np.ndarray) -> list[Message]:
    content = RecordDict({"arrays": ArrayRecord({"x": x}), "config": ConfigRecord({"lr": 0.1})})
    return [grid.create_message(content, "train", n, group_id="1") for n in node_ids]


def test_get_node_ids_returns_online_selected_nodes(
    conn: Connection, fed: Federation, grid: Grid
) -> None:
    assert grid.get_node_ids() == sorted(fed.selected)
    store_nodes.set_offline(conn, [fed.selected[1]])
    assert grid.get_node_ids() == [fed.selected[0], fed.selected[2]]
    store_nodes.heartbeat(conn, [fed.selected[1]])
    assert grid.get_node_ids() == sorted(fed.selected)
    assert fed.outside not in grid.get_node_ids()  # online but not selected


def test_send_and_receive_returns_replies_promptly(fed: Federation, grid: Grid) -> None:
    node = ThreadNode(fed.url, fed.selected)
    node.start()
    try:
        x = np.arange(5, dtype=np.float32)
        t0 = time.monotonic()
        replies = grid.send_and_receive(_messages(grid, fed.selected, x), timeout=10)
        elapsed = time.monotonic() - t0
    finally:
        node.finish()
    assert elapsed < PROMPT, f"took {elapsed:.2f} s: not woken by NOTIFY (poll is {POLL} s)"
    assert sorted(r.metadata.src_node_id for r in replies) == sorted(fed.selected)  # type: ignore[type-var]
    for r in replies:
        assert r.has_content()
        assert r.metadata.run_id == grid.run_id
        assert r.metadata.group_id == "1"
        src = r.metadata.src_node_id
        assert src is not None
        np.testing.assert_array_equal(r.content["arrays"]["y"].numpy(), x + src)
        assert r.content["metrics"]["node"] == src
    # Each reply is handed out once.
    assert grid.pull_messages([r.metadata.reply_to_message_id for r in replies]) == []  # type: ignore[misc]


def test_receive_yields_replies_as_they_arrive(fed: Federation, grid: Grid) -> None:
    ids = grid.push_messages(_messages(grid, fed.selected[:2], np.zeros(3)))
    node = ThreadNode(fed.url, fed.selected[:1], delay=0.0)
    node.start()
    try:
        # The first reply is in before the stream starts: its 1 s timeout then only
        # bounds the wait for the second, which never comes.
        deadline = time.monotonic() + 30
        while not node.answered:
            assert time.monotonic() < deadline, "the node thread never answered"
            time.sleep(0.05)
        stream = grid.receive(ids, timeout=1.0)
        first = next(stream)
        assert first.metadata.src_node_id == fed.selected[0]
        t0 = time.monotonic()
        rest = list(stream)  # the second node never answers
        waited = time.monotonic() - t0
    finally:
        node.finish()
    assert rest == []
    assert waited < 1.0 + SLACK


def test_send_and_receive_without_replier_honours_timeout(fed: Federation, grid: Grid) -> None:
    t0 = time.monotonic()
    replies = grid.send_and_receive(_messages(grid, fed.selected, np.ones(2)), timeout=1.0)
    elapsed = time.monotonic() - t0
    assert replies == []
    assert 1.0 <= elapsed < 1.0 + SLACK


def test_send_and_receive_includes_expiry_error_replies(
    conn: Connection, fed: Federation, grid: Grid
) -> None:
    """A node that never answers: once the TTL passes the link's sweep answers for it,
    and the ServerApp has its reply at once (woken by the NOTIFY), not at its timeout.
    The TTL runs out by ageing the row in SQL once the message is sent."""
    content = RecordDict({"arrays": ArrayRecord({"x": np.ones(2)})})
    messages = [grid.create_message(content, "train", fed.selected[0], "1")]

    def sweep_later() -> None:
        with connect(fed.url) as c:
            deadline = time.monotonic() + 30
            while scalar(c, "SELECT count(*) FROM messages") == 0:
                assert time.monotonic() < deadline, "the message was never sent"
                time.sleep(0.05)
            c.execute("UPDATE messages SET deadline = now() - interval '1 s'")
            store_messages.expire(c, ErrorCode.MESSAGE_UNAVAILABLE)

    sweeper = threading.Thread(target=sweep_later)
    sweeper.start()
    t0 = time.monotonic()
    replies = grid.send_and_receive(messages, timeout=3 * POLL)
    elapsed = time.monotonic() - t0
    sweeper.join()
    assert [(r.metadata.src_node_id, r.error.code) for r in replies] == [
        (fed.selected[0], ErrorCode.MESSAGE_UNAVAILABLE)
    ]
    assert elapsed < PROMPT


def test_push_outside_selection_raises(fed: Federation, grid: Grid, conn: Connection) -> None:
    with pytest.raises(SelectionError):
        grid.push_messages(_messages(grid, [fed.selected[0], fed.outside], np.ones(1)))
    assert scalar(conn, "SELECT count(*) FROM messages") == 0


def test_wait_for_nodes(conn: Connection, fed: Federation, grid: Grid) -> None:
    assert grid.wait_for_nodes(3, timeout=0.1) == sorted(fed.selected)
    store_nodes.set_offline(conn, fed.selected[1:])
    t0 = time.monotonic()
    with pytest.raises(NodesUnavailable, match=r"needs 2 online node\(s\).*only 1"):
        grid.wait_for_nodes(2, timeout=1.0)
    elapsed = time.monotonic() - t0
    assert 1.0 <= elapsed < 1.0 + SLACK

    # A node coming online while waiting is picked up.
    def come_back() -> None:
        time.sleep(0.3)
        with connect(fed.url) as c:
            store_nodes.heartbeat(c, [fed.selected[2]])

    t = threading.Thread(target=come_back)
    t.start()
    assert grid.wait_for_nodes(2, timeout=30) == [fed.selected[0], fed.selected[2]]
    t.join()


def test_record_round_is_visible_in_sql(fed: Federation, grid: Grid, conn: Connection) -> None:
    grid.record_round(1, "train", MetricRecord({"loss": 0.5}), num_replies=3, num_failures=0)
    grid.record_round(1, "train", MetricRecord({"loss": 0.25}), num_replies=2, num_failures=1)
    row = conn.execute(
        "SELECT (metrics->>'loss')::float8, num_replies, num_failures FROM round_history"
        " WHERE run_id = %s AND round = 1 AND phase = 'train'",
        (fed.run_id,),
    ).fetchone()
    assert row == (0.25, 2, 1)
    assert (
        scalar(conn, "SELECT rounds_completed FROM run_history WHERE run_id = %s", (fed.run_id,))
        == 1
    )


def test_a_grid_cannot_take_another_runs_replies(fed: Federation, conn: Connection) -> None:
    """A hostile ServerApp that guesses another run's instruction ids through the public
    Grid API gets nothing, and the victim still receives every reply."""
    victim = Grid(fed.url, fed.run_id, poll=POLL)
    thief_run = create_run(conn, fed.selected[:1])
    thief = Grid(fed.url, thief_run, poll=POLL)
    node = ThreadNode(fed.url, fed.selected)
    node.start()
    try:
        ids = victim.push_messages(_messages(victim, fed.selected, np.ones(3)))
        rows = [int(i) for i in ids]
        answered = "SELECT count(*) FROM messages WHERE reply_to = ANY(%s) AND state = 'queued'"
        deadline = time.monotonic() + 60
        while scalar(conn, answered, (rows,)) < len(ids) and time.monotonic() < deadline:
            time.sleep(0.05)
        guesses = [str(i) for i in range(max(1, min(rows) - 5), max(rows) + 5)]
        assert thief.pull_messages(guesses) == []
        assert list(thief.receive(ids, timeout=0)) == []
        assert scalar(conn, answered, (rows,)) == len(ids)
        replies = victim.pull_messages(ids)
        assert sorted(m.metadata.reply_to_message_id or "" for m in replies) == sorted(ids)
    finally:
        node.finish()
        victim.close()
        thief.close()
