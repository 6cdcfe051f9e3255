"""PostgreSQL crashes (`pg_ctl stop -m immediate`) while a run trains. Round-transient
payloads (replies, broadcasts no checkpoint references) live in an UNLOGGED table, so
the crash empties it; the link notices, marks the lost arrays and restarts the run
from its last checkpoint as its next attempt, and the run ends with the model an
uninterrupted run computes. Checkpoints (WAL-logged) survive.

The test runs its own private cluster (the session's shared one must not crash).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from flpg.local.cluster import Cluster
from tests.e2e.conftest import make_env
from tests.e2e.harness import APPS, Federation, wait_for
from tests.e2e.test_multitenancy import expected_final, final_of
from tests.faults.support import outage

pytestmark = pytest.mark.e2e

ROUNDS = 6


def _round(fed: Federation, run_id: int) -> int:
    found = fed.scalar("SELECT max(round) FROM round_metrics WHERE run_id = %s", [run_id])
    return int(found or 0)


def test_a_crash_loses_transient_payloads_and_the_run_resumes_from_its_checkpoint(
    private_cluster: Cluster, tmp_path: Path
) -> None:
    fed = Federation(make_env(private_cluster.url(), tmp_path), tmp_path)
    try:
        fed.federation(2)
        run_id = fed.submit(
            APPS / "tenant", "--run-config", f"num-server-rounds={ROUNDS} delay=0.5 min-nodes=2"
        )
        wait_for(lambda: _round(fed, run_id) >= 2, 60, "two rounds before the crash")
        transient = fed.scalar(
            "SELECT count(*) FROM arrays WHERE run_id = %s AND NOT durable"
            " AND collected_at IS NULL",
            [run_id],
        )
        assert transient > 0, "the run had no round-transient payloads in flight"
        # Checkpointed arrays are durable: the model a resume needs is WAL-logged.
        assert (
            fed.scalar(
                "SELECT count(*) FROM checkpoint_arrays ca JOIN arrays a ON a.id = ca.array_id"
                " WHERE ca.run_id = %s AND NOT a.durable",
                [run_id],
            )
            == 0
        )
        outage(fed, private_cluster, immediate=True)

        info = fed.wait_run(run_id, timeout=180)
        assert info["status"] == "finished", f"{info}\n{fed.logs()}"
        assert final_of(fed, run_id, "FINAL") == pytest.approx(
            [expected_final([0, 1], 1.0, rounds=ROUNDS)] * 3
        )
        attempt, reason_log = fed.sql(
            "SELECT r.attempt, (SELECT string_agg(line, E'\\n') FROM run_logs l"
            " WHERE l.run_id = r.id) FROM runs r WHERE r.id = %s",
            [run_id],
        )[0]
        assert attempt == 2, fed.log_of(run_id)
        assert "PostgreSQL crashed and lost round-transient payloads of attempt 1" in reason_log
        lost = fed.scalar(
            "SELECT count(*) FROM arrays WHERE run_id = %s AND lost_at IS NOT NULL", [run_id]
        )
        assert lost > 0
        link = next(p for p in fed.procs if p.argv[1:2] == ["link"])
        assert "lost its round-transient payloads in a crash" in link.log(), link.tail()
        rounds = fed.sql(
            "SELECT DISTINCT round FROM round_metrics WHERE run_id = %s AND phase = 'train'"
            " ORDER BY 1",
            [run_id],
        )
        assert [r[0] for r in rounds] == list(range(1, ROUNDS + 1))
        for proc in fed.procs:
            assert proc.alive(), f"{proc.name} exited:\n{proc.tail()}"
    finally:
        report = fed.stop_all()
    assert not report.left, f"processes left running: {report.left}"
