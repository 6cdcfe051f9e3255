"""A send retried after a lost connection inserts nothing twice.

The Grid talks to PostgreSQL through a TCP proxy that lets the statement inserting
the messages run and commit, then drops the connection before the answer reaches
the Grid: the Grid reconnects and sends again, as after any lost connection.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from flpg import bus
from flpg.app.message import Message
from flpg.app.records import ArrayRecord, ConfigRecord, RecordDict
from flpg.serverapp.grid import Grid
from flpg.store.db import Connection, connect

from ._proxy import CuttingProxy
from .conftest import Federation, instruction, scalar

INSERT_MARKER = b"INSERT INTO messages (id, run_id, dst_node_id"
"""Text of the statement that inserts a send's instructions (sql/messages.sql)."""


@pytest.fixture
def proxy(fed: Federation) -> Iterator[CuttingProxy]:
    p = CuttingProxy(fed.url)
    try:
        yield p
    finally:
        p.close()


def _messages(grid: Grid, node_ids: list[int], round_: int) -> list[Message]:
    content = RecordDict(
        {
            "arrays": ArrayRecord({"x": np.arange(6, dtype=np.float32) + round_}),
            "config": ConfigRecord({"round": round_}),
        }
    )
    return [grid.create_message(content, "train", n, group_id=str(round_)) for n in node_ids]


def _instructions(conn: Connection, run_id: int) -> list[tuple[int, int, str]]:
    return [
        (int(i), int(d), str(g))
        for i, d, g in conn.execute(
            "SELECT id, dst_node_id, group_id FROM messages"
            " WHERE run_id = %s AND reply_to IS NULL ORDER BY id",
            [run_id],
        ).fetchall()
    ]


def test_a_send_whose_commit_was_not_acknowledged_is_not_repeated(
    conn: Connection, fed: Federation, proxy: CuttingProxy
) -> None:
    grid = Grid(proxy.url, fed.run_id, poll=1.0)
    try:
        proxy.arm(INSERT_MARKER)
        first = _messages(grid, fed.selected, 1)
        ids = grid.push_messages(first)
        # The same grid goes on working on its new connection.
        again = grid.push_messages(_messages(grid, fed.selected, 2))
    finally:
        grid.close()

    # The insert ran to its end on the server (CommandComplete, ReadyForQuery: its
    # implicit transaction committed), and the grid heard none of it.
    assert len(proxy.cuts) == 1
    assert b"C" in proxy.held_back[0] and proxy.held_back[0].endswith(b"Z")

    stored = _instructions(conn, fed.run_id)
    assert len(stored) == 2 * len(fed.selected), stored
    assert [i for i, _, _ in stored] == sorted(int(i) for i in ids + again)
    assert [(d, g) for i, d, g in stored if str(i) in ids] == [(n, "1") for n in fed.selected]
    assert [m.metadata.message_id for m in first] == ids
    # Each instruction carries its array once; the arrays of the retry were not linked.
    assert scalar(
        conn,
        "SELECT count(*) FROM message_arrays ma JOIN messages m ON m.id = ma.message_id"
        " WHERE m.run_id = %s",
        [fed.run_id],
    ) == len(stored)


def test_sends_with_the_same_content_are_distinct_messages(
    conn: Connection, fed: Federation
) -> None:
    """Idempotency is per send, not per content: pushing equal messages twice sends twice."""
    grid = Grid(fed.url, fed.run_id, poll=1.0)
    try:
        a = grid.push_messages(_messages(grid, fed.selected[:1], 1))
        b = grid.push_messages(_messages(grid, fed.selected[:1], 1))
    finally:
        grid.close()
    assert len(set(a + b)) == 2
    assert len(_instructions(conn, fed.run_id)) == 2


def test_a_retry_that_overtakes_its_first_try_waits_for_it_and_inserts_nothing(
    conn: Connection, fed: Federation
) -> None:
    """The first try is still in flight on the server (its transaction open) when the
    retry arrives: the retry waits for its outcome, then answers the rows it committed."""
    key = "retry-race"
    with connect(fed.url) as first, connect(fed.url) as retry:
        retry_pid = int(scalar(retry, "SELECT pg_backend_pid()"))
        answers: list[list[int]] = []
        with first.transaction():
            ids = bus.send(first, fed.run_id, [instruction(n) for n in fed.selected], send_key=key)
            racer = threading.Thread(
                target=lambda: answers.append(
                    bus.send(
                        retry, fed.run_id, [instruction(n) for n in fed.selected], send_key=key
                    )
                )
            )
            racer.start()
            deadline = time.monotonic() + 10
            while not scalar(
                conn,
                "SELECT count(*) FROM pg_stat_activity WHERE pid = %s AND wait_event_type = 'Lock'",
                [retry_pid],
            ):
                assert time.monotonic() < deadline, "the retry never waited for the first try"
                time.sleep(0.02)
        racer.join(30)
    assert answers == [ids]
    assert [i for i, _, _ in _instructions(conn, fed.run_id)] == ids
