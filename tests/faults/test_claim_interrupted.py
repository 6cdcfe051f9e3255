"""Claims interrupted before their launch: an exec SIGKILLed right after it claimed
runs, and a PostgreSQL fast restart that lost the answer of an exec's claim. Either
way runs are left `starting` under an exec that will never launch them; the link
takes them back to the queue (next attempt) one bound after their claim, `flpg stop`
ends such a run at once, and the others finish with the right model.

A third case cuts the exec's connection as it records a launch (run_mark_running):
the exec reconnects and records it (or finds it recorded), and the run goes on as
its first attempt.

Each test makes the interrupted phase exact: the exec is frozen (SIGSTOP), the runs
are put in the state its claim leaves (`starting`, its exec id, `claimed_at`), then
the fault is injected, and `claimed_at` is aged in SQL instead of waiting the bound.
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest

from flpg.link.worker import LAUNCH
from flpg.local.cluster import Cluster
from tests.db._proxy import CuttingProxy
from tests.e2e.conftest import make_env
from tests.e2e.harness import APPS, Federation, Proc
from tests.e2e.test_multitenancy import expected_final, final_of
from tests.faults.support import (
    INTERVALS,
    SLACK,
    STARTUP,
    assert_at_most_one_reply,
    budget,
    run_states,
    wait_until,
)

pytestmark = pytest.mark.e2e

ROUNDS = 2
CONFIG = f"num-server-rounds={ROUNDS} delay=0.1 min-nodes=2"
RUNS = 3
TAKE_BACK_BOUND = INTERVALS.sweep + SLACK
"""From aging the claims past LAUNCH to the runs being back in the queue."""


def exec_id_of(fed: Federation, proc: Proc) -> str:
    """The exec id the exec process logged when it started."""
    found = wait_until(
        fed,
        lambda: re.search(r"exec (exec:\S+) launching", proc.log()),
        STARTUP,
        f"{proc.name} to start",
    )
    return str(found.group(1))


def claim_as(fed: Federation, exec_id: str, run_ids: list[int]) -> None:
    """Leave `run_ids` as the exec's claim leaves them: `starting`, not yet launched."""
    claimed = fed.sql(
        "UPDATE runs SET status = 'starting', exec_id = %s, claimed_at = now()"
        " WHERE id = ANY(%s) AND status = 'pending' RETURNING id",
        [exec_id, run_ids],
    )
    assert sorted(r[0] for r in claimed) == sorted(run_ids)


def age_claims(fed: Federation) -> None:
    fed.sql(
        "UPDATE runs SET claimed_at = now() - make_interval(secs => %s) WHERE status = 'starting'",
        [2 * LAUNCH],
    )


def freeze(proc: Proc, sig: signal.Signals) -> None:
    os.killpg(proc.pid, sig)


def assert_finished_as_second_attempt(fed: Federation, run_ids: list[int], exec_id: str) -> None:
    for run_id in run_ids:
        info = fed.wait_run(run_id, timeout=90)
        assert info["status"] == "finished", f"{info}\n{fed.logs()}"
        attempt, launched_by = fed.sql("SELECT attempt, exec_id FROM runs WHERE id = %s", [run_id])[
            0
        ]
        assert attempt == 2
        assert launched_by == exec_id
        assert final_of(fed, run_id, "FINAL") == pytest.approx(
            [expected_final([0, 1], 1.0, rounds=ROUNDS)] * 3
        )
        assert "did not start its ServerApp within" in fed.log_of(run_id)
    assert_at_most_one_reply(fed)


@pytest.mark.timeout(budget(6 * STARTUP, TAKE_BACK_BOUND, 3 * 90))
def test_runs_claimed_by_an_exec_killed_before_launching_them(federation: Federation) -> None:
    fed = federation
    fed.link()
    first = fed.exec("exec-1", max_runs=4)
    for i in range(2):
        fed.node(f"node{i}", f"partition-id={i} num-partitions=2")
    fed.wait_nodes_online(2)
    dead_exec = exec_id_of(fed, first)

    freeze(first, signal.SIGSTOP)
    run_ids = [fed.submit(APPS / "tenant", "--run-config", CONFIG) for _ in range(RUNS + 1)]
    claim_as(fed, dead_exec, run_ids)
    fed.kill(first)  # right after its claim: nothing was launched

    # `flpg stop` ends a run that is stuck starting at once.
    stopped = run_ids.pop()
    result = fed.cli("stop", str(stopped))
    assert result.stdout.strip() == f"run {stopped}: stopped", result
    assert run_states(fed)[stopped] == ("stopped", "stopped by user")

    # Within the bound the others are not touched; past it the link takes them back.
    assert {run_states(fed)[r][0] for r in run_ids} == {"starting"}
    age_claims(fed)
    wait_until(
        fed,
        lambda: {run_states(fed)[r][0] for r in run_ids} == {"pending"},
        TAKE_BACK_BOUND,
        "the link to take the runs back",
    )
    second = fed.exec("exec-2", max_runs=4)
    assert_finished_as_second_attempt(fed, run_ids, exec_id_of(fed, second))
    assert run_states(fed)[stopped] == ("stopped", "stopped by user")
    assert fed.scalar("SELECT attempt FROM runs WHERE id = %s", [stopped]) == 1


