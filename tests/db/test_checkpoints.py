"""Checkpoints, automatic restarts and `resume`, against the real schema."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from flpg import bus
from flpg.app.records import ArrayRecord, RecordDict
from flpg.errors import InvalidState, StaleAttempt
from flpg.serverapp.grid import Grid
from flpg.store import runs as store_runs
from flpg.store.db import Connection

from .conftest import Federation, instruction, scalar


def launch(conn: Connection, run_id: int) -> int:
    """Claim and mark the run running as an exec would; returns the attempt."""
    claim = store_runs.claim_next(conn, "exec-test")
    assert claim is not None and claim.run_id == run_id
    assert store_runs.mark_running(conn, run_id, "exec-test", 4242)
    return claim.attempt


@pytest.fixture
def grid(fed: Federation, conn: Connection) -> Iterator[Grid]:
    launch(conn, fed.run_id)
    g = Grid(fed.url, fed.run_id, poll=0.5)
    try:
        yield g
    finally:
        g.close()


def arrays_of(value: float) -> ArrayRecord:
    return ArrayRecord(
        {"w": np.full((3, 4), value, dtype=np.float32), "b": np.arange(5, dtype=np.int64)}
    )


def test_checkpoint_round_trips_and_replaces_the_previous_one(
    conn: Connection, fed: Federation, grid: Grid
) -> None:
    assert grid.load_checkpoint() is None
    grid.save_checkpoint(1, arrays_of(1.0), {"train": {"1": {"loss": 0.5}}})
    grid.save_checkpoint(2, arrays_of(2.0), {"train": {"1": {"loss": 0.5}, "2": {"loss": 0.25}}})
    loaded = grid.load_checkpoint()
    assert loaded is not None
    assert (loaded.round, loaded.attempt) == (2, 1)
    assert list(loaded.arrays.keys()) == ["w", "b"]
    np.testing.assert_array_equal(loaded.arrays["w"].numpy(), np.full((3, 4), 2.0, np.float32))
    assert loaded.arrays["w"].numpy().dtype == np.float32
    np.testing.assert_array_equal(loaded.arrays["b"].numpy(), np.arange(5))
    assert loaded.metrics["train"]["2"] == {"loss": 0.25}
    # The first checkpoint's payloads were deleted with it: only the current two remain.
    assert scalar(conn, "SELECT count(*) FROM arrays WHERE run_id = %s", [fed.run_id]) == 2
    assert scalar(conn, "SELECT count(*) FROM checkpoints") == 1


def test_replacing_a_checkpoint_keeps_payloads_a_message_still_carries(
    conn: Connection, fed: Federation, grid: Grid
) -> None:
    grid.save_checkpoint(1, arrays_of(1.0))
    array_id = scalar(conn, "SELECT array_id FROM checkpoint_arrays WHERE array_name = 'w'")
    # Point a message at the checkpoint's array, as a broadcast reusing it would.
    (message_id,) = bus.send(conn, fed.run_id, [instruction(fed.selected[0], RecordDict())])
    conn.execute(
        "INSERT INTO message_arrays (message_id, record_name, position, array_name, array_id)"
        " VALUES (%s, 'arrays', 0, 'w', %s)",
        [message_id, array_id],
    )
    grid.save_checkpoint(2, arrays_of(2.0))
    assert scalar(conn, "SELECT count(*) FROM arrays WHERE id = %s", [array_id]) == 1
    assert scalar(conn, "SELECT count(*) FROM arrays WHERE run_id = %s", [fed.run_id]) == 3


def test_a_stale_attempt_cannot_save(conn: Connection, fed: Federation, grid: Grid) -> None:
    grid.save_checkpoint(1, arrays_of(1.0))
    conn.execute("UPDATE runs SET attempt = 2 WHERE id = %s", [fed.run_id])
    before = scalar(conn, "SELECT count(*) FROM arrays WHERE run_id = %s", [fed.run_id])
    with pytest.raises(StaleAttempt, match=f"run {fed.run_id} is no longer running as attempt 1"):
        grid.save_checkpoint(2, arrays_of(2.0))
    assert scalar(conn, "SELECT round FROM checkpoints WHERE run_id = %s", [fed.run_id]) == 1
    # Nothing half-written: the refused checkpoint's arrays went with it.
    assert scalar(conn, "SELECT count(*) FROM arrays WHERE run_id = %s", [fed.run_id]) == before


def test_a_failure_with_restarts_left_queues_the_next_attempt(
    conn: Connection, fed: Federation
) -> None:
    conn.execute("UPDATE runs SET max_restarts = 1 WHERE id = %s", [fed.run_id])
    attempt = launch(conn, fed.run_id)
    bus.send(conn, fed.run_id, [instruction(fed.selected[0])])
    assert store_runs.finish(conn, fed.run_id, "failed", "boom", attempt=attempt) == "pending"
    run = store_runs.get(conn, fed.run_id)
    assert (run.status, run.attempt, run.exec_id, run.finished_at) == ("pending", 2, None, None)
    assert run.reason == "restart 1 of 1 after: boom"
    # The failed attempt's undelivered message was cancelled, not left for the next.
    assert (
        scalar(conn, "SELECT state::text FROM messages WHERE run_id = %s", [fed.run_id])
        == "cancelled"
    )
    # A late outcome of the old attempt changes nothing.
    assert store_runs.finish(conn, fed.run_id, "failed", "late", attempt=1) is None
    # The second failure is final.
    attempt = launch(conn, fed.run_id)
    assert attempt == 2
    assert store_runs.finish(conn, fed.run_id, "failed", "boom again", attempt=2) == "failed"
    run = store_runs.get(conn, fed.run_id)
    assert (run.status, run.attempt, run.reason) == ("failed", 2, "boom again")


def test_a_stopped_run_is_not_restarted(conn: Connection, fed: Federation) -> None:
    conn.execute("UPDATE runs SET max_restarts = 3 WHERE id = %s", [fed.run_id])
    launch(conn, fed.run_id)
    assert store_runs.request_stop(conn, fed.run_id) == "stopping"
    assert store_runs.finish(conn, fed.run_id, "failed", "killed") == "failed"


def test_resume_requires_an_ended_run_with_a_checkpoint(
    conn: Connection, fed: Federation, grid: Grid
) -> None:
    with pytest.raises(InvalidState, match="is running; only failed or stopped runs"):
        store_runs.resume(conn, fed.run_id)
    store_runs.finish(conn, fed.run_id, "failed", "ServerApp was killed by SIGKILL")
    with pytest.raises(InvalidState, match="has no checkpoint"):
        store_runs.resume(conn, fed.run_id)
    assert store_runs.get(conn, fed.run_id).status == "failed"

    conn.execute(
        "UPDATE runs SET status = 'running', finished_at = NULL WHERE id = %s", [fed.run_id]
    )
    grid.save_checkpoint(3, arrays_of(3.0))
    store_runs.finish(conn, fed.run_id, "failed", "ServerApp was killed by SIGKILL")
    assert store_runs.resume(conn, fed.run_id) == 2
    run = store_runs.get(conn, fed.run_id)
    assert (run.status, run.attempt) == ("pending", 2)
    assert run.reason == "resumed after: ServerApp was killed by SIGKILL"
    events = [
        r[0]
        for r in conn.execute(
            "SELECT line FROM run_logs WHERE run_id = %s AND stream = 'event'", [fed.run_id]
        )
    ]
    assert "resumed after: ServerApp was killed by SIGKILL" in events

    launch(conn, fed.run_id)
    store_runs.finish(conn, fed.run_id, "finished", attempt=2)
    with pytest.raises(InvalidState, match="already finished"):
        store_runs.resume(conn, fed.run_id)


def test_an_ended_run_with_a_checkpoint_deletes_cleanly(
    conn: Connection, fed: Federation, grid: Grid
) -> None:
    grid.save_checkpoint(1, arrays_of(1.0))
    store_runs.finish(conn, fed.run_id, "finished")
    assert store_runs.delete_ended(conn, fed.run_id)
    for table in ("checkpoints", "checkpoint_arrays", "arrays", "array_chunks"):
        assert scalar(conn, f"SELECT count(*) FROM {table}") == 0, table
