"""Graceful shutdown. SIGTERM to a node worker whose handler runs: it waits at most one
lease, hands the message back to the queue (attempts kept), marks the node offline
and exits 0; the link leaves the handed-back message queued (the node went offline
on purpose, not silently), and a new worker of the node completes it. SIGTERM to
the exec: it terminates its ServerApps, records their runs `failed` with the reason
`exec worker <id> shut down` (their undelivered messages cancelled), leaves runs it
had not claimed `pending`, and exits 0; the next exec launches those."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from flpg.exec.worker import STOP_GRACE
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
    stopwatch,
    wait_until,
    worker_pid,
)

pytestmark = pytest.mark.e2e

IV = INTERVALS
NODE_STOP_BOUND = IV.lease + IV.poll + 1.0 + SLACK
"""SIGTERM -> a busy node worker exited: noticed within a poll, at most one lease for its
handler, then 1 s for its ClientApp processes to close."""
SWEEPS = 2 * STARTUP
"""Ceiling for the link to run the sweeps `after_a_full_sweep` waits for."""


def _collected(fed: Federation, array_id: int) -> bool:
    return bool(fed.scalar("SELECT collected_at IS NOT NULL FROM arrays WHERE id = %s", [array_id]))


def after_a_full_sweep(fed: Federation, run_id: int) -> None:
    """Return once the link has run a whole sweep that began after this call.

    The evidence is two canary payloads of `run_id` that nothing references, aged past
    the collection grace, which every sweep collects: the second is written only once
    the first is collected, so a later sweep, begun after this call, collected it.
    """
    for canary in (1, 2):
        array_id = fed.scalar(
            "INSERT INTO arrays (run_id, dtype, shape, nbytes, chunk_size, n_chunks, digest,"
            " created_at) VALUES (%s, 'float64', '{0}', 0, 1, 0, decode(repeat('00', 16), 'hex'),"
            " now() - make_interval(secs => %s) - interval '1 hour') RETURNING id",
            [run_id, IV.payload_grace],
        )
        wait_until(
            fed,
            functools.partial(_collected, fed, array_id),
            SWEEPS / 2,
            f"the link to collect canary payload {canary}",
        )


@pytest.mark.timeout(budget(5 * STARTUP, NODE_STOP_BOUND, SWEEPS))
def test_sigterm_to_a_busy_node_worker_hands_its_message_back_and_takes_the_node_offline(
    federation: Federation, tmp_path: Path
) -> None:
    fed = federation
    clock = stopwatch("4a SIGTERM to a node worker")
    markers = tmp_path / "markers"
    markers.mkdir()
    fed.link()
    fed.exec()
    node0 = fed.node("node0", "partition-id=0", concurrency=1)
    fed.node("node1", "partition-id=1", concurrency=1)
    fed.wait_nodes_online(2)
    ids = node_ids(fed)
    run_id = fed.submit(
        TOLERANT,
        "--run-config",
        f"num-server-rounds=2 slow-partition=0 slow-delay=600 marker-dir={markers}",
    )

    def handler_running() -> int | None:
        assert_run_not_ended(fed, run_id)
        rows = fed.sql(
            "SELECT id FROM messages WHERE run_id = %s AND dst_node_id = %s"
            " AND reply_to IS NULL AND state = 'claimed'",
            [run_id, ids["node0"]],
        )
        return int(rows[0][0]) if rows and (markers / str(rows[0][0])).exists() else None

    mid: int = wait_until(fed, handler_running, 2 * STARTUP, "node0's handler")
    clientapps = children(node0.pid)
    assert len(clientapps) == 1, clientapps

    with clock.measure("SIGTERM -> node worker exited"):
        report = fed.stop([node0])
    assert report.clean, f"{report}\n{node0.log()}"
    assert clock.marks["SIGTERM -> node worker exited"] < NODE_STOP_BOUND
    assert "handed 1 claimed message(s) back to the queue" in node0.log()
    assert not set(clientapps) & set(fed.tagged_pids())  # its ClientApp process is gone

    def handed_back() -> tuple[str, int, bool, bool]:
        row = fed.sql(
            "SELECT state::text, attempts, claimed_by IS NULL AND lease_until IS NULL,"
            " EXISTS (SELECT 1 FROM messages r WHERE r.reply_to = m.id)"
            " FROM messages m WHERE id = %s",
            [mid],
        )[0]
        return (str(row[0]), int(row[1]), bool(row[2]), bool(row[3]))

    assert handed_back() == ("queued", 1, True, False)
    assert node_status(fed, "node0") == "offline"
    # The link does not answer it: the node went offline by itself, not silently, so
    # its handed-back work waits for a worker of the node to come back. Its heartbeat
    # is aged past offline_after, so the sweep judges a node that fell silent long ago.
    fed.sql(
        "UPDATE nodes SET last_seen_at = now() - make_interval(secs => %s) - interval '1 hour'"
        " WHERE id = %s",
        [IV.offline_after, ids["node0"]],
    )
    after_a_full_sweep(fed, run_id)
    assert handed_back() == ("queued", 1, True, False)
    assert node_status(fed, "node0") == "offline"
    assert fed.run_info(run_id)["status"] == "running"

    # A new worker of node0 takes the message as its second attempt; the run finishes.
    again = fed.node("node0", "partition-id=0", concurrency=1, proc_name="node0-again")
    with clock.measure("restart -> run finished"):
        assert fed.wait_run(run_id, timeout=3 * STARTUP)["status"] == "finished"
    by_id = {m.id: m for m in instructions(fed, run_id)}
    retried = by_id[mid]
    assert (retried.state, retried.attempts, retried.has_reply, retried.reply_error_code) == (
        "done",
        2,
        True,
        None,
    )
    assert retried.claimed_by is not None and worker_pid(retried.claimed_by) == again.pid
    assert node_ids(fed) == ids  # the same node id, re-attached
    assert round_tallies(fed, run_id) == [(1, 2, 0), (2, 2, 0)]
    assert final_model(fed, run_id) == pytest.approx(expected_model([[0, 1], [0, 1]]))
    assert run_states(fed) == {run_id: ("finished", None)}
    assert_one_reply_each(fed, run_id)
    assert_at_most_one_reply(fed)


EXEC_STOP_BOUND = STOP_GRACE + IV.poll + SLACK
"""SIGTERM -> exec exited: its ServerApps get SIGTERM and up to STOP_GRACE to exit."""


@pytest.mark.timeout(budget(5 * STARTUP, EXEC_STOP_BOUND))
def test_sigterm_to_the_exec_fails_its_running_runs_and_leaves_pending_ones_queued(
    federation: Federation, tmp_path: Path
) -> None:
    fed = federation
    clock = stopwatch("4b SIGTERM to the exec")
    markers = tmp_path / "markers"
    markers.mkdir()
    fed.link()
    exec_ = fed.exec(max_runs=1)
    for i in range(2):
        fed.node(f"node{i}", f"partition-id={i}")
    fed.wait_nodes_online(2)
    running = fed.submit(
        TOLERANT, "--run-config", f"slow-partition=0 slow-delay=600 marker-dir={markers}"
    )

    def slow_handler_running() -> bool:
        assert_run_not_ended(fed, running)
        rows = fed.sql(
            "SELECT id FROM messages WHERE run_id = %s AND reply_to IS NULL AND state = 'claimed'",
            [running],
        )
        return any((markers / str(mid)).exists() for (mid,) in rows)

    wait_until(fed, slow_handler_running, 2 * STARTUP, "the running run's slow handler")
    waiting = fed.submit(TOLERANT)  # the exec is full (--max-runs 1): stays pending
    pid = int(fed.scalar("SELECT serverapp_pid FROM runs WHERE id = %s", [running]))
    exec_id = str(fed.scalar("SELECT exec_id FROM runs WHERE id = %s", [running]))
    assert fed.run_info(waiting)["status"] == "pending"

    with clock.measure("SIGTERM -> exec exited"):
        report = fed.stop([exec_])
    assert report.clean, f"{report}\n{exec_.log()}"
    assert clock.marks["SIGTERM -> exec exited"] < EXEC_STOP_BOUND
    assert pid not in fed.tagged_pids()  # it took its ServerApp with it

    reason = f"exec worker {exec_id} shut down"
    assert run_states(fed) == {running: ("failed", reason), waiting: ("pending", None)}
    assert fed.sql(
        "SELECT exec_id, serverapp_pid, started_at FROM runs WHERE id = %s", [waiting]
    ) == [(None, None, None)]
    assert "ServerApp terminated: exec worker shut down" in fed.log_of(running)
    states = {m.state for m in instructions(fed, running)}
    assert states <= {"done", "cancelled"} and "cancelled" in states, states
    assert fed.scalar("SELECT count(*) FROM messages WHERE run_id = %s", [waiting]) == 0

    # The next exec launches the run the first one left pending.
    fed.exec("exec-2")
    with clock.measure("new exec -> pending run finished"):
        assert fed.wait_run(waiting, timeout=3 * STARTUP)["status"] == "finished"
    assert final_model(fed, waiting) == pytest.approx(expected_model([[0, 1]]))
    assert_one_reply_each(fed, waiting)
    assert_at_most_one_reply(fed)
    assert run_states(fed) == {running: ("failed", reason), waiting: ("finished", None)}