@pytest.mark.timeout(budget(6 * STARTUP, 30, TAKE_BACK_BOUND, INTERVALS.offline_after, 3 * 90))
def test_runs_whose_claim_was_answered_into_a_database_restart(
    private_cluster: Cluster, tmp_path: Path
) -> None:
    fed = Federation(make_env(private_cluster.url(), tmp_path), tmp_path)
    try:
        procs = fed.federation(2)
        exec_proc = procs[1]
        exec_id = exec_id_of(fed, exec_proc)

        # The exec's claim commits; then the database restarts (fast) before the exec
        # hears of it: no process is killed, and the exec does not know it has them.
        freeze(exec_proc, signal.SIGSTOP)
        run_ids = [fed.submit(APPS / "tenant", "--run-config", CONFIG) for _ in range(RUNS)]
        claim_as(fed, exec_id, run_ids)
        assert private_cluster.stop(timeout=30)
        freeze(exec_proc, signal.SIGCONT)
        private_cluster.ensure_running()

        age_claims(fed)
        # The link judges liveness one offline_after after it reconnected.
        wait_until(
            fed,
            lambda: all(run_states(fed)[r][0] != "starting" for r in run_ids),
            INTERVALS.offline_after + TAKE_BACK_BOUND + STARTUP,
            "the link to take the runs back",
        )
        assert_finished_as_second_attempt(fed, run_ids, exec_id)  # the same, living exec
        for proc in fed.procs:
            assert proc.alive(), f"{proc.name} exited:\n{proc.tail()}"
        assert "database unavailable" in exec_proc.log(), exec_proc.log()
    finally:
        report = fed.stop_all()
    assert not report.left, f"processes left running: {report.left}"
    assert report.clean, f"unclean shutdown: {report}\n{fed.logs()}"


MARK_RUNNING = b"SET status = 'running', started_at = now()"
"""Text of run_mark_running (sql/runs.sql): the exec records that it launched a run."""


@pytest.mark.timeout(budget(5 * STARTUP, 90))
@pytest.mark.parametrize("lost", ["statement", "answer"])
def test_a_launch_whose_record_was_cut_off_goes_on(federation: Federation, lost: str) -> None:
    """The exec's connection drops as it records a launch: the statement never reaches
    the server, or it commits and its answer never comes back."""
    fed = federation
    proxy = CuttingProxy(fed.url)
    try:
        fed.link()
        exec_proc = fed.start("exec", "exec", "--db", proxy.url)
        for i in range(2):
            fed.node(f"node{i}", f"partition-id={i} num-partitions=2")
        fed.wait_nodes_online(2)
        exec_id = exec_id_of(fed, exec_proc)
        proxy.arm(MARK_RUNNING, before=lost == "statement")

        run_id = fed.submit(APPS / "tenant", "--run-config", CONFIG)
        info = fed.wait_run(run_id, timeout=90)
        assert info["status"] == "finished", f"{info}\n{fed.log_of(run_id)}\n{fed.logs()}"
        assert len(proxy.cuts) == 1
        assert fed.sql("SELECT attempt, exec_id FROM runs WHERE id = %s", [run_id]) == [
            (1, exec_id)
        ]
        assert final_of(fed, run_id, "FINAL") == pytest.approx(
            [expected_final([0, 1], 1.0, rounds=ROUNDS)] * 3
        )
        assert "database unavailable" in exec_proc.log(), exec_proc.log()
        report = fed.stop_all()  # while the proxy still serves the exec
        assert report.clean, f"unclean shutdown: {report}\n{fed.logs()}"
    finally:
        proxy.close()
