"""Runs sharing nodes and execs with real processes: isolation of app code, fair and
concurrent serving, stopping one run, and several workers for one node or exec."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.e2e.harness import APPS, Federation, wait_for

pytestmark = pytest.mark.e2e

PROBE = APPS / "probe"


def rounds_of(fed: Federation, run_id: int) -> dict[int, dict[int, dict[str, Any]]]:
    """`ROUND r {node: reply}` lines of the probe app: round -> node id -> reply."""
    found: dict[int, dict[int, dict[str, Any]]] = {}
    for line in fed.log_of(run_id).splitlines():
        m = re.match(r"ROUND (\d+) (.*)$", line)
        if m:
            found[int(m.group(1))] = {int(k): v for k, v in json.loads(m.group(2)).items()}
    return found


def one_reply_per_instruction(fed: Federation, run_id: int) -> bool:
    return bool(
        fed.scalar(
            "SELECT bool_and(n = 1) FROM (SELECT count(r.id) AS n FROM messages i"
            " LEFT JOIN messages r ON r.reply_to = i.id"
            " WHERE i.run_id = %s AND i.reply_to IS NULL GROUP BY i.id) AS c",
            [run_id],
        )
    )


def test_one_runs_crashing_or_raising_clientapp_leaves_the_other_run_alone(
    federation: Federation,
) -> None:
    """Run A's ClientApp raises on node1 in round 1 and kills its own process on node0
    in round 2, while run B trains on the same two nodes at the same time. A's failed
    messages get error replies naming the cause; node0's next message of A runs in a
    fresh process with fresh context state; node1 keeps A's process and state; B sees
    none of it: one process per node for the whole run, its state counting 1, 2, 3,
    and its messages overlapping A's in time on the same node (concurrency 2)."""
    fed = federation
    fed.federation(2, concurrency=2)
    ids = {n["name"]: n["id"] for n in fed.nodes()}
    n0, n1 = ids["node0"], ids["node1"]
    run_a = fed.submit(
        PROBE,
        "--run-config",
        f"delay=1.5 min-nodes=2 crash-node={n0} raise-node={n1} fault-round=2",
    )
    run_b = fed.submit(PROBE, "--run-config", "delay=1.5 min-nodes=2")
    assert fed.wait_run(run_a, timeout=120)["status"] == "finished", fed.logs()
    assert fed.wait_run(run_b, timeout=120)["status"] == "finished", fed.logs()

    a, b = rounds_of(fed, run_a), rounds_of(fed, run_b)
    assert sorted(a) == sorted(b) == [1, 2, 3], fed.log_of(run_a) + fed.log_of(run_b)

    # Run A, node0: its process died in round 2; round 3 ran in a new one, state reset.
    crashed = a[2][n0]["error"]
    assert f"ClientApp process of run {run_a} on node {n0} exited with code 3" in crashed
    assert a[3][n0]["pid"] != a[1][n0]["pid"]
    assert (a[1][n0]["count"], a[3][n0]["count"]) == (1, 1)
    # Run A, node1: the handler raised, the process and its state carried on.
    assert a[2][n1]["error"] == "ValueError: probe raised on purpose"
    assert a[1][n1]["pid"] == a[3][n1]["pid"]
    assert (a[1][n1]["count"], a[3][n1]["count"]) == (1, 3)

    # Run B: untouched. One process per node, state never shared with run A.
    for node in (n0, n1):
        assert [b[r][node]["count"] for r in (1, 2, 3)] == [1, 2, 3]
        assert {b[r][node]["pid"] for r in (1, 2, 3)} == {b[1][node]["pid"]}
        assert {b[r][node]["run"] for r in (1, 2, 3)} == {run_b}
        assert b[1][node]["pid"] not in {a[r][node].get("pid") for r in (1, 2, 3)}

    # The error replies are in the database with the client-exception code.
    errors = fed.sql(
        "SELECT src_node_id, error_code FROM messages WHERE run_id = %s AND error_code"
        " IS NOT NULL ORDER BY 1",
        [run_a],
    )
    assert errors == sorted([(n0, 1), (n1, 1)])
    assert one_reply_per_instruction(fed, run_a) and one_reply_per_instruction(fed, run_b)

    # Concurrency 2: on each node a message of A and one of B were worked on together.
    overlapping = fed.scalar(
        "SELECT count(DISTINCT a.dst_node_id) FROM messages a JOIN messages b"
        " ON a.dst_node_id = b.dst_node_id"
        " WHERE a.run_id = %s AND b.run_id = %s AND a.reply_to IS NULL AND b.reply_to IS NULL"
        " AND a.claimed_at < b.finished_at AND b.claimed_at < a.finished_at",
        [run_a, run_b],
    )
    assert overlapping == 2


