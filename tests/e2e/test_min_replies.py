"""A round that aggregates fewer replies than the strategy's minimum fails its run
with the reason, beside runs that keep their minimum and finish (real processes:
a link, an exec, two nodes; apps/failing raises on purpose from a chosen round)."""

from __future__ import annotations

import pytest

from tests.e2e.harness import APPS, Federation

pytestmark = pytest.mark.e2e

FAILING = APPS / "failing"


def tallies(fed: Federation, run_id: int) -> list[tuple[int, str, int, int]]:
    return fed.sql(  # type: ignore[no-any-return]
        "SELECT round, phase, num_replies, num_failures FROM round_history"
        " WHERE run_id = %s ORDER BY round, phase",
        [run_id],
    )


def checkpoint_round(fed: Federation, run_id: int) -> int:
    return int(fed.scalar("SELECT round FROM checkpoints WHERE run_id = %s", [run_id]))


def test_runs_below_their_minimum_fail_with_the_reason_and_the_others_finish(
    federation: Federation,
) -> None:
    fed = federation
    fed.federation(2)
    every_train_fails = fed.submit(FAILING, "--run-config", "train-fails-from=2")
    every_eval_fails = fed.submit(FAILING, "--run-config", "evaluate-fails-from=1")
    one_of_two_needed = fed.submit(
        FAILING,
        "--run-config",
        'train-fails-from=1 healthy-partitions="0" min-train-nodes=1 fraction-evaluate=0.0',
    )
    two_of_two_needed = fed.submit(
        FAILING, "--run-config", 'train-fails-from=1 healthy-partitions="0"'
    )
    healthy = fed.submit(FAILING, "--run-config", "train-fails-from=0")
    info = {
        r: fed.wait_run(r, timeout=120)
        for r in (
            every_train_fails,
            every_eval_fails,
            one_of_two_needed,
            two_of_two_needed,
            healthy,
        )
    }

    # Every training reply of round 2 failed: the run fails in round 2 with that reason,
    # round 3 is never sent, and the checkpoint stays at round 1 (resume retries round 2).
    run = info[every_train_fails]
    assert run["status"] == "failed", fed.logs()
    assert "round 2: 0 training replies, fewer than min_train_nodes=2" in run["reason"]
    assert tallies(fed, every_train_fails) == [
        (1, "evaluate", 2, 0),
        (1, "train", 2, 0),
        (2, "train", 0, 2),
    ]
    assert checkpoint_round(fed, every_train_fails) == 1
    assert (
        fed.scalar(
            "SELECT count(*) FROM messages WHERE run_id = %s AND group_id = '3'",
            [every_train_fails],
        )
        == 0
    )
    log = fed.log_of(every_train_fails)
    assert "round 2/3 train: 0 ok, 2 failed" in log
    assert "ValueError: training failed on purpose" in log
    assert "FINAL" not in log

    run = info[every_eval_fails]
    assert run["status"] == "failed"
    assert "round 1: 0 evaluate replies, fewer than min_evaluate_nodes=2" in run["reason"]
    assert tallies(fed, every_eval_fails) == [(1, "evaluate", 0, 2), (1, "train", 2, 0)]

    # One node fails in every round: enough for min_train_nodes=1, not for 2.
    run = info[one_of_two_needed]
    assert run["status"] == "finished", run
    assert run["reason"] is None
    assert tallies(fed, one_of_two_needed) == [(r, "train", 1, 1) for r in (1, 2, 3)]
    assert "FINAL [3.0, 3.0, 3.0]" in fed.log_of(one_of_two_needed)
    run = info[two_of_two_needed]
    assert run["status"] == "failed"
    assert "round 1: 1 training replies, fewer than min_train_nodes=2" in run["reason"]
    assert checkpoint_round(fed, two_of_two_needed) == 0

    # Nothing fails: the run finishes as before.
    run = info[healthy]
    assert run["status"] == "finished", run
    assert "FINAL [3.0, 3.0, 3.0]" in fed.log_of(healthy)
    assert all(ok == 2 and failed == 0 for _, _, ok, failed in tallies(fed, healthy))
