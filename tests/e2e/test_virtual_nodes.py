"""`flpg node --virtual N`: one worker process serves N node ids, each with its own
partition and its own context state, in one ClientApp process per run."""

from __future__ import annotations

import pytest

from tests.e2e.harness import APPS, Federation
from tests.e2e.test_multitenancy import expected_final, final_of
from tests.e2e.test_tenancy import one_reply_per_instruction, rounds_of

pytestmark = pytest.mark.e2e

N = 20


def test_one_worker_serves_a_federation_of_virtual_nodes(federation: Federation) -> None:
    fed = federation
    fed.link()
    fed.exec()
    fed.start("sim", "node", "--name", "sim", "--virtual", str(N), "--concurrency", "8")
    nodes = fed.wait_nodes_online(N)
    assert sorted(n["name"] for n in nodes) == sorted(f"sim-{i}" for i in range(N))
    assert {(n["name"], n["node_config"]["partition-id"]) for n in nodes} == {
        (f"sim-{i}", i) for i in range(N)
    }
    assert {n["node_config"]["num-partitions"] for n in nodes} == {N}

    trained = fed.submit(APPS / "tenant", "--run-config", f"min-nodes={N}")
    probed = fed.submit(APPS / "probe", "--run-config", f"rounds=3 min-nodes={N}")
    assert fed.wait_run(trained, timeout=120)["status"] == "finished", fed.logs()
    assert fed.wait_run(probed, timeout=120)["status"] == "finished", fed.logs()

    # Each virtual node trained on its own partition: FedAvg weighted by partition.
    assert final_of(fed, trained, "FINAL") == pytest.approx(
        [expected_final(list(range(N)), 1.0)] * 3
    )
    # Each has its own context state (counting its own rounds), in one process.
    rounds = rounds_of(fed, probed)
    for node_id, reply in rounds[3].items():
        assert reply["count"] == 3, (node_id, reply)
    assert len({reply["pid"] for r in rounds.values() for reply in r.values()}) == 1
    assert len(rounds[3]) == N


def test_virtual_refuses_a_node_config_that_sets_the_partition(federation: Federation) -> None:
    result = federation.cli(
        "node", "--name", "sim", "--virtual", "3", "--node-config", "partition-id=1", check=False
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "flpg: error: --node-config sets 'partition-id', which --virtual assigns to each "
        "node; remove it"
    )
    bad = federation.cli("node", "--name", "sim", "--virtual", "0", check=False)
    assert bad.returncode == 2 and "--virtual" in bad.stderr


def test_a_virtual_node_whose_handler_raises_gets_an_error_reply_and_the_others_train(
    federation: Federation,
) -> None:
    """The messages of many virtual nodes are handled in batches: the one whose
    handler raises gets its error reply (code 1), every other one its reply."""
    fed = federation
    fed.link()
    fed.exec()
    fed.start("sim", "node", "--name", "sim", "--virtual", str(N), "--concurrency", "4")
    fed.wait_nodes_online(N)
    run_id = fed.submit(APPS / "faulty", "--run-config", 'mode="client-raises" fail-partition=3')
    assert fed.wait_run(run_id, timeout=120)["status"] == "finished", fed.logs()
    replies = fed.sql(
        "SELECT (n.node_config->>'partition-id')::int, m.error_code, m.error_reason"
        " FROM messages m JOIN nodes n ON n.id = m.src_node_id"
        " WHERE m.run_id = %s AND m.reply_to IS NOT NULL ORDER BY 1",
        [run_id],
    )
    assert replies == [(p, 1, "ValueError: boom") if p == 3 else (p, None, None) for p in range(N)]
    assert one_reply_per_instruction(fed, run_id)
    assert "FINAL w=[2.0, 2.0, 2.0]" in fed.log_of(run_id)
