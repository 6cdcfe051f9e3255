"""Failures with real processes: a ClientApp that raises, a ServerApp that raises,
and a run stopped while its messages are still being worked on."""

from __future__ import annotations

import time

import pytest

from tests.e2e.harness import APPS, Federation, wait_for

pytestmark = pytest.mark.e2e

FAULTY = APPS / "faulty"
DETERMINISTIC = APPS / "deterministic"


def node_ids_by_partition(fed: Federation) -> dict[int, int]:
    rows = fed.sql("SELECT (node_config->>'partition-id')::int, id FROM nodes")
    return dict(rows)


def replies_by_partition(fed: Federation, run_id: int) -> list[tuple[int, int | None, str | None]]:
    return fed.sql(  # type: ignore[no-any-return]
        """
        SELECT (n.node_config->>'partition-id')::int, m.error_code, m.error_reason
        FROM messages m JOIN nodes n ON n.id = m.src_node_id
        WHERE m.run_id = %s AND m.reply_to IS NOT NULL ORDER BY 1
        """,
        [run_id],
    )


def test_client_exception_becomes_an_error_reply_and_the_node_keeps_serving(
    federation: Federation,
) -> None:
    fed = federation
    procs = fed.federation(2)
    nodes = node_ids_by_partition(fed)

    first = fed.submit(FAULTY, "--run-config", 'mode="client-raises" fail-partition=1')
    run = fed.wait_run(first, timeout=60)
    assert run["status"] == "finished", run  # FedAvg goes on with the reply that worked

    # ErrorCode.CLIENT_APP_RAISED_EXCEPTION == 1, the reason is "Type: message".
    assert replies_by_partition(fed, first) == [(0, None, None), (1, 1, "ValueError: boom")]
    failed = fed.sql(
        "SELECT count(*) FROM messages WHERE run_id = %s AND error_reason LIKE %s",
        [first, "%ValueError: boom%"],
    )
    assert failed == [(1,)]
    # Every instruction got exactly one reply and is done.
    assert fed.sql(
        "SELECT state::text, count(*) FROM messages WHERE run_id = %s AND reply_to IS NULL "
        "GROUP BY 1",
        [first],
    ) == [("done", 2)]
    # num_replies counts the replies that were aggregated, num_failures the others.
    assert fed.sql(
        "SELECT num_replies, num_failures FROM round_history WHERE run_id = %s", [first]
    ) == [(1, 1)]
    log = fed.cli("log", str(first)).stdout
    assert "round 1/1 train: 1 ok, 1 failed" in log
    assert f"node {nodes[1]}: ValueError: boom" in log
    assert "FINAL w=[2.0, 2.0, 2.0]" in log  # only partition 0's update was averaged

    # The node workers survived the exception: the same processes serve the next run.
    fed.check_alive()
    workers_before = {
        r[0]
        for r in fed.sql(
            "SELECT DISTINCT claimed_by FROM messages WHERE run_id = %s AND claimed_by IS NOT NULL",
            [first],
        )
    }
    second = fed.submit(DETERMINISTIC)
    assert fed.wait_run(second, timeout=60)["status"] == "finished"
    workers_after = {
        r[0]
        for r in fed.sql(
            "SELECT DISTINCT claimed_by FROM messages WHERE run_id = %s AND claimed_by IS NOT NULL",
            [second],
        )
    }
    assert len(workers_before) == 2
    assert workers_after == workers_before
    assert all(p.alive() for p in procs)
    assert (
        fed.scalar(
            "SELECT count(*) FROM messages WHERE run_id = %s AND error_code IS NOT NULL", [second]
        )
        == 0
    )