def test_a_flood_from_one_run_does_not_starve_another(federation: Federation) -> None:
    """Run A queues 200 messages on a node that handles one at a time; run B's single
    message, submitted afterwards, is served long before A's backlog drains."""
    fed = federation
    fed.federation(1, concurrency=1)
    run_a = fed.submit(PROBE, "--run-config", 'mode="flood" messages=200 delay=0.05')
    wait_for(
        lambda: (
            fed.scalar(
                "SELECT count(*) FROM messages WHERE run_id = %s AND state = 'queued'", [run_a]
            )
            >= 150
        ),
        60,
        "run A's backlog",
    )
    run_b = fed.submit(PROBE, "--run-config", "rounds=1")
    assert fed.wait_run(run_b, timeout=60)["status"] == "finished", fed.logs()
    assert fed.wait_run(run_a, timeout=120)["status"] == "finished", fed.logs()
    after_b = fed.scalar(
        "SELECT count(*) FROM messages a, messages b WHERE a.run_id = %s AND b.run_id = %s"
        " AND a.reply_to IS NULL AND b.reply_to IS NULL AND a.claimed_at > b.finished_at",
        [run_a, run_b],
    )
    timeline = fed.sql(
        "SELECT run_id, min(claimed_at), max(finished_at), count(*) FROM messages"
        " WHERE reply_to IS NULL GROUP BY 1",
    )
    assert after_b >= 50, f"only {after_b} of A's messages were served after B's: {timeline}"
    assert "DRAINED errors=0" in fed.log_of(run_a)
    assert one_reply_per_instruction(fed, run_a)


def test_stopping_one_run_leaves_the_other_to_finish(federation: Federation) -> None:
    fed = federation
    fed.federation(2, concurrency=2)
    # A's handlers outlast any stop on a loaded machine: its instructions are surely
    # still in the nodes' hands (undelivered) when the stop ends the run.
    run_a = fed.submit(PROBE, "--run-config", "rounds=20 delay=25.0 min-nodes=2")
    run_b = fed.submit(PROBE, "--run-config", "rounds=3 delay=0.5 min-nodes=2")
    wait_for(
        lambda: (
            fed.scalar(
                "SELECT count(*) FROM messages WHERE run_id = %s AND state = 'claimed'", [run_a]
            )
            >= 1
        ),
        60,
        "run A's messages in the nodes' hands",
    )
    fed.cli("stop", str(run_a))
    assert fed.wait_run(run_a, timeout=30)["status"] == "stopped"
    assert fed.wait_run(run_b, timeout=90)["status"] == "finished", fed.logs()
    assert sorted(rounds_of(fed, run_b)) == [1, 2, 3]
    # A's undelivered messages were cancelled, not deleted; B's all got replies.
    states = dict(
        fed.sql(
            "SELECT state::text, count(*) FROM messages WHERE run_id = %s AND reply_to IS NULL"
            " GROUP BY 1",
            [run_a],
        )
    )
    assert states.get("cancelled", 0) >= 1 and set(states) <= {"done", "cancelled"}, states
    assert one_reply_per_instruction(fed, run_b)
    # Each node closes the ended run's ClientApp process.
    for name in ("node0", "node1"):
        proc = next(p for p in fed.procs if p.name == f"node-{name}")
        wait_for(
            lambda proc=proc: f"run {run_a} ended: closing its ClientApp process" in proc.log(),
            30,
            f"{name} closing run {run_a}'s ClientApp process",
        )


