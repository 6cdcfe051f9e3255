"""PostgreSQL restarts (fast shutdown, then start) while a run trains: every worker
and the ServerApp reconnect with backoff and LISTEN again, and the run finishes
with the right model, no instruction answered twice and no worker exited.

The test runs its own private cluster (the session's shared one must not restart).
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


def test_a_run_survives_a_database_restart(private_cluster: Cluster, tmp_path: Path) -> None:
    fed = Federation(make_env(private_cluster.url(), tmp_path), tmp_path)
    try:
        fed.federation(2)
        run_id = fed.submit(
            APPS / "tenant", "--run-config", f"num-server-rounds={ROUNDS} delay=0.5 min-nodes=2"
        )
        wait_for(
            lambda: (
                (
                    fed.scalar("SELECT max(round) FROM round_metrics WHERE run_id = %s", [run_id])
                    or 0
                )
                >= 2
            ),
            60,
            "two rounds before the restart",
        )
        # The database comes back only once every worker has met the outage and backed off.
        outage(fed, private_cluster)

        info = fed.wait_run(run_id, timeout=120)
        assert info["status"] == "finished", f"{info}\n{fed.logs()}"
        assert final_of(fed, run_id, "FINAL") == pytest.approx(
            [expected_final([0, 1], 1.0, rounds=ROUNDS)] * 3
        )
        assert (
            fed.scalar(
                "SELECT count(*) FROM (SELECT reply_to FROM messages WHERE reply_to IS NOT NULL"
                " GROUP BY reply_to HAVING count(*) > 1) d"
            )
            == 0
        )
        rounds = fed.sql(
            "SELECT round FROM round_metrics WHERE run_id = %s AND phase = 'train' ORDER BY 1",
            [run_id],
        )
        assert [r[0] for r in rounds] == list(range(1, ROUNDS + 1))
        # Every worker is still up, said what happened, and is serving again.
        for proc in fed.procs:
            assert proc.alive(), f"{proc.name} exited:\n{proc.tail()}"
        assert any("database unavailable" in p.log() for p in fed.procs), fed.logs()
        run2 = fed.submit(APPS / "tenant", "--run-config", "num-server-rounds=1 min-nodes=2")
        assert fed.wait_run(run2, timeout=60)["status"] == "finished", fed.logs()
    finally:
        report = fed.stop_all()
    assert not report.left, f"processes left running: {report.left}"
