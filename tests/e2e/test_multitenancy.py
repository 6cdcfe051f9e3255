"""Many runs at once on one federation, each on its own node selection.

The example of the design: three nodes; run 1 uses all three; run 2, submitted
while run 1 trains, uses only nodes 1 and 3; both finish, node 2 never sees a
message of run 2, and each final model is what its own updates imply.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.harness import Federation

pytestmark = pytest.mark.e2e

APP = Path(__file__).parent / "apps" / "tenant"


def expected_final(pids: list[int], step: float, rounds: int = 3) -> float:
    weights = [10 * (p + 1) for p in pids]
    update = sum(w * step * (p + 1) for w, p in zip(weights, pids, strict=True)) / sum(weights)
    return rounds * update


def final_of(federation: Federation, run_id: int, tag: str) -> list[float]:
    for line in federation.log_of(run_id).splitlines():
        if line.startswith(tag + " "):
            return [float(v) for v in json.loads(line[len(tag) + 1 :])]
    raise AssertionError(f"run {run_id} printed no {tag} line:\n{federation.log_of(run_id)}")


def test_two_concurrent_runs_with_their_own_node_selection(federation: Federation) -> None:
    federation.federation(3)
    ids = {n["name"]: n["id"] for n in federation.nodes()}
    run1 = federation.submit(APP, "--run-config", "delay=3.0 min-nodes=3")
    federation.wait_run(run1, statuses=("running",), timeout=30)
    run2 = federation.submit(
        APP, "--nodes", "node0,node2", "--run-config", "step=100.0 delay=0.1 min-nodes=2"
    )
    assert federation.wait_run(run1, timeout=90)["status"] == "finished"
    assert federation.wait_run(run2, timeout=90)["status"] == "finished"

    # The selection is stored, and run 2's messages only ever went to nodes 1 and 3.
    selected = federation.sql("SELECT node_id FROM run_nodes WHERE run_id = %s ORDER BY 1", [run2])
    assert [r[0] for r in selected] == sorted([ids["node0"], ids["node2"]])
    dsts = federation.sql(
        "SELECT DISTINCT coalesce(dst_node_id, src_node_id) FROM messages WHERE run_id = %s",
        [run2],
    )
    assert {r[0] for r in dsts} == {ids["node0"], ids["node2"]}
    assert (
        federation.scalar(
            "SELECT count(*) FROM messages WHERE run_id = %s AND %s IN (dst_node_id, src_node_id)",
            [run2, ids["node1"]],
        )
        == 0
    )
    assert final_of(federation, run2, "NODES") == sorted([ids["node0"], ids["node2"]])

    # The runs overlapped: run 2 started before run 1 finished.
    overlap = federation.scalar(
        "SELECT r2.started_at < r1.finished_at FROM runs r1, runs r2"
        " WHERE r1.id = %s AND r2.id = %s",
        [run1, run2],
    )
    assert overlap is True

    # No cross-talk: each final model is exactly what its own updates imply.
    assert final_of(federation, run1, "FINAL") == pytest.approx(
        [expected_final([0, 1, 2], 1.0)] * 3
    )
    assert final_of(federation, run2, "FINAL") == pytest.approx([expected_final([0, 2], 100.0)] * 3)
    assert (
        federation.scalar(
            "SELECT count(*) FROM messages WHERE run_id IN (%s, %s) AND reply_to IS NULL"
            " AND message_type = 'train'",
            [run1, run2],
        )
        == 3 * 3 + 3 * 2
    )


def test_selection_naming_an_unknown_node_or_matching_none_is_rejected(
    federation: Federation,
) -> None:
    federation.federation(2)
    before = federation.scalar("SELECT count(*) FROM runs")
    unknown = federation.cli("run", str(APP), "--nodes", "node0,nosuch", check=False)
    assert unknown.returncode != 0 and "nosuch" in unknown.stderr
    none = federation.cli("run", str(APP), "--node-selector", "region=mars", check=False)
    assert none.returncode != 0 and "matches no" in none.stderr
    malformed = federation.cli("run", str(APP), "--nodes", "1,,3", check=False)
    assert malformed.returncode != 0
    for result in (unknown, none, malformed):
        assert len(result.stderr.strip().splitlines()) == 1
    assert federation.scalar("SELECT count(*) FROM runs") == before
