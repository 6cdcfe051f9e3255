"""An exec worker killed with SIGKILL: its ServerApps notice at their next heartbeat.
A run with restarts left is adopted by another exec (a new attempt from its
checkpoint) and finishes with the right model; a run without fails with a reason
naming the exec, within a bounded time."""

from __future__ import annotations

import time

import pytest

from tests.e2e.harness import APPS, Federation, wait_for
from tests.e2e.test_multitenancy import expected_final, final_of
from tests.faults.support import INTERVALS, SLACK

pytestmark = pytest.mark.e2e

ROUNDS = 5
CONFIG = f"num-server-rounds={ROUNDS} delay=0.6 min-nodes=2"


def test_runs_of_a_killed_exec_are_adopted_or_failed(federation: Federation) -> None:
    fed = federation
    fed.link()
    first = fed.exec("exec-1", max_runs=2)
    for i in range(2):
        fed.node(f"node{i}", f"partition-id={i} num-partitions=2")
    fed.wait_nodes_online(2)
    adopted = fed.submit(APPS / "tenant", "--run-config", CONFIG, "--max-restarts", "1")
    orphaned = fed.submit(APPS / "tenant", "--run-config", CONFIG)
    for run_id in (adopted, orphaned):
        wait_for(
            lambda run_id=run_id: (
                (fed.scalar("SELECT max(round) FROM checkpoints WHERE run_id = %s", [run_id]) or 0)
                >= 1
            ),
            60,
            f"run {run_id}'s first checkpoint",
        )
    fed.kill(first)
    killed_at = time.monotonic()
    fed.exec("exec-2", max_runs=2)

    info = fed.wait_run(orphaned, timeout=30)
    took = time.monotonic() - killed_at
    assert info["status"] == "failed", info
    assert info["reason"].startswith("its exec worker went away"), info
    bound = INTERVALS.heartbeat + SLACK
    assert took < bound, f"failed {took:.1f} s after the kill (bound {bound:.1f} s)"

    info = fed.wait_run(adopted, timeout=90)
    assert info["status"] == "finished", fed.logs()
    assert fed.scalar("SELECT attempt FROM runs WHERE id = %s", [adopted]) == 2
    exec_ids = fed.scalar("SELECT exec_id FROM runs WHERE id = %s", [adopted])
    assert str(fed.procs[-1].pid) in exec_ids  # launched by exec-2
    assert final_of(fed, adopted, "FINAL") == pytest.approx(
        [expected_final([0, 1], 1.0, rounds=ROUNDS)] * 3
    )
    assert "restart 1 of 1 after: its exec worker went away" in fed.log_of(adopted)
