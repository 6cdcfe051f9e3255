"""How the hot statements read tables under row-level security (trust.v6): a policy
filters the rows a statement's own conditions found, it never chooses the scan. A
policy's run identity used as an index key made a reply write scan every message its
run ever had, and a payload read every array of the run (their cost grew with the
run's length); an EXISTS on the chunk tables hashed every array the reader may see.

Each statement is planned as the role that runs it, after the run has a long history
(so a scan over it would be visible), and the plan is read from EXPLAIN."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from ..conftest import scratch_database
from ._trust_world import World, as_role, built_world, generic_plan, named, positional

HISTORY = 400
"""Finished instructions, and arrays, run1 had before the statements are planned; and
instructions of run2 claimed at the same time (so that finding a claimed instruction
through the claimed ones does not look cheap either)."""


@pytest.fixture(scope="module", params=["young", "analyzed"])
def world(pg_server: Any, request: pytest.FixtureRequest) -> Iterator[World]:
    """Without statistics (a young table), and with them (the link's refresh)."""
    with (
        scratch_database(pg_server, "flpg_plans", pg_server.template_dbname) as url,
        built_world(url) as w,
    ):
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(
                "INSERT INTO messages (run_id, dst_node_id, message_type, ttl_seconds, deadline,"
                " state, finished_at) SELECT %s, %s, 'train', 60, now(), 'done', now()"
                " FROM generate_series(1, %s)",
                (w.runs["run1"], w.nodes["A1"], HISTORY),
            )
            admin.execute(
                "INSERT INTO messages (run_id, dst_node_id, message_type, ttl_seconds, deadline,"
                " state, claimed_by, claimed_at, lease_until) SELECT %s, %s, 'train', 60,"
                " now() + interval '1 hour', 'claimed', 'other', now(), now() + interval '1 min'"
                " FROM generate_series(1, %s)",
                (w.runs["run2"], w.nodes["A1"], HISTORY),
            )
            admin.execute(
                "INSERT INTO arrays (run_id, dtype, shape, nbytes, chunk_size, n_chunks, digest,"
                " durable) SELECT %s, 'uint8', '{4}', 4, 4, 1, %s, false"
                " FROM generate_series(1, %s)",
                (w.runs["run1"], bytes(16), HISTORY),
            )
            # run1's finished instructions to A1 carried those arrays, one each
            admin.execute(
                "INSERT INTO message_arrays (message_id, record_name, position, array_name,"
                " array_id) SELECT m.id, 'r', 0, 'w', a.id"
                " FROM (SELECT id, row_number() OVER (ORDER BY id) AS k FROM messages"
                "       WHERE run_id = %s AND id > %s) AS m"
                " JOIN (SELECT id, row_number() OVER (ORDER BY id) AS k FROM arrays"
                "       WHERE run_id = %s AND id > %s) AS a USING (k)",
                (w.runs["run1"], max(w.msgs.values()), w.runs["run1"], max(w.arrays.values())),
            )
            if request.param == "analyzed":
                admin.execute("ANALYZE")
        yield w


def plan_nodes(world: World, who: str, name: str, **params: Any) -> list[dict[str, Any]]:
    """Every node of the plan of named statement `name` as `who` (not executed)."""
    sql, bound = named(name, **params)
    with as_role(world, who) as conn:
        (doc,) = conn.execute(f"EXPLAIN (FORMAT JSON) {sql}", bound).fetchone()  # type: ignore[misc]
    return flatten((json.loads(doc) if isinstance(doc, str) else doc)[0]["Plan"])


def flatten(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Every node of an EXPLAIN (FORMAT JSON) plan tree, its root included."""
    out: list[dict[str, Any]] = []
    todo = [plan]
    while todo:
        node = todo.pop()
        out.append(node)
        todo.extend(node.get("Plans", []))
    return out


def run_scans(nodes: list[dict[str, Any]]) -> list[str]:
    """Scans of messages or arrays whose index condition is a run id."""
    return [
        f"{n['Node Type']} on {n['Relation Name']} using {n.get('Index Name')}"
        for n in nodes
        if n.get("Relation Name") in ("messages", "arrays") and "run_id" in n.get("Index Cond", "")
    ]


def hashed_policies(nodes: list[dict[str, Any]]) -> list[str]:
    return [n["Filter"] for n in nodes if "hashed SubPlan" in n.get("Filter", "")]


def test_a_reply_write_finds_its_instruction_among_the_claimed_ones(world: World) -> None:
    nodes = plan_nodes(
        world,
        "ca1",
        "messages_insert_replies",
        replies=json.dumps([{"reply_to": world.msgs["i4"]}]),
        worker="w",
        links="[]",
    )
    assert run_scans(nodes) == []
    updated = [n for n in nodes if n.get("Relation Name") == "messages" and "Index Name" in n]
    assert updated, "the instruction is found through an index"


@pytest.mark.parametrize("who", ["sa1", "ca1", "node_a"])
def test_a_payload_listing_reads_the_arrays_of_its_messages_only(world: World, who: str) -> None:
    nodes = plan_nodes(world, who, "message_arrays_list", message_ids=[world.msgs["i1"]])
    assert run_scans(nodes) == []
    assert hashed_policies(nodes) == []


def test_a_checkpoint_listing_reads_the_checkpoint_arrays_only(world: World) -> None:
    nodes = plan_nodes(world, "sa1", "checkpoint_arrays_list", run_id=world.runs["run1"])
    assert run_scans(nodes) == []


def kept_plan_nodes(world: World, who: str, sql: str, *params: Any) -> list[dict[str, Any]]:
    """Every node of the generic plan a hot connection of `who` keeps for `sql`."""
    with as_role(world, who) as conn:
        conn.execute("SET plan_cache_mode = force_generic_plan")
        return flatten(generic_plan(conn, sql, *params, fmt="JSON"))


@pytest.mark.parametrize("who", ["sa1", "ca1", "node_a"])
def test_a_kept_listing_looks_each_array_up_by_its_key(world: World, who: str) -> None:
    """The generic plan knows neither the messages nor the run: under the ServerApp's
    policy (`run_id + 0`) it guessed one array for the run and scanned them all."""
    cases = [(positional("message_arrays_list", {"message_ids": "bigint[]"}), [world.msgs["i1"]])]
    if who == "sa1":
        cases.append(
            (positional("checkpoint_arrays_list", {"run_id": "bigint"}), world.runs["run1"])
        )
    for sql, param in cases:
        nodes = kept_plan_nodes(world, who, sql, param)
        reads = [n for n in nodes if n.get("Relation Name") == "arrays" and n.get("Alias") == "a"]
        assert reads, "the statement reads arrays"
        assert {(n["Node Type"], n.get("Index Name")) for n in reads} == {
            ("Index Scan", "pk_arrays")
        }, sql


@pytest.mark.parametrize("who", ["sa1", "ca1", "node_a"])
def test_a_chunk_read_checks_each_chunk_by_its_array(world: World, who: str) -> None:
    nodes = plan_nodes(world, who, "array_chunks_stream", array_ids=[world.arrays["X1"]])
    assert hashed_policies(nodes) == []
    assert run_scans(nodes) == []
