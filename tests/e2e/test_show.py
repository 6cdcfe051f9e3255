"""`flpg show` of a finished run: the one store read (`store.runs.details`) rendered
as JSON and as text, both from the same facts the database holds."""

from __future__ import annotations

import json

import pytest

from tests.e2e.harness import FinishedRun

pytestmark = pytest.mark.e2e

SHOW_KEYS = {
    "run_id",
    "app",
    "app_hash",
    "status",
    "reason",
    "priority",
    "attempt",
    "max_restarts",
    "checkpoint_round",
    "run_config",
    "submitted_at",
    "started_at",
    "finished_at",
    "exec_id",
    "nodes",
    "messages",
    "rounds",
    "accounting",
    "artifacts",
}


def test_show_json_reports_the_run_its_nodes_messages_and_rounds(
    finished_run: FinishedRun,
) -> None:
    fed, run_id = finished_run.fed, finished_run.run_id
    doc = fed.cli("show", str(run_id), "--format", "json").json()
    assert set(doc) == SHOW_KEYS
    assert (doc["run_id"], doc["status"], doc["attempt"]) == (run_id, "finished", 1)
    assert doc["run_config"]["num-server-rounds"] == 3
    node_ids = fed.scalar(
        "SELECT array_agg(node_id ORDER BY node_id) FROM run_nodes WHERE run_id = %s", [run_id]
    )
    assert sorted(n["id"] for n in doc["nodes"]) == node_ids
    assert len(node_ids) == 2
    messages = fed.scalar("SELECT count(*) FROM messages WHERE run_id = %s", [run_id])
    assert sum(m["count"] for m in doc["messages"]) == messages > 0
    assert {m["kind"] for m in doc["messages"]} == {"instruction", "reply"}
    train = [r for r in doc["rounds"] if r["phase"] == "train"]
    assert [r["round"] for r in train] == [1, 2, 3]
    assert all((r["replies"], r["failures"]) == (2, 0) for r in train)


def test_show_text_prints_the_same_facts(finished_run: FinishedRun) -> None:
    fed, run_id = finished_run.fed, finished_run.run_id
    doc = fed.cli("show", str(run_id), "--format", "json").json()
    lines = fed.cli("show", str(run_id)).stdout.splitlines()
    assert lines[0] == f"{'run_id:':14} {run_id}"
    assert f"{'status:':14} finished" in lines
    assert f"{'run_config:':14} {json.dumps(doc['run_config'])}" in lines
    nodes = ", ".join(f"{n['id']}:{n['name']} ({n['status']})" for n in doc["nodes"])
    assert f"{'nodes:':14} {nodes}" in lines
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["ROUND", "PHASE"])
    table = [line.split()[:4] for line in lines[header + 1 :]]
    expected = [
        [str(r["round"]), r["phase"], str(r["replies"]), str(r["failures"])] for r in doc["rounds"]
    ]
    assert table == expected
