"""A whole federated run with real processes: link, exec, two nodes, `flpg run --stream`.

The app (apps/deterministic) makes every update and weight known in advance: node
with partition-id p returns arrays + (p + 1) with num-examples 10 * (p + 1), so the
FedAvg result after 3 rounds is exactly computable.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.e2e.harness import FinishedRun

pytestmark = pytest.mark.e2e

ROUNDS = 3
NUM_NODES = 2


def expected_final_arrays() -> dict[str, np.ndarray]:
    """FedAvg's result computed as its aggregator does (float64, weighted sum / total):
    with two replies, a + b == b + a, so the reply order cannot change a bit."""
    arrays = {"w": np.arange(6, dtype=np.float64).reshape(2, 3), "b": np.zeros(2)}
    for _ in range(ROUNDS):
        new = {}
        for name, value in arrays.items():
            acc = np.zeros(value.shape, dtype=np.float64)
            total = 0.0
            for pid in range(NUM_NODES):
                weight = float(10 * (pid + 1))
                acc += (value + (pid + 1)) * weight
                total += weight
            new[name] = acc / total
        arrays = new
    return arrays


def final_line(log: str) -> dict[str, np.ndarray]:
    lines = [line for line in log.splitlines() if line.startswith("FINAL ")]
    assert len(lines) == 1, log
    return {k: np.asarray(v, dtype=np.float64) for k, v in json.loads(lines[0][6:]).items()}


def test_run_finishes_with_the_exact_weighted_mean(finished_run: FinishedRun) -> None:
    fed, run_id = finished_run.fed, finished_run.run_id
    assert fed.scalar("SELECT status::text FROM runs WHERE id = %s", [run_id]) == "finished"
    final = final_line(fed.cli("log", str(run_id)).stdout)
    expected = expected_final_arrays()
    assert list(final) == ["w", "b"]
    for name, value in expected.items():
        assert final[name].shape == value.shape
        assert np.array_equal(final[name], value), (name, final[name], value)
    # Sanity: each round moves every entry by (1*10 + 2*20) / 30 = 5/3.
    np.testing.assert_allclose(final["w"], np.arange(6).reshape(2, 3) + 5.0)
    np.testing.assert_allclose(final["b"], np.full(2, 5.0))


def test_stream_follows_the_run_to_its_end(finished_run: FinishedRun) -> None:
    out = finished_run.stream.stdout
    run_id = finished_run.run_id
    assert out.splitlines()[0].startswith(f"submitted run {run_id} (e2e-deterministic, 2 nodes)")
    assert "FINAL " in out
    assert out.rstrip().splitlines()[-1] == f"run {run_id} finished"
    assert finished_run.stream.stderr == ""


def test_each_train_instruction_has_exactly_one_reply(finished_run: FinishedRun) -> None:
    fed, run_id = finished_run.fed, finished_run.run_id
    rows = fed.sql(
        """
        SELECT i.group_id, i.dst_node_id, i.state::text, count(r.id), bool_and(r.error_code IS NULL)
        FROM messages i LEFT JOIN messages r ON r.reply_to = i.id
        WHERE i.run_id = %s AND i.reply_to IS NULL
        GROUP BY i.id ORDER BY i.group_id, i.dst_node_id
        """,
        [run_id],
    )
    node_ids = [r[0] for r in fed.sql("SELECT id FROM nodes ORDER BY id")]
    assert len(node_ids) == NUM_NODES
    assert rows == [
        (str(rnd), node, "done", 1, True) for rnd in range(1, ROUNDS + 1) for node in node_ids
    ]
    types = fed.sql("SELECT DISTINCT message_type FROM messages WHERE run_id = %s", [run_id])
    assert types == [("train",)]
    # The replies carry the metrics the ClientApp sent, queryable as jsonb.
    weights = fed.sql(
        """
        SELECT n.node_config->>'partition-id', r.metrics->'metrics'->>'num-examples'
        FROM messages r JOIN nodes n ON n.id = r.src_node_id
        WHERE r.run_id = %s AND r.reply_to IS NOT NULL
        GROUP BY 1, 2 ORDER BY 1
        """,
        [run_id],
    )
    assert weights == [("0", "10"), ("1", "20")]


def test_broadcast_arrays_are_stored_once_per_round(finished_run: FinishedRun) -> None:
    fed, run_id = finished_run.fed, finished_run.run_id
    # Each round's two instructions reference the same two stored arrays.
    per_round = fed.sql(
        """
        SELECT i.group_id, count(DISTINCT ma.array_id), count(*)
        FROM messages i JOIN message_arrays ma ON ma.message_id = i.id
        WHERE i.run_id = %s AND i.reply_to IS NULL
        GROUP BY i.group_id ORDER BY i.group_id
        """,
        [run_id],
    )
    assert per_round == [(str(r), 2, 4) for r in range(1, ROUNDS + 1)]


def test_ls_reports_the_run_finished(finished_run: FinishedRun) -> None:
    runs = finished_run.fed.runs()
    assert [r["run_id"] for r in runs] == [finished_run.faulty_run_id, finished_run.run_id]
    run = runs[1]
    assert run["app"] == "e2e-deterministic"
    assert run["status"] == "finished"
    assert run["reason"] is None
    assert run["nodes"] == NUM_NODES
    assert run["rounds"] == ROUNDS
    assert run["started_at"] and run["finished_at"]


def test_log_shows_the_serverapp_output(finished_run: FinishedRun) -> None:
    result = finished_run.fed.cli("log", str(finished_run.run_id))
    log = result.stdout
    assert result.stderr == ""
    assert f"starting FedAvg: {ROUNDS} rounds, run {finished_run.run_id}" in log
    for rnd in range(1, ROUNDS + 1):
        assert f"round {rnd}/{ROUNDS} train: 2 ok, 0 failed" in log
    assert f"finished {ROUNDS} rounds" in log
    assert "FINAL {" in log


def test_round_history_has_one_train_row_per_round(finished_run: FinishedRun) -> None:
    rows = finished_run.fed.sql(
        "SELECT round, phase, num_replies, num_failures, (metrics->>'loss')::float8 "
        "FROM round_history WHERE run_id = %s ORDER BY round, phase",
        [finished_run.run_id],
    )
    assert [r[:4] for r in rows] == [(r, "train", 2, 0) for r in range(1, ROUNDS + 1)]
    # loss is weighted like the arrays: (1.0 * 10 + 0.5 * 20) / 30
    for row in rows:
        assert row[4] == pytest.approx(20 / 30)


def test_workers_stop_cleanly_on_sigterm(finished_run: FinishedRun) -> None:
    report = finished_run.stop_report
    assert report.clean, report
    statuses = finished_run.fed.sql("SELECT name, status::text FROM nodes ORDER BY name")
    assert statuses == [("node0", "offline"), ("node1", "offline")]


def test_apps_wrote_as_run_roles_that_were_dropped(finished_run: FinishedRun) -> None:
    """The ServerApp sent every instruction as its launch's own role, each node's
    ClientApp wrote its replies as a role bound to the run and that node; once the
    workers stopped, no run role is left."""
    fed, run_id = finished_run.fed, finished_run.run_id
    senders = fed.sql(
        "SELECT DISTINCT m.created_by, rr.kind, rr.run_id FROM messages m"
        " LEFT JOIN run_roles rr ON rr.role_name = m.created_by"
        " WHERE m.run_id = %s AND m.reply_to IS NULL",
        [run_id],
    )
    assert len(senders) == 1 and senders[0][1:] == ("serverapp", run_id), senders
    repliers = fed.sql(
        "SELECT bool_and(rr.kind = 'clientapp' AND rr.run_id = m.run_id"
        "                AND m.src_node_id = ANY(rr.node_ids)), count(DISTINCT m.created_by)"
        " FROM messages m LEFT JOIN run_roles rr ON rr.role_name = m.created_by"
        " WHERE m.run_id = %s AND m.reply_to IS NOT NULL",
        [run_id],
    )
    assert repliers == [(True, NUM_NODES)]
    left = fed.sql(
        "SELECT rolname FROM pg_roles WHERE rolname IN (SELECT role_name FROM run_roles)"
        " UNION ALL SELECT role_name FROM run_roles WHERE dropped_at IS NULL"
    )
    assert left == []