def test_two_workers_serving_one_node_split_its_messages(federation: Federation) -> None:
    """`flpg node --name site-a` twice: one node id, messages split between the two
    workers, each claimed once and answered once."""
    fed = federation
    fed.link()
    fed.exec()
    fed.node("site-a", "partition-id=0", concurrency=1, proc_name="site-a-1")
    fed.node("site-a", "partition-id=0", concurrency=1, proc_name="site-a-2")
    fed.wait_nodes_online(1)
    run_id = fed.submit(PROBE, "--run-config", 'mode="flood" messages=30 delay=0.1')
    assert fed.wait_run(run_id, timeout=90)["status"] == "finished", fed.logs()
    assert fed.scalar("SELECT count(*) FROM nodes") == 1
    per_worker = fed.sql(
        "SELECT claimed_by, count(*) FROM messages WHERE run_id = %s AND reply_to IS NULL"
        " GROUP BY 1",
        [run_id],
    )
    assert len(per_worker) == 2 and all(n >= 5 for _, n in per_worker), per_worker
    assert (
        fed.scalar(
            "SELECT max(attempts) FROM messages WHERE run_id = %s AND reply_to IS NULL", [run_id]
        )
        == 1
    )
    assert one_reply_per_instruction(fed, run_id)


def test_two_exec_workers_launch_each_run_exactly_once(federation: Federation) -> None:
    fed = federation
    fed.link()
    fed.exec("exec-1", max_runs=2)
    fed.exec("exec-2", max_runs=2)
    for i in range(2):
        fed.node(f"node{i}", f"partition-id={i}", concurrency=4)
    fed.wait_nodes_online(2)
    # Each run lasts over 3 s, longer than submitting three takes: at some point three
    # run at once, more than one exec's --max-runs, so both execs must launch some.
    runs = [fed.submit(PROBE, "--run-config", "rounds=2 delay=1.5") for _ in range(6)]
    for run_id in runs:
        assert fed.wait_run(run_id, timeout=120)["status"] == "finished", fed.logs()
    execs = [p for p in fed.procs if p.name.startswith("exec-")]
    for run_id in runs:
        launches = sum(len(re.findall(rf"run {run_id}: ServerApp started", p.log())) for p in execs)
        assert launches == 1, f"run {run_id} was launched {launches} times"
    assert fed.scalar("SELECT count(DISTINCT exec_id) FROM runs WHERE id = ANY(%s)", [runs]) == 2
    # No exec ran more ServerApps at once than its --max-runs.
    peak = fed.scalar(
        "SELECT max(c) FROM (SELECT r.exec_id, count(*) AS c FROM runs r JOIN runs o"
        " ON o.exec_id = r.exec_id AND o.started_at <= r.started_at"
        " AND o.finished_at > r.started_at WHERE r.id = ANY(%s) GROUP BY r.id, r.exec_id) x",
        [runs],
    )
    assert peak <= 2


def test_serverapp_addressing_a_node_outside_its_selection_fails_clearly(
    federation: Federation,
) -> None:
    fed = federation
    fed.federation(2)
    ids = {n["name"]: n["id"] for n in fed.nodes()}
    run_id = fed.submit(
        PROBE, "--nodes", "node0", "--run-config", f'mode="outside" target-node={ids["node1"]}'
    )
    info = fed.wait_run(run_id, timeout=60)
    assert info["status"] == "failed"
    assert f"node {ids['node1']} is not in the node selection of run {run_id}" in info["reason"]
    assert fed.scalar("SELECT count(*) FROM messages WHERE run_id = %s", [run_id]) == 0


def test_run_whose_selected_nodes_are_all_offline_fails_within_its_timeout(
    federation: Federation,
) -> None:
    fed = federation
    fed.federation(2)
    node0 = next(p for p in fed.procs if p.name == "node-node0")
    report = fed.stop([node0])
    assert report.clean
    wait_for(
        lambda: fed.sql("SELECT status::text FROM nodes WHERE name = 'node0'") == [("offline",)],
        30,
        "node0 offline",
    )
    run_id = fed.submit(PROBE, "--nodes", "node0", "--run-config", "wait-timeout=3")
    info = fed.wait_run(run_id, timeout=60)
    assert info["status"] == "failed"
    assert (
        "needs 1 online node(s) of its selection but only 0 were online after 3 s"
        in (info["reason"])
    )
    # The wait was bounded by the run's timeout, not by a test or link timeout.
    took = fed.scalar(
        "SELECT extract(epoch FROM finished_at - started_at) FROM runs WHERE id = %s", [run_id]
    )
    assert 3 <= took < 15


def test_exec_rejects_max_runs_zero(federation: Federation) -> None:
    result = federation.cli("exec", "--max-runs", "0", check=False)
    assert result.returncode == 2
    assert "--max-runs" in result.stderr and "0" in result.stderr
