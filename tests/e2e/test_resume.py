"""Checkpoint and resume with real processes: a ServerApp killed with SIGKILL after
round k continues from its checkpoint (by `flpg resume`, or by itself with
`--max-restarts`) and ends with exactly the arrays of an uninterrupted run."""

from __future__ import annotations

import os
import signal

import pytest

from tests.e2e.harness import APPS, Federation, wait_for
from tests.e2e.test_multitenancy import expected_final, final_of

pytestmark = pytest.mark.e2e

TENANT = APPS / "tenant"
ROUNDS = 5
CONFIG = f"num-server-rounds={ROUNDS} delay=0.6 min-nodes=2"


def kill_serverapp_after_round(fed: Federation, run_id: int, k: int) -> int:
    """SIGKILL the run's ServerApp once its checkpoint has reached round `k`."""
    wait_for(
        lambda: (
            (fed.scalar("SELECT max(round) FROM checkpoints WHERE run_id = %s", [run_id]) or 0) >= k
        ),
        60,
        f"run {run_id}'s checkpoint of round {k}",
    )
    pid = fed.scalar("SELECT serverapp_pid FROM runs WHERE id = %s", [run_id])
    checkpointed = fed.scalar("SELECT round FROM checkpoints WHERE run_id = %s", [run_id])
    os.kill(pid, signal.SIGKILL)
    return int(checkpointed)


def train_instructions(fed: Federation, run_id: int, state: str | None = None) -> int:
    return int(
        fed.scalar(
            "SELECT count(*) FROM messages WHERE run_id = %s AND reply_to IS NULL"
            " AND (%s::text IS NULL OR state::text = %s)",
            [run_id, state, state],
        )
    )


def test_resumed_run_ends_with_the_arrays_of_an_uninterrupted_run(
    federation: Federation,
) -> None:
    fed = federation
    fed.federation(2)
    reference = fed.submit(TENANT, "--run-config", CONFIG)  # never interrupted
    run_id = fed.submit(TENANT, "--run-config", CONFIG)
    k = kill_serverapp_after_round(fed, run_id, 2)
    info = fed.wait_run(run_id, timeout=30)
    assert info["status"] == "failed" and "SIGKILL" in info["reason"], info
    done_before = train_instructions(fed, run_id, "done")

    resumed = fed.cli("resume", str(run_id))
    assert f"run {run_id}: resuming after round {k} as attempt 2" in resumed.stdout
    info = fed.wait_run(run_id, timeout=90)
    assert info["status"] == "finished", fed.logs()
    assert fed.wait_run(reference, timeout=90)["status"] == "finished"
    final = final_of(fed, run_id, "FINAL")
    assert final == final_of(fed, reference, "FINAL")  # bit for bit
    assert final == pytest.approx([expected_final([0, 1], 1.0, rounds=ROUNDS)] * 3)
    log = fed.log_of(run_id)
    assert f"resuming FedAvg after round {k} of {ROUNDS}, run {run_id} attempt 2" in log
    # Attempt 2 trained only the remaining rounds: 2 nodes x (ROUNDS - k) messages.
    assert train_instructions(fed, run_id, "done") - done_before == 2 * (ROUNDS - k)
    assert fed.scalar("SELECT attempt FROM runs WHERE id = %s", [run_id]) == 2
    assert fed.scalar("SELECT round FROM checkpoints WHERE run_id = %s", [run_id]) == ROUNDS
    # Every round's metrics are there once, before and after the crash.
    rounds = fed.sql(
        "SELECT round FROM round_metrics WHERE run_id = %s AND phase = 'train' ORDER BY 1",
        [run_id],
    )
    assert [r[0] for r in rounds] == list(range(1, ROUNDS + 1))

    # Resuming a finished run is refused in one line, and nothing changes.
    again = fed.cli("resume", str(run_id), check=False)
    assert again.returncode == 5
    assert (
        again.stderr.strip()
        == f"flpg: error: run {run_id} already finished; there is nothing to resume"
    )


def test_max_restarts_resumes_a_killed_serverapp_by_itself(federation: Federation) -> None:
    fed = federation
    fed.federation(2)
    reference = fed.submit(TENANT, "--run-config", CONFIG)
    run_id = fed.submit(TENANT, "--run-config", CONFIG, "--max-restarts", "1")
    kill_serverapp_after_round(fed, run_id, 1)
    wait_for(
        lambda: fed.scalar("SELECT attempt FROM runs WHERE id = %s", [run_id]) == 2,
        30,
        "the automatic restart",
    )
    info = fed.wait_run(run_id, timeout=90)
    assert info["status"] == "finished", fed.logs()
    assert fed.wait_run(reference, timeout=90)["status"] == "finished"
    assert final_of(fed, run_id, "FINAL") == final_of(fed, reference, "FINAL")
    events = fed.log_of(run_id)
    assert "restart 1 of 1 after: ServerApp was killed by SIGKILL" in events


def test_resume_without_checkpoint_is_refused(federation: Federation) -> None:
    fed = federation
    fed.federation(1)
    # Never completes a round: it waits for two nodes of a one-node federation.
    run_id = fed.submit(APPS / "tenant", "--run-config", "min-nodes=2")
    fed.cli("stop", str(run_id))
    assert fed.wait_run(run_id, timeout=30)["status"] == "stopped"
    result = fed.cli("resume", str(run_id), check=False)
    assert result.returncode == 5
    assert "has no checkpoint" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert fed.scalar("SELECT status::text FROM runs WHERE id = %s", [run_id]) == "stopped"
