"""An exec worker killed with SIGKILL: its ServerApps notice at their next heartbeat.
A run with restarts left is adopted by another exec (a new attempt from its
checkpoint) and finishes with the right model; a run without fails with a reason
naming the exec, within a bounded time.

The kill lands mid-run by construction, not by timing: the gated app's ClientApps
hold every train round from round 2 on until the test creates the gate file, so when
the exec is killed both runs have checkpointed round 1 and have their round-2
instructions claimed, and neither can finish before the gate opens. The gate opens
only once attempt 1 of the adopted run is over (its attempt is 2) and the orphaned
run has failed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.harness import APPS, Federation
from tests.e2e.test_multitenancy import expected_final, final_of
from tests.faults.support import INTERVALS, SLACK, STARTUP, wait_until

pytestmark = pytest.mark.e2e

GATED = APPS / "gated"
ROUNDS = 3
GATE_ROUND = 2


def _held_at_gate(fed: Federation, run_id: int) -> bool:
    """Run `run_id` is running, has checkpointed the round before the gate, and both
    nodes hold (have claimed) its first gated round's instruction."""
    status = fed.scalar("SELECT status::text FROM runs WHERE id = %s", [run_id])
    checkpoint = fed.scalar("SELECT max(round) FROM checkpoints WHERE run_id = %s", [run_id])
    held = fed.scalar(
        "SELECT count(*) FROM messages WHERE run_id = %s AND reply_to IS NULL"
        " AND group_id = %s AND state = 'claimed'",
        [run_id, str(GATE_ROUND)],
    )
    return status == "running" and checkpoint == GATE_ROUND - 1 and held == 2


def test_runs_of_a_killed_exec_are_adopted_or_failed(
    federation: Federation, tmp_path: Path
) -> None:
    fed = federation
    gate = tmp_path / "gate"
    config = f'num-server-rounds={ROUNDS} gate-round={GATE_ROUND} min-nodes=2 gate="{gate}"'
    fed.link()
    first = fed.exec("exec-1", max_runs=2)
    for i in range(2):
        # Room for attempt 1's held ClientApps of both runs and attempt 2's.
        fed.node(f"node{i}", f"partition-id={i} num-partitions=2", concurrency=4)
    fed.wait_nodes_online(2)
    adopted = fed.submit(GATED, "--run-config", config, "--max-restarts", "1")
    orphaned = fed.submit(GATED, "--run-config", config)
    for run_id in (adopted, orphaned):
        wait_until(
            fed,
            lambda run_id=run_id: _held_at_gate(fed, run_id),
            3 * STARTUP,
            f"run {run_id} held at round {GATE_ROUND}",
        )
    # The database's clock times the failure: polling `flpg ls` and starting exec-2
    # on a loaded machine must not count against the ServerApp's bound.
    killed_at = fed.scalar("SELECT clock_timestamp()")
    fed.kill(first)
    fed.exec("exec-2", max_runs=2)

    info = fed.wait_run(orphaned, timeout=30)
    took = fed.scalar(
        "SELECT extract(epoch FROM finished_at - %s)::float8 FROM runs WHERE id = %s",
        [killed_at, orphaned],
    )
    assert info["status"] == "failed", info
    assert info["reason"].startswith("its exec worker went away"), info
    bound = INTERVALS.heartbeat + SLACK
    print(f"TIMING exec death: orphaned run failed {took:.2f} s after the kill", flush=True)
    assert took < bound, f"failed {took:.1f} s after the kill (bound {bound:.1f} s)"

    wait_until(
        fed,
        lambda: fed.scalar("SELECT attempt FROM runs WHERE id = %s", [adopted]) == 2,
        STARTUP,
        f"run {adopted}'s second attempt",
    )
    gate.touch()
    info = fed.wait_run(adopted, timeout=90)
    assert info["status"] == "finished", fed.logs()
    assert fed.scalar("SELECT attempt FROM runs WHERE id = %s", [adopted]) == 2
    exec_ids = fed.scalar("SELECT exec_id FROM runs WHERE id = %s", [adopted])
    assert str(fed.procs[-1].pid) in exec_ids  # launched by exec-2
    assert final_of(fed, adopted, "FINAL") == pytest.approx(
        [expected_final([0, 1], 1.0, rounds=ROUNDS)] * 3
    )
    assert "restart 1 of 1 after: its exec worker went away" in fed.log_of(adopted)
