"""Replies FedAvg cannot use (wrong shape or dtype, NaN, no weight) are rejected one
by one, counted as failures of the round with their reason stored on the reply's
row, and the round aggregates the valid replies."""

from __future__ import annotations

import pytest

from tests.e2e.harness import APPS, Federation
from tests.e2e.test_multitenancy import final_of

pytestmark = pytest.mark.e2e


def test_unusable_replies_are_rejected_with_their_reason_and_the_round_goes_on(
    federation: Federation,
) -> None:
    fed = federation
    fed.federation(5, concurrency=1)
    run_id = fed.submit(APPS / "badreply")
    info = fed.wait_run(run_id, timeout=90)
    assert info["status"] == "finished", fed.logs()
    assert final_of(fed, run_id, "FINAL") == [1.0, 1.0, 1.0]  # partition 0's update only

    rejected = dict(
        fed.sql(
            "SELECT (n.node_config->>'partition-id')::int, m.rejected_reason"
            " FROM messages m JOIN nodes n ON n.id = m.src_node_id"
            " WHERE m.run_id = %s AND m.reply_to IS NOT NULL",
            [run_id],
        )
    )
    assert rejected[0] is None
    assert rejected[1] == "array 'w' is float64[5], the global model's is float64[3]"
    assert rejected[2] == "array 'w' is float32[3], the global model's is float64[3]"
    assert rejected[3] == "array 'w' holds NaN or Inf values"
    assert "num-examples" in rejected[4]
    row = fed.sql(
        "SELECT num_replies, num_failures FROM round_metrics WHERE run_id = %s"
        " AND round = 1 AND phase = 'train'",
        [run_id],
    )
    assert row == [(1, 4)]
    log = fed.log_of(run_id)
    assert "round 1/1 train: 1 ok, 4 failed" in log
    assert log.count(" rejected: ") == 4
