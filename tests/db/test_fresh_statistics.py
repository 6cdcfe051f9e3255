"""The link keeps young coordination tables' statistics fresh (statistics.v1): a
table is analyzed once it changed at least `min_changes` rows and as many rows as it
had at its last ANALYZE, and the plans the hot connections kept are made again with
the statistics. Only a link (or admin) may ask; the database refuses the others."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql as pgsql

from flpg.store import schema as store_schema
from flpg.store._exec import rows
from flpg.store.db import connect

from ._trust_world import KINDS, World, as_role, built_world, denied

TABLES = ("arrays", "messages")


@pytest.fixture(scope="module")
def world(module_db_url: str) -> Iterator[World]:
    with built_world(module_db_url) as w:
        with psycopg.connect(module_db_url, autocommit=True) as admin:
            for table in TABLES:  # autovacuum must not analyze them first
                admin.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
        yield w


def add_history(world: World, n: int) -> None:
    """`n` finished instructions of run1 with a reply each, and `2n` arrays; the
    counts reach the shared statistics before this returns."""
    run, node = world.runs["run1"], world.nodes["A1"]
    with psycopg.connect(world.url, autocommit=True) as admin:
        admin.execute(
            "WITH i AS (INSERT INTO messages (run_id, dst_node_id, message_type, ttl_seconds,"
            " deadline, state, finished_at) SELECT %s, %s, 'train', 60, now(), 'done', now()"
            " FROM generate_series(1, %s) RETURNING id)"
            " INSERT INTO messages (run_id, src_node_id, reply_to, message_type, ttl_seconds,"
            " deadline, state, finished_at) SELECT %s, %s, id, 'train', 60, now(), 'done',"
            " now() FROM i",
            (run, node, n, run, node),
        )
        admin.execute(
            "INSERT INTO arrays (run_id, dtype, shape, nbytes, chunk_size, n_chunks, digest,"
            " durable) SELECT %s, 'uint8', '{4}', 4, 4, 1, %s, false"
            " FROM generate_series(1, %s)",
            (run, bytes(16), 2 * n),
        )
        admin.execute("SELECT pg_stat_force_next_flush()")  # flushed as the session idles
        admin.execute("SELECT 1")


def analyzed_as_link(world: World, min_changes: int = 64) -> list[str]:
    with psycopg.connect(world.url_as("link"), autocommit=True) as link:
        return sorted(store_schema.refresh_statistics(link, min_changes))  # type: ignore[arg-type]


def analyzed_rows(world: World, table: str) -> float:
    with psycopg.connect(world.url, autocommit=True) as admin:
        row = admin.execute(
            "SELECT reltuples FROM pg_class WHERE oid = %s::regclass", (f"public.{table}",)
        ).fetchone()
    assert row is not None
    return float(row[0])


def kept_plan_scans(conn: psycopg.Connection[Any], name: str, params: dict[str, Any]) -> list[str]:
    """The index scans of the plan `conn` keeps for its prepared named statement."""
    (stmt,) = conn.execute(
        "SELECT name FROM pg_prepared_statements WHERE statement LIKE %s",
        (f"%{name}%",),
    ).fetchone()  # type: ignore[misc]
    args = pgsql.SQL(", ").join(pgsql.Literal(v) for v in params.values())
    query = pgsql.SQL("EXPLAIN (FORMAT JSON) EXECUTE {}({})").format(pgsql.Identifier(stmt), args)
    (doc,) = conn.execute(query).fetchone()  # type: ignore[misc]
    plan = (json.loads(doc) if isinstance(doc, str) else doc)[0]["Plan"]
    found, todo = [], [plan]
    while todo:
        node = todo.pop()
        todo.extend(node.get("Plans", []))
        if node.get("Index Name"):
            found.append(node["Index Name"])
    return found


def test_a_young_table_is_analyzed_each_time_it_doubled(world: World) -> None:
    assert all(analyzed_rows(world, t) < 0 for t in TABLES)  # never analyzed yet
    add_history(world, 100)
    assert analyzed_as_link(world) == sorted(TABLES)
    assert analyzed_rows(world, "messages") >= 200
    assert analyzed_as_link(world) == []  # nothing changed since

    add_history(world, 50)  # 100 more messages against 200+ analyzed: not doubled
    assert analyzed_as_link(world) == []
    add_history(world, 60)  # 220 changes since: doubled
    assert analyzed_as_link(world) == sorted(TABLES)
    assert analyzed_rows(world, "messages") >= 420


def test_a_kept_plan_is_made_again_with_the_statistics(world: World) -> None:
    """The ServerApp's reply pull, prepared while run1 had few messages, takes its
    replies through uq_messages_reply_to once the link analyzed messages, without
    the connection doing anything: not through the run's whole history."""
    pull = "messages_pull_replies"
    params = {"run_id": world.runs["run1"], "ids": [1, 2], "again": False}
    with connect(world.url_as("sa1"), hot=True) as sa:
        rows(sa, pull, params)
        add_history(world, 600)
        assert "messages" in analyzed_as_link(world)
        assert kept_plan_scans(sa, "reply_to = ANY", params) == ["uq_messages_reply_to"]


@pytest.mark.parametrize("who", [k for k in KINDS if k != "link"])
def test_only_a_link_refreshes_statistics(world: World, who: str) -> None:
    denied(world, who, "SELECT flpg_refresh_statistics(1)")


def test_another_link_at_it_means_nothing_to_do(world: World) -> None:
    add_history(world, 2000)
    with as_role(world, "link") as first:
        first.execute("SELECT pg_advisory_xact_lock(hashtext('flpg_refresh_statistics'))")
        assert analyzed_as_link(world, 1) == []
    assert "messages" in analyzed_as_link(world, 1)
