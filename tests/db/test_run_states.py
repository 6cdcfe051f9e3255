"""Every run and message state has a way out: claims one run at a time, the link takes
back runs an exec never launched, `stop` acts in every state that has not ended, and
an ended run leaves no reply queued (racing sessions included)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from flpg import bus
from flpg.errors import InvalidState, LeaseLost, NotFound
from flpg.link.worker import LAUNCH, LinkWorker
from flpg.settings import Intervals
from flpg.states import EXEC_CHANNEL
from flpg.store import messages as store_messages
from flpg.store import migrate
from flpg.store import runs as store_runs
from flpg.store.db import Connection, Listener, connect
from flpg.store.messages import NewReply
from tests.db import _replies as reply_path

from .conftest import Federation, create_run, instruction, scalar

# Liveness is judged after 30 s: on a loaded machine no node or run goes silent
# unless the test ages it in SQL.
SHORT = Intervals(heartbeat=0.1, offline_after=30.0, lease=0.2, poll=0.2, sweep=0.1)
EXEC = "exec:host:4242:deadbeef"


def _link(url: str) -> LinkWorker:
    return LinkWorker(url, intervals=SHORT)


def _age_claims(conn: Connection, seconds: float = 2 * LAUNCH) -> None:
    conn.execute(
        "UPDATE runs SET claimed_at = now() - make_interval(secs => %s) WHERE status = 'starting'",
        [seconds],
    )


def _row(conn: Connection, run_id: int) -> dict[str, Any]:
    run = store_runs.get(conn, run_id)
    return {
        "status": run.status,
        "attempt": run.attempt,
        "exec_id": run.exec_id,
        "claimed": run.claimed_at is not None,
        "finished": run.finished_at is not None,
    }


def _wait_until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _waiting_on_a_lock(conn: Connection, pid: int) -> bool:
    return bool(
        scalar(
            conn,
            "SELECT count(*) FROM pg_stat_activity WHERE pid = %s AND wait_event_type = 'Lock'",
            [pid],
        )
    )


# ------------------------------------------------------------------ claims


def test_an_exec_claims_one_run_at_a_time(conn: Connection, fed: Federation) -> None:
    low = fed.run_id
    high = create_run(conn, fed.selected)
    other = create_run(conn, fed.selected)
    conn.execute("UPDATE runs SET priority = 5 WHERE id = %s", [high])

    first = store_runs.claim_next(conn, EXEC)
    assert first == store_runs.Claim(high, 1)
    statuses = dict(conn.execute("SELECT id, status::text FROM runs").fetchall())
    assert statuses == {low: "pending", high: "starting", other: "pending"}
    assert store_runs.get(conn, high).claimed_at is not None
    # A run whose previous ServerApp the exec still holds is left to others.
    assert store_runs.claim_next(conn, EXEC, exclude=[low]) == store_runs.Claim(other, 1)
    assert store_runs.claim_next(conn, EXEC, exclude=[low]) is None
    assert store_runs.claim_next(conn, EXEC) == store_runs.Claim(low, 1)


def test_mark_running_may_be_asked_again_after_a_lost_answer(
    conn: Connection, fed: Federation
) -> None:
    store_runs.claim_next(conn, EXEC)
    assert store_runs.mark_running(conn, fed.run_id, EXEC, 111)
    started = store_runs.get(conn, fed.run_id).started_at
    assert store_runs.mark_running(conn, fed.run_id, EXEC, 111)  # the same launch: yes
    assert store_runs.get(conn, fed.run_id).started_at == started  # and nothing changed
    assert not store_runs.mark_running(conn, fed.run_id, EXEC, 222)  # another process
    assert not store_runs.mark_running(conn, fed.run_id, "exec:other:1:x", 111)


def test_a_starting_run_must_record_its_claim(conn: Connection, fed: Federation) -> None:
    with pytest.raises(Exception, match="ck_runs_starting_has_claimed_at"):
        conn.execute(
            "UPDATE runs SET status = 'starting', exec_id = 'e' WHERE id = %s", [fed.run_id]
        )


# ------------------------------------------------------------------ taking back


def test_the_link_takes_back_a_run_its_exec_never_launched(
    conn: Connection, fed: Federation
) -> None:
    young = create_run(conn, fed.selected)
    assert store_runs.claim_next(conn, EXEC) == store_runs.Claim(fed.run_id, 1)
    # What the lost launch may have done before it was lost: an instruction.
    (mid,) = bus.send(conn, fed.run_id, [instruction(fed.selected[0])])
    _age_claims(conn)
    assert store_runs.claim_next(conn, EXEC) == store_runs.Claim(young, 1)  # claimed just now

    listener = Listener(fed.url, [EXEC_CHANNEL], application_name="test-exec-listen")
    try:
        result = _link(fed.url).sweep_once()
        woken = listener.wait(5)
    finally:
        listener.close()

    assert result["runs_taken_back"] == 1
    assert _row(conn, fed.run_id) == {
        "status": "pending",
        "attempt": 2,
        "exec_id": None,
        "claimed": False,
        "finished": False,
    }
    assert _row(conn, young)["status"] == "starting"  # within its bound: left alone
    reason = store_runs.get(conn, fed.run_id).reason or ""
    assert reason == (
        f"exec {EXEC} claimed attempt 1 but did not start its ServerApp within "
        f"{LAUNCH:g} s; queued again as attempt 2"
    )
    events = [
        r[0]
        for r in conn.execute(
            "SELECT line FROM run_logs WHERE run_id = %s AND stream = 'event'", [fed.run_id]
        ).fetchall()
    ]
    assert events == [reason]
    assert str(fed.run_id) in [n.payload for n in woken]
    assert scalar(conn, "SELECT state::text FROM messages WHERE id = %s", [mid]) == "cancelled"

    # Everything the lost launch could still do is fenced off by the attempt number.
    assert not store_runs.mark_running(conn, fed.run_id, EXEC, 4242)
    assert store_runs.heartbeat(conn, fed.run_id, 1) is None
    assert store_runs.finish(conn, fed.run_id, "failed", "late", attempt=1) is None
    assert _row(conn, fed.run_id)["status"] == "pending"
    # And the next exec launches it as attempt 2.
    assert store_runs.claim_next(conn, "exec:b:1:x") == store_runs.Claim(fed.run_id, 2)
    assert store_runs.mark_running(conn, fed.run_id, "exec:b:1:x", 77)
    assert _link(fed.url).sweep_once()["runs_taken_back"] == 0


def test_a_run_taken_back_after_a_stop_request_ends_stopped(
    conn: Connection, fed: Federation
) -> None:
    store_runs.claim_next(conn, EXEC)
    # A request recorded while starting (as before `stop` ended starting runs itself).
    conn.execute("UPDATE runs SET stop_requested_at = now() WHERE id = %s", [fed.run_id])
    _age_claims(conn)
    assert _link(fed.url).sweep_once()["runs_taken_back"] == 1
    run = store_runs.get(conn, fed.run_id)
    assert (run.status, run.reason, run.attempt) == ("stopped", "stopped by user", 1)
    assert run.finished_at is not None


def test_a_link_that_just_connected_does_not_take_back(conn: Connection, fed: Federation) -> None:
    store_runs.claim_next(conn, EXEC)
    _age_claims(conn)
    with connect(fed.url) as c:
        assert _link(fed.url)._sweep(c, judge_liveness=False)["runs_taken_back"] == 0
    assert _row(conn, fed.run_id)["status"] == "starting"


def test_two_links_take_a_run_back_once(conn: Connection, fed: Federation) -> None:
    runs = [fed.run_id] + [create_run(conn, fed.selected) for _ in range(7)]
    while store_runs.claim_next(conn, EXEC) is not None:
        pass
    _age_claims(conn)
    barrier = threading.Barrier(2)
    totals: list[int] = []

    def sweep() -> None:
        with connect(fed.url) as c:
            barrier.wait()
            totals.append(_link(fed.url)._sweep(c)["runs_taken_back"])

    threads = [threading.Thread(target=sweep) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sum(totals) == len(runs)
    attempts = dict(conn.execute("SELECT id, attempt FROM runs").fetchall())
    assert attempts == {r: 2 for r in runs}
    assert scalar(conn, "SELECT count(*) FROM run_logs WHERE stream = 'event'") == len(runs)


# ------------------------------------------------------------------ stop


@pytest.mark.parametrize(
    ("state", "answer"),
    [("pending", "stopped"), ("starting", "stopped"), ("running", "stopping")],
)
def test_stop_acts_in_every_state_that_has_not_ended(
    conn: Connection, fed: Federation, state: str, answer: str
) -> None:
    if state != "pending":
        store_runs.claim_next(conn, EXEC)
    if state == "running":
        assert store_runs.mark_running(conn, fed.run_id, EXEC, 4242)
    (mid,) = bus.send(conn, fed.run_id, [instruction(fed.selected[0])])

    assert store_runs.request_stop(conn, fed.run_id) == answer

    run = store_runs.get(conn, fed.run_id)
    assert run.stop_requested_at is not None
    message_state = scalar(conn, "SELECT state::text FROM messages WHERE id = %s", [mid])
    if answer == "stopped":
        assert (run.status, run.reason) == ("stopped", "stopped by user")
        assert message_state == "cancelled"
        # An exec that was between claim and launch learns it when it marks the run.
        assert not store_runs.mark_running(conn, fed.run_id, EXEC, 4242)
    else:
        assert run.status == "running"
        assert message_state == "queued"  # ended with the run, by its exec
        assert store_runs.stop_requested(conn, EXEC) == [fed.run_id]
        assert store_runs.heartbeat(conn, fed.run_id, 1) is True
    # Asking again: "stopping" while it runs, refused once it ended.
    if answer == "stopping":
        assert store_runs.request_stop(conn, fed.run_id) == "stopping"
        assert store_runs.finish(conn, fed.run_id, "stopped", "stopped by user") == "stopped"
    with pytest.raises(InvalidState, match=f"run {fed.run_id} already ended \\(stopped\\)"):
        store_runs.request_stop(conn, fed.run_id)


def test_stop_of_an_unknown_run_is_not_found(conn: Connection, fed: Federation) -> None:
    with pytest.raises(NotFound):
        store_runs.request_stop(conn, fed.run_id + 1000)


# ------------------------------------------------------------------ replies


def _claimed_instructions(conn: Connection, fed: Federation, n: int) -> list[int]:
    ids = bus.send(conn, fed.run_id, [instruction(fed.selected[0]) for _ in range(n)])
    claimed = store_messages.claim(conn, worker="w", node_ids=[fed.selected[0]], lease=60, limit=n)
    assert sorted(m.id for m in claimed) == ids
    return ids


def _reply(instruction_id: int) -> NewReply:
    return NewReply(instruction_id, {"m": {"loss": 1.0}}, {}, [])


def _states(conn: Connection, run_id: int) -> dict[tuple[bool, str], int]:
    return {
        (bool(is_reply), str(state)): int(n)
        for state, is_reply, n in conn.execute(
            "SELECT state::text, reply_to IS NOT NULL, count(*) FROM messages"
            " WHERE run_id = %s GROUP BY 1, 2",
            [run_id],
        ).fetchall()
    }


def test_an_ended_run_leaves_no_reply_queued(conn: Connection, fed: Federation) -> None:
    answered, unanswered = _claimed_instructions(conn, fed, 2)
    assert store_messages.reply_batch(conn, worker="w", replies=[_reply(answered)])
    assert store_runs.request_stop(conn, fed.run_id) == "stopped"

    assert _states(conn, fed.run_id) == {
        (False, "done"): 1,
        (False, "cancelled"): 1,
        (True, "cancelled"): 1,
    }
    assert (
        scalar(conn, "SELECT finished_at IS NOT NULL FROM messages WHERE reply_to = %s", [answered])
        is True
    )
    # The node's late answer to the other instruction is refused; nothing is queued.
    with pytest.raises(LeaseLost):
        reply_path.reply_new(conn, worker="w", new=_reply(unanswered))
    assert store_messages.pull_replies(conn, fed.run_id, [answered, unanswered]) == []


def test_a_reply_committed_while_its_run_ends_is_cancelled_too(
    conn: Connection, fed: Federation
) -> None:
    """The node's transaction holds the instruction when the run ends: the end waits for
    it, then cancels the reply that it committed."""
    (mid,) = _claimed_instructions(conn, fed, 1)
    with connect(fed.url) as node, connect(fed.url) as user:
        user_pid = int(scalar(user, "SELECT pg_backend_pid()"))
        outcome: list[str] = []
        with node.transaction():
            assert store_messages.reply_batch(node, worker="w", replies=[_reply(mid)])
            stopper = threading.Thread(
                target=lambda: outcome.append(store_runs.request_stop(user, fed.run_id))
            )
            stopper.start()
            _wait_until(lambda: _waiting_on_a_lock(conn, user_pid), "stop to wait for the node")
        stopper.join(30)
    assert outcome == ["stopped"]
    assert _states(conn, fed.run_id) == {(False, "done"): 1, (True, "cancelled"): 1}


def test_a_reply_attempted_after_its_run_ended_is_not_written(
    conn: Connection, fed: Federation
) -> None:
    """The run's end holds the instruction when the node answers: the node waits for it,
    then finds the instruction cancelled and writes no reply."""
    (mid,) = _claimed_instructions(conn, fed, 1)
    with connect(fed.url) as node, connect(fed.url) as user:
        node_pid = int(scalar(node, "SELECT pg_backend_pid()"))
        written: list[dict[int, int]] = []
        with user.transaction():
            assert store_runs.request_stop(user, fed.run_id) == "stopped"
            replier = threading.Thread(
                target=lambda: written.append(
                    store_messages.reply_batch(node, worker="w", replies=[_reply(mid)])
                )
            )
            replier.start()
            _wait_until(lambda: _waiting_on_a_lock(conn, node_pid), "the node to wait")
        replier.join(30)
    assert written == [{}]
    assert _states(conn, fed.run_id) == {(False, "cancelled"): 1}


# ------------------------------------------------------------------ the migration


def test_the_migration_gives_rows_already_stuck_their_way_out(
    conn: Connection, fed: Federation
) -> None:
    ended = create_run(conn, fed.selected)
    (mid,) = bus.send(conn, ended, [instruction(fed.selected[0])])
    conn.close()
    migrate.downgrade(fed.url, "0005")
    with connect(fed.url) as old:
        # As main left them: a run claimed by an exec that died, a queued reply of an
        # ended run.
        old.execute(
            "UPDATE runs SET status = 'starting', exec_id = 'e' WHERE id = %s", [fed.run_id]
        )
        old.execute(
            "INSERT INTO messages (run_id, src_node_id, reply_to, message_type, ttl_seconds,"
            " deadline) SELECT run_id, dst_node_id, id, message_type, ttl_seconds, deadline"
            " FROM messages WHERE id = %s",
            [mid],
        )
        old.execute(
            "UPDATE runs SET status = 'failed', reason = 'x', finished_at = now() WHERE id = %s",
            [ended],
        )
    migrate.upgrade(fed.url)
    with connect(fed.url) as new:
        assert store_runs.get(new, fed.run_id).claimed_at is not None
        assert (
            scalar(new, "SELECT state::text FROM messages WHERE reply_to = %s", [mid])
            == "cancelled"
        )
        new.execute("UPDATE runs SET claimed_at = claimed_at - interval '1 hour'")
        assert _link(fed.url).sweep_once()["runs_taken_back"] == 1
        assert store_runs.get(new, fed.run_id).status == "pending"
