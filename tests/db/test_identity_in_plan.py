"""The caller's identity is folded into a statement's plan (trust.v8): a hot
connection looks up its node ids and run when it plans a statement, not at each
execution, and a plan kept by a connection never serves another role.

The lookups are IMMUTABLE so that the planner evaluates them; what makes that safe is
that PostgreSQL plans a statement under row-level security again when it runs as
another role, which is tried here with one connection switching roles."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from psycopg import sql as pgsql

from flpg.store.db import connect

from ._trust_world import World, built_world, generic_plan, positional


@pytest.fixture(scope="module")
def world(module_db_url: str) -> Iterator[World]:
    with built_world(module_db_url) as w:
        yield w


@pytest.mark.parametrize("who", ["node_a", "ca1", "sa1"])
def test_a_hot_connection_plans_its_identity_as_a_constant(world: World, who: str) -> None:
    n = world.nodes
    expected = {
        "node_a": f"'{{{n['A1']},{n['A2']}}}'::bigint[]",
        "ca1": f"'{{{n['A1']}}}'::bigint[]",
        "sa1": f"'{world.runs['run1']}'::bigint",
    }[who]
    with connect(world.url_as(who), hot=True) as conn:
        plan = generic_plan(conn, "SELECT id FROM messages")
        hot = generic_plan(conn, *_hot_statement(world, who))
    assert expected in plan, plan
    for text in (plan, hot):
        assert "flpg_my_node_ids" not in text and "flpg_my_run_id" not in text, text


def _hot_statement(world: World, who: str) -> tuple[Any, ...]:
    """A hot statement of `who` and its parameters: a ServerApp's reply pull, a node's
    or ClientApp's claim."""
    if who == "sa1":
        types = {"run_id": "bigint", "ids": "bigint[]", "again": "boolean"}
        return positional("messages_pull_replies", types), world.runs["run1"], [1], False
    types = {"node_ids": "bigint[]", "limit": "int", "worker": "text", "lease": "float8"}
    return positional("messages_claim", types), [world.nodes["A1"]], 1, "w", 30.0


def test_a_kept_plan_never_serves_another_role(world: World) -> None:
    """One admin connection keeps one prepared statement and runs it as three roles in
    turn (and again as the first): each run sees that role's rows only."""
    m = world.msgs
    expected = {
        "node_a": {m["i1"], m["i3"], m["i4"], m["i8"]},  # A1's and A2's, both runs
        "node_b": {m["i2"], m["i6"], m["i7"], m["r2"]},
        "ca1": {m["i1"], m["i4"], m["i8"]},  # run1's on A1
    }
    with connect(world.url, hot=True) as conn, conn.transaction(force_rollback=True):
        seen = {}
        for who in ("node_a", "node_b", "ca1", "node_a"):
            conn.execute(pgsql.SQL("SET LOCAL ROLE {}").format(pgsql.Identifier(world.roles[who])))
            found = conn.execute("SELECT id FROM messages ORDER BY id", prepare=True).fetchall()
            seen[who] = {r[0] for r in found}
            assert seen[who] == expected[who], who