def test_serverapp_exception_fails_the_run_with_its_reason(federation: Federation) -> None:
    fed = federation
    fed.federation(2)
    result = fed.cli(
        "run",
        str(FAULTY),
        "--run-config",
        'mode="server-raises"',
        "--stream",
        check=False,
        timeout=60,
    )
    assert result.returncode == 1, result
    run_id = int(fed.scalar("SELECT max(id) FROM runs"))
    reason = "RuntimeError: server exploded: 42"
    assert result.stdout.rstrip().splitlines()[-1] == f"run {run_id} failed: {reason}"
    assert "about to fail" in result.stdout

    assert fed.sql("SELECT status::text, reason FROM runs WHERE id = %s", [run_id]) == [
        ("failed", reason)
    ]
    listed = fed.run_info(run_id)
    assert listed["status"] == "failed"
    assert reason in listed["reason"]
    table = fed.cli("ls").stdout
    assert "failed" in table and "server exploded: 42" in table

    log = fed.cli("log", str(run_id)).stdout
    assert "about to fail" in log
    assert "[stderr] Traceback (most recent call last):" in log
    assert f"[stderr] {reason}" in log
    assert "ServerApp exited with code 1: failed" in log


def test_stop_ends_a_running_run_and_cancels_its_undelivered_messages(
    federation: Federation,
) -> None:
    fed = federation
    fed.federation(2, concurrency=1)  # one message at a time: the second one stays queued
    run_id = fed.submit(FAULTY, "--run-config", 'mode="slow" client-sleep=8.0')
    fed.wait_run(run_id, statuses=["running"], timeout=30)

    def states() -> dict[str, int]:
        return dict(
            fed.sql(
                "SELECT state::text, count(*) FROM messages "
                "WHERE run_id = %s AND reply_to IS NULL GROUP BY 1",
                [run_id],
            )
        )

    wait_for(lambda: states() == {"claimed": 2, "queued": 2}, 30, "two claimed, two queued")

    stopped = fed.cli("stop", str(run_id))
    assert stopped.stdout.strip() == f"run {run_id}: stopping"
    run = fed.wait_run(run_id, timeout=30)
    assert run["status"] == "stopped", run
    assert run["reason"] == "stopped by user"

    # The rows are kept, every undelivered instruction cancelled, no reply written.
    assert states() == {"cancelled": 4}
    assert (
        fed.scalar(
            "SELECT count(*) FROM messages WHERE run_id = %s AND reply_to IS NOT NULL", [run_id]
        )
        == 0
    )
    assert fed.scalar(
        "SELECT bool_and(finished_at IS NOT NULL AND lease_until IS NULL) FROM messages "
        "WHERE run_id = %s",
        [run_id],
    )
    log = fed.cli("log", str(run_id)).stdout
    assert "sent 4 messages, waiting for replies" in log
    assert "stopped" in log
    # A stopped run cannot be stopped again.
    again = fed.cli("stop", str(run_id), check=False)
    assert again.returncode != 0 and "already ended (stopped)" in again.stderr

    # The nodes are still serving: a new run finishes once their slow handlers return.
    second = fed.submit(DETERMINISTIC)
    assert fed.wait_run(second, timeout=60)["status"] == "finished"
    assert states() == {"cancelled": 4}
    assert (
        fed.scalar(
            "SELECT count(*) FROM messages WHERE run_id = %s AND reply_to IS NOT NULL", [run_id]
        )
        == 0
    )


def test_node_stops_promptly_and_hands_back_a_message_its_handler_still_runs(
    federation: Federation,
) -> None:
    """SIGTERM while a ClientApp handler is busy: the worker waits at most one lease,
    hands the message back to the queue, goes offline and exits 0; a new worker for
    the same node picks the message up again."""
    fed = federation
    fed.federation(2, concurrency=1)
    run_id = fed.submit(FAULTY, "--run-config", 'mode="slow" client-sleep=60.0')

    def states() -> dict[str, int]:
        return dict(
            fed.sql(
                "SELECT state::text, count(*) FROM messages "
                "WHERE run_id = %s AND reply_to IS NULL GROUP BY 1",
                [run_id],
            )
        )

    wait_for(lambda: states() == {"claimed": 2, "queued": 2}, 30, "two claimed, two queued")
    node0 = next(p for p in fed.procs if p.name == "node-node0")
    started = time.monotonic()
    report = fed.stop([node0])
    took = time.monotonic() - started
    lease = float(fed.env["FLPG_LEASE"])
    poll = float(fed.env["FLPG_POLL"])
    assert report.clean, f"{report}\n{node0.log()}"
    assert took < lease + poll + 3, f"took {took:.1f} s\n{node0.log()}"
    assert "handed 1 claimed message(s) back to the queue" in node0.log()
    assert states() == {"claimed": 1, "queued": 3}
    assert fed.sql("SELECT status::text FROM nodes WHERE name = 'node0'") == [("offline",)]

    # Another worker for node0 takes the message again (a second attempt).
    fed.node("node0", "partition-id=0 num-partitions=2", concurrency=1, proc_name="node0-again")
    wait_for(lambda: states() == {"claimed": 2, "queued": 2}, 30, "node0's message reclaimed")
    attempts = fed.sql(
        "SELECT max(m.attempts) FROM messages m JOIN nodes n ON n.id = m.dst_node_id "
        "WHERE m.run_id = %s AND n.name = 'node0'",
        [run_id],
    )
    assert attempts == [(2,)]
    # Teardown stops the remaining workers while their handlers sleep: they too must
    # exit cleanly and in time (the fixture checks).


