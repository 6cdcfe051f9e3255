"""Crash recovery of round-transient payloads, against the real schema. A crash empties
the UNLOGGED tables; here the test empties them itself (as a crash would: every
transient chunk and the marker row gone), then checks what holds until the link
recovers and what its recovery does. tests/faults/test_database_crash.py crashes a
real server under a running federation."""

from __future__ import annotations

import numpy as np
import pytest

from flpg import bus
from flpg.app.records import ArrayRecord, RecordDict
from flpg.errors import PayloadCorrupt, StaleAttempt
from flpg.link.worker import LinkWorker
from flpg.serverapp.grid import Grid
from flpg.store import checkpoints as store_checkpoints
from flpg.store import messages as store_messages
from flpg.store import payloads as store_payloads
from flpg.store import recovery
from flpg.store import runs as store_runs
from flpg.store.db import Connection
from flpg.store.messages import MessageRow

from .conftest import Federation, instruction, scalar
from .test_checkpoints import arrays_of, launch


def crash(conn: Connection) -> None:
    """What a crash leaves of the unlogged tables: nothing."""
    conn.execute("TRUNCATE array_chunks_transient, transient_marker")


def broadcast(conn: Connection, fed: Federation) -> list[int]:
    content = RecordDict({"arrays": ArrayRecord({"w": np.arange(10.0)})})
    return bus.send(conn, fed.run_id, [instruction(node, content) for node in fed.selected])


def test_broadcasts_are_transient_and_a_checkpoint_makes_what_it_keeps_durable(
    conn: Connection, fed: Federation
) -> None:
    launch(conn, fed.run_id)
    ids = broadcast(conn, fed)
    array_id = scalar(conn, "SELECT array_id FROM message_arrays WHERE message_id = %s", [ids[0]])
    assert scalar(conn, "SELECT durable FROM arrays WHERE id = %s", [array_id]) is False
    assert scalar(conn, "SELECT count(*) FROM array_chunks_transient") == 1
    # A checkpoint that keeps a stored array links its row (Grid.save_checkpoint does so
    # for `Array.stored`); its chunk moves to the WAL-logged table in that transaction.
    store_checkpoints.save(conn, fed.run_id, 1, 1, [("w", array_id)], {})
    assert scalar(conn, "SELECT durable FROM arrays WHERE id = %s", [array_id]) is True
    assert scalar(conn, "SELECT count(*) FROM array_chunks_transient") == 0
    assert scalar(conn, "SELECT count(*) FROM array_chunks WHERE array_id = %s", [array_id]) == 1
    crash(conn)
    (ref,) = store_checkpoints.array_refs(conn, fed.run_id)
    np.testing.assert_array_equal(store_payloads.read(conn, [ref])[array_id], np.arange(10.0))


def claimed(conn: Connection, node_id: int) -> list[MessageRow]:
    """The node's queued instructions, claimed."""
    return store_messages.claim(conn, worker="w", node_ids=[node_id], lease=60, limit=100)


def test_until_the_link_recovers_nothing_is_saved_or_ended(
    conn: Connection, fed: Federation
) -> None:
    attempt = launch(conn, fed.run_id)
    grid = Grid(fed.url, fed.run_id, poll=0.5)
    try:
        grid.save_checkpoint(1, arrays_of(1.0))
        broadcast(conn, fed)
        crash(conn)
        assert recovery.needed(conn)
        with pytest.raises(StaleAttempt, match="PostgreSQL crashed"):
            grid.save_checkpoint(2, arrays_of(2.0))
        assert store_runs.finish(conn, fed.run_id, "finished", None, attempt=attempt) is None
        assert store_runs.get(conn, fed.run_id).status == "running"
        assert scalar(conn, "SELECT round FROM checkpoints WHERE run_id = %s", [fed.run_id]) == 1
    finally:
        grid.close()


def test_the_link_marks_lost_payloads_and_restarts_their_runs(
    conn: Connection, fed: Federation
) -> None:
    launch(conn, fed.run_id)
    grid = Grid(fed.url, fed.run_id, poll=0.5)
    try:
        grid.save_checkpoint(1, arrays_of(1.0))
    finally:
        grid.close()
    ids = broadcast(conn, fed)
    crash(conn)

    swept = LinkWorker(fed.url).sweep_once()
    assert swept["runs_recovered"] == 1
    run = store_runs.get(conn, fed.run_id)
    assert (run.status, run.attempt, run.exec_id) == ("pending", 2, None)
    assert run.reason == (
        "PostgreSQL crashed and lost round-transient payloads of attempt 1;"
        " queued again as attempt 2, from its last checkpoint"
    )
    # Its own restarts are not used up by the crash.
    assert scalar(conn, "SELECT max_restarts FROM runs WHERE id = %s", [fed.run_id]) == 1
    states = conn.execute(
        "SELECT DISTINCT state::text FROM messages WHERE id = ANY(%s)", [ids]
    ).fetchall()
    assert states == [("cancelled",)]
    lost = scalar(
        conn,
        "SELECT count(*) FROM arrays WHERE run_id = %s AND lost_at IS NOT NULL"
        " AND collected_at IS NOT NULL AND NOT durable",
        [fed.run_id],
    )
    assert lost == 1
    # The checkpoint (durable) survived; the marker is back; a second sweep does nothing.
    assert scalar(conn, "SELECT count(*) FROM array_chunks") == 2
    assert not recovery.needed(conn)
    assert LinkWorker(fed.url).sweep_once()["runs_recovered"] == 0
    event = scalar(
        conn,
        "SELECT line FROM run_logs WHERE run_id = %s AND stream = 'event' ORDER BY id DESC LIMIT 1",
        [fed.run_id],
    )
    assert event == run.reason


def test_a_lost_payload_is_refused_by_name(conn: Connection, fed: Federation) -> None:
    launch(conn, fed.run_id)
    broadcast(conn, fed)
    rows = claimed(conn, fed.selected[0])
    crash(conn)
    assert recovery.recover(conn) is not None
    with pytest.raises(
        PayloadCorrupt, match=r"\['w'\] of message \d+ was lost: PostgreSQL crashed"
    ):
        bus.load(conn, rows)


def test_writes_after_the_restart_are_not_lost(conn: Connection, fed: Federation) -> None:
    launch(conn, fed.run_id)
    crash(conn)
    broadcast(conn, fed)  # written after the crash, before the link recovered
    found = recovery.recover(conn)
    assert found is not None and (found.lost_arrays, found.runs) == (0, [])
    assert store_runs.get(conn, fed.run_id).status == "running"
    (msg,) = bus.load(conn, claimed(conn, fed.selected[0]))
    np.testing.assert_array_equal(msg.content.array_records["arrays"]["w"].numpy(), np.arange(10.0))
