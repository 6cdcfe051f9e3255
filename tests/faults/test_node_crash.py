"""A node worker is SIGKILLed while a ClientApp handler runs one of its messages.

With another worker of the same node, the link re-queues the lapsed lease and that
worker completes the message; with none, the message expires at its TTL, the
ServerApp gets an error reply and FedAvg's round goes on with the other nodes."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest

from flpg.app.message import ErrorCode, error_code_to_stored
from tests.e2e.harness import Federation
from tests.faults.support import (
    INTERVALS,
    SLACK,
    STARTUP,
    TOLERANT,
    assert_at_most_one_reply,
    assert_one_reply_each,
    assert_run_not_ended,
    budget,
    children,
    expected_model,
    final_model,
    instructions,
    node_ids,
    node_status,
    proc_with_pid,
    round_tallies,
    run_states,
    stopwatch,
    wait_until,
    worker_pid,
)

pytestmark = pytest.mark.e2e

IV = INTERVALS
REQUEUE_BOUND = IV.lease + IV.heartbeat + 2 * IV.sweep + SLACK
"""Kill -> message claimable again: the lease (extended up to the kill) runs out, one sweep."""


def _running_handler(fed: Federation, run_id: int, node_id: int, markers: Path) -> tuple[int, str]:
    """Wait until the node's message of the run is claimed and its handler started
    (the tolerant app's marker file); returns (message id, claimed_by)."""

    def started() -> tuple[int, str] | None:
        assert_run_not_ended(fed, run_id)
        rows = fed.sql(
            "SELECT id, claimed_by FROM messages WHERE run_id = %s AND dst_node_id = %s"
            " AND reply_to IS NULL AND state = 'claimed'",
            [run_id, node_id],
        )
        if rows and (markers / str(rows[0][0])).exists():
            return int(rows[0][0]), str(rows[0][1])
        return None

    found: tuple[int, str] = wait_until(
        fed, started, 2 * STARTUP, f"a handler of run {run_id} on node {node_id}"
    )
    return found


@pytest.mark.timeout(budget(5 * STARTUP, REQUEUE_BOUND, IV.lease))
def test_a_killed_workers_message_is_requeued_and_completed_by_the_nodes_other_worker(
    federation: Federation, tmp_path: Path
) -> None:
    fed = federation
    clock = stopwatch("1a kill with a second worker")
    markers = tmp_path / "markers"
    markers.mkdir()
    fed.link()
    fed.exec()
    workers = [
        fed.node("node0", "partition-id=0", concurrency=1, proc_name=f"node0-{x}") for x in "ab"
    ]
    fed.node("node1", "partition-id=1", concurrency=1)
    fed.wait_nodes_online(2)
    ids = node_ids(fed)
    run_id = fed.submit(
        TOLERANT,
        "--run-config",
        f"num-server-rounds=2 slow-partition=0 slow-delay=600 marker-dir={markers}",
    )
    mid, claimed_by = _running_handler(fed, run_id, ids["node0"], markers)
    holder = proc_with_pid(fed, worker_pid(claimed_by))
    other = next(w for w in workers if w is not holder)
    orphans = children(holder.pid)
    assert len(orphans) == 1, orphans  # the run's ClientApp process, busy with `mid`

    assert fed.kill(holder) == -signal.SIGKILL
    with clock.measure("kill -> reply by the other worker"):
        wait_until(
            fed,
            lambda: fed.scalar("SELECT count(*) FROM messages WHERE reply_to = %s", [mid]),
            REQUEUE_BOUND + STARTUP,
            f"a reply to message {mid}",
        )
    # Its ClientApp process lost its worker: it exits by itself (after its grace, one lease).
    with clock.measure("kill -> orphaned ClientApp process gone"):
        wait_until(
            fed,
            lambda: not set(orphans) & set(fed.tagged_pids()),
            IV.lease + SLACK,
            "the orphaned ClientApp process to exit",
        )
    with clock.measure("kill -> run finished"):
        assert fed.wait_run(run_id, timeout=2 * STARTUP)["status"] == "finished"

    # The link re-queued the lapsed lease; the other worker took it as a second attempt.
    link = next(p for p in fed.procs if p.name == "link")
    assert "re-queued 1 message(s) whose lease ran out" in link.log()
    (retried,) = [m for m in instructions(fed, run_id) if m.id == mid]
    assert retried.state == "done"
    assert retried.attempts == 2
    assert retried.claimed_by is not None and worker_pid(retried.claimed_by) == other.pid
    assert (retried.has_reply, retried.reply_error_code) == (True, None)
    # Every other instruction was served once, first time.
    assert {(m.state, m.attempts) for m in instructions(fed, run_id) if m.id != mid} == {
        ("done", 1)
    }

    assert run_states(fed) == {run_id: ("finished", None)}
    assert_one_reply_each(fed, run_id)
    assert_at_most_one_reply(fed)
    assert round_tallies(fed, run_id) == [(1, 2, 0), (2, 2, 0)]
    assert final_model(fed, run_id) == pytest.approx(expected_model([[0, 1], [0, 1]]))


TTL = 8.0
"""Long enough for a healthy node's first message (ClientApp process start) on a loaded
machine; the test's own bounds scale with it."""


@pytest.mark.timeout(budget(4 * STARTUP, TTL, IV.sweep))
def test_a_killed_workers_message_expires_at_its_ttl_and_the_round_goes_on(
    federation: Federation, tmp_path: Path
) -> None:
    fed = federation
    clock = stopwatch("1b kill without another worker")
    markers = tmp_path / "markers"
    markers.mkdir()
    # The link notices the silence only long after the TTL: the TTL is what answers
    # (with a shorter FLPG_OFFLINE_AFTER the node goes offline first, and its messages
    # get NODE_UNAVAILABLE replies at that moment; see test_node_hang).
    fed.env["FLPG_OFFLINE_AFTER"] = str(10 * TTL)
    fed.federation(3, concurrency=1)
    ids = node_ids(fed)
    run_id = fed.submit(
        TOLERANT,
        "--run-config",
        f"min-nodes=2 ttl={TTL} slow-partition=2 slow-delay=600 marker-dir={markers}",
    )
    mid, claimed_by = _running_handler(fed, run_id, ids["node2"], markers)
    victim = proc_with_pid(fed, worker_pid(claimed_by))
    assert victim.name == "node-node2"

    assert fed.kill(victim) == -signal.SIGKILL
    with clock.measure("kill -> run finished (TTL answers)"):
        assert fed.wait_run(run_id, timeout=TTL + IV.sweep + STARTUP)["status"] == "finished"

    by_id = {m.id: m for m in instructions(fed, run_id)}
    expired = by_id[mid]
    assert expired.state == "expired"
    assert expired.attempts == 1
    assert expired.reply_error_code == error_code_to_stored(ErrorCode.MESSAGE_UNAVAILABLE)
    assert expired.reply_error_reason == (
        f"message {mid} expired: node {ids['node2']} did not reply within its TTL of 8 s"
    )
    # Answered at the TTL: not before, and within a few sweeps after.
    waited = float(
        fed.scalar(
            "SELECT extract(epoch FROM r.created_at - i.created_at) FROM messages i"
            " JOIN messages r ON r.reply_to = i.id WHERE i.id = %s",
            [mid],
        )
    )
    print(f"TIMING 1b: instruction -> expiry reply {waited:.2f} s (TTL {TTL:g} s)")
    assert TTL <= waited < TTL + 5 * IV.sweep + SLACK
    assert node_status(fed, "node2") == "online"  # its silence is not detected yet
    # The other nodes' replies made the round.
    others = [m for m in by_id.values() if m.id != mid]
    assert sorted(m.dst_node_id for m in others) == sorted([ids["node0"], ids["node1"]])
    assert {(m.state, m.reply_error_code) for m in others} == {("done", None)}
    assert round_tallies(fed, run_id) == [(1, 2, 1)]
    log = fed.log_of(run_id)
    assert "round 1/1 train: 2 ok, 1 failed" in log
    assert re.search(rf"node {ids['node2']}: message {mid} expired", log), log

    assert run_states(fed) == {run_id: ("finished", None)}
    assert_one_reply_each(fed, run_id)
    assert_at_most_one_reply(fed)
    assert final_model(fed, run_id) == pytest.approx(expected_model([[0, 1]]))
