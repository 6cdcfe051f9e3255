"""A node hangs (SIGSTOP of its worker and of its ClientApp processes): its heartbeats
stop, the link marks it offline after FLPG_OFFLINE_AFTER and, in the same
transaction, answers its undelivered messages (queued, or claimed by its frozen
worker) with NODE_UNAVAILABLE error replies, long before their TTL;
`get_node_ids()` stops offering it, so FedAvg goes on without it. After SIGCONT the
node heart-beats again under the same node id and serves a new run."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from flpg.app.message import ErrorCode, error_code_to_stored
from flpg.serverapp.grid import Grid
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
    round_tallies,
    run_states,
    signal_processes,
    stopwatch,
    wait_until,
)

pytestmark = pytest.mark.e2e

IV = INTERVALS
OFFLINE_BOUND = IV.offline_after + IV.heartbeat + 2 * IV.sweep + SLACK
"""Freeze -> marked offline: its last heartbeat ages past offline_after, one sweep."""


@pytest.mark.timeout(budget(8 * STARTUP, OFFLINE_BOUND, IV.lease))
def test_a_hung_node_goes_offline_its_messages_are_answered_at_once_and_it_comes_back(
    federation: Federation, tmp_path: Path
) -> None:
    fed = federation
    clock = stopwatch("2 hung node")
    markers = tmp_path / "markers"
    markers.mkdir()
    fed.link()
    fed.exec()
    fed.node("node0", "partition-id=0", concurrency=1)
    fed.node("node1", "partition-id=1", concurrency=1)
    victim = fed.node("node2", "partition-id=2", concurrency=1)
    fed.wait_nodes_online(3)
    ids = node_ids(fed)
    n2 = ids["node2"]

    # Run B keeps node2's only slot busy: its message is claimed, its handler runs.
    run_b = fed.submit(
        TOLERANT,
        "--nodes",
        "node2",
        "--run-config",
        f"min-nodes=1 slow-partition=2 slow-delay=600 marker-dir={markers}",
    )

    def b_handler_running() -> int | None:
        assert_run_not_ended(fed, run_b)
        rows = fed.sql(
            "SELECT id FROM messages WHERE run_id = %s AND reply_to IS NULL AND state = 'claimed'",
            [run_b],
        )
        return int(rows[0][0]) if rows and (markers / str(rows[0][0])).exists() else None

    b_msg: int = wait_until(fed, b_handler_running, 2 * STARTUP, "run B's handler on node2")
    # Run A trains on all three nodes; its message for node2 stays queued behind B's.
    run_a = fed.submit(TOLERANT, "--run-config", "num-server-rounds=3 min-nodes=2")

    def a_msg_queued_for_node2() -> int | None:
        assert_run_not_ended(fed, run_a)
        rows = fed.sql(
            "SELECT id FROM messages WHERE run_id = %s AND dst_node_id = %s"
            " AND reply_to IS NULL AND state = 'queued'",
            [run_a, n2],
        )
        return int(rows[0][0]) if rows else None

    a_msg: int = wait_until(fed, a_msg_queued_for_node2, 2 * STARTUP, "run A's message for node2")
    clientapps = children(victim.pid)
    assert len(clientapps) == 1, clientapps  # run B's ClientApp process on node2
    assert set(clientapps) <= set(fed.tagged_pids())

    signal_processes(victim, clientapps, signal.SIGSTOP)
    frozen_at = time.monotonic()
    try:
        with clock.measure("freeze -> node2 offline"):
            wait_until(
                fed, lambda: node_status(fed, "node2") == "offline", OFFLINE_BOUND, "node2 offline"
            )
        with clock.measure("node2 offline -> both its messages answered"):
            wait_until(
                fed,
                lambda: (
                    fed.scalar(
                        "SELECT count(*) FROM messages WHERE reply_to = ANY(%s)", [[a_msg, b_msg]]
                    )
                    == 2
                ),
                2 * IV.sweep + SLACK,
                "error replies to node2's messages",
            )
        answered_after = time.monotonic() - frozen_at
        print(f"TIMING 2 hung node: freeze -> error replies {answered_after:.2f} s")
        assert answered_after < OFFLINE_BOUND + 2 * IV.sweep

        # get_node_ids() no longer offers node2, to any run that selected it.
        grid = Grid(fed.url, run_a)
        try:
            assert grid.get_node_ids() == sorted([ids["node0"], ids["node1"]])
        finally:
            grid.close()
        with clock.measure("error replies -> runs A and B finished"):
            assert fed.wait_run(run_a, timeout=2 * STARTUP)["status"] == "finished"
            assert fed.wait_run(run_b, timeout=STARTUP)["status"] == "failed"
        assert node_status(fed, "node2") == "offline"  # still frozen throughout
    finally:
        signal_processes(victim, clientapps, signal.SIGCONT)

    # Both of node2's undelivered messages, the claimed one (B) and the queued one (A),
    # expired with one NODE_UNAVAILABLE reply each, written in one sweep, long before
    # their TTL (3600 s).
    replies = fed.sql(
        "SELECT i.id, i.state::text, r.src_node_id, r.error_code, r.error_reason,"
        " r.created_at, extract(epoch FROM i.deadline - r.created_at)"
        " FROM messages i JOIN messages r ON r.reply_to = i.id WHERE i.id = ANY(%s) ORDER BY 1",
        [[a_msg, b_msg]],
    )
    assert len(replies) == 2
    for mid, state, src, code, reason, _, before_deadline in replies:
        assert (state, src, code) == (
            "expired",
            n2,
            error_code_to_stored(ErrorCode.NODE_UNAVAILABLE),
        )
        assert reason.startswith(f"message {mid} not delivered: node {n2} (node2) went offline")
        assert before_deadline > 3000
    assert replies[0][5] == replies[1][5]  # same transaction: the sweep that marked it offline
    link = next(p for p in fed.procs if p.name == "link")
    assert f"node node2 (id {n2}) stopped heart-beating: offline" in link.log()
    assert "answered 2 undelivered message(s) of offline node(s) with an error" in link.log()

    # Run A: round 1 went on with nodes 0 and 1; rounds 2 and 3 did not address node2.
    a = instructions(fed, run_a)
    assert sorted((m.group_id, m.dst_node_id) for m in a) == sorted(
        [("1", n2)] + [(r, ids[n]) for r in "123" for n in ("node0", "node1")]
    )
    assert round_tallies(fed, run_a) == [(1, 2, 1), (2, 2, 0), (3, 2, 0)]
    assert final_model(fed, run_a) == pytest.approx(expected_model([[0, 1]] * 3))
    # Run B: its only reply was the error, fewer than its min_train_nodes=1: it failed.
    assert round_tallies(fed, run_b) == [(1, 0, 1)]
    b_reason = run_states(fed)[run_b][1] or ""
    assert "round 1: 0 training replies, fewer than min_train_nodes=1" in b_reason

    # Thawed, node2 heart-beats again under the same id and serves a new run.
    with clock.measure("thaw -> node2 online"):
        wait_until(
            fed,
            lambda: node_status(fed, "node2") == "online",
            IV.heartbeat + SLACK,
            "node2 online again",
        )
    assert node_ids(fed) == ids
    with clock.measure("thaw -> run C (all 3 nodes) finished"):
        run_c = fed.submit(TOLERANT, "--run-config", "min-nodes=3")
        assert fed.wait_run(run_c, timeout=IV.lease + 2 * STARTUP)["status"] == "finished"
    c = instructions(fed, run_c)
    assert sorted(m.dst_node_id for m in c) == sorted(ids.values())
    assert {(m.state, m.reply_error_code) for m in c} == {("done", None)}
    assert final_model(fed, run_c) == pytest.approx(expected_model([[0, 1, 2]]))

    # The thawed handler of B finished too late: its answer was dropped, not added.
    assert_one_reply_each(fed, run_a)
    assert_one_reply_each(fed, run_b)
    assert_one_reply_each(fed, run_c)
    assert_at_most_one_reply(fed)
    assert run_states(fed) == {
        run_a: ("finished", None),
        run_b: ("failed", b_reason),
        run_c: ("finished", None),
    }