def test_a_serverapp_whose_exec_died_ends_its_run(federation: Federation) -> None:
    """The exec is SIGKILLed mid-run: its ServerApp (own session) notices at its next
    heartbeat, records the run failed with that reason, and exits; its messages are
    cancelled, and stopping the run afterwards is refused as it already ended."""
    fed = federation
    _, exec_, *_ = fed.federation(2, concurrency=1)
    run_id = fed.submit(FAULTY, "--run-config", 'mode="slow" client-sleep=60.0')
    fed.wait_run(run_id, statuses=["running"], timeout=30)
    wait_for(
        lambda: (
            fed.scalar(
                "SELECT count(*) FROM messages WHERE run_id = %s AND state = 'claimed'", [run_id]
            )
            == 2
        ),
        30,
        "both nodes to claim a message",
    )
    pid = int(fed.scalar("SELECT serverapp_pid FROM runs WHERE id = %s", [run_id]))
    assert fed.kill(exec_) == -9
    wait_for(lambda: pid not in fed.tagged_pids(), 10, "the ServerApp to exit")
    run = fed.wait_run(run_id, timeout=15)
    assert (run["status"], run["reason"]) == ("failed", "its exec worker went away"), run
    stop = fed.cli("stop", str(run_id), check=False)
    assert stop.returncode == 5 and "already ended" in stop.stderr
    states = dict(
        fed.sql(
            "SELECT state::text, count(*) FROM messages WHERE run_id = %s AND reply_to IS NULL "
            "GROUP BY 1",
            [run_id],
        )
    )
    assert states == {"cancelled": 4}


def waiting_on_notify(fed: Federation) -> bool:
    """Whether the node worker and the exec both wait on NOTIFY: each has run LISTEN on
    its listening connection, and its working connection has been idle for a second
    (its first pass is done; the next comes only after its poll interval)."""
    listening, idle = fed.sql(
        "SELECT count(*) FILTER (WHERE application_name IN ('flpg-node-listen', 'flpg-exec-listen')"
        "  AND state = 'idle' AND query LIKE 'LISTEN %'),"
        " count(*) FILTER (WHERE application_name IN ('flpg-node', 'flpg-exec')"
        "  AND state = 'idle' AND query <> '' AND state_change < now() - interval '1 second')"
        " FROM pg_stat_activity WHERE datname = current_database()"
    )[0]
    return bool(listening == 2 and idle == 2)


def test_idle_workers_stop_well_within_their_poll_interval(federation: Federation) -> None:
    """SIGTERM reaches a worker waiting on NOTIFY at once, not after its poll."""
    fed = federation
    fed.env["FLPG_POLL"] = "10"
    node = fed.node("node0", "partition-id=0")
    exec_ = fed.exec()
    fed.wait_nodes_online(1)
    wait_for(lambda: waiting_on_notify(fed), 30, "the node and the exec to wait on NOTIFY")
    for proc in (node, exec_):
        started = time.monotonic()
        report = fed.stop([proc])
        took = time.monotonic() - started
        assert report.clean, f"{report}\n{proc.log()}"
        assert took < 3.0, f"{proc.name} took {took:.1f} s to stop\n{proc.log()}"
