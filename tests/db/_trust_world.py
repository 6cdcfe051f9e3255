"""The world of the permission matrix (tests/db/test_permissions.py) and the helpers
that act in it as one principal.

Admin registers three nodes (A1 and A2 served by node_a, B by node_b); alice submits
run1 (A1, B), bob run2 (A1) and run3 (B, still pending), as themselves. Admin adds
the ServerApp roles of run1 and run2, a ClientApp role of run1 on A1, instructions
in every state, a reply, arrays (one old and unreferenced), logs, checkpoints and
metrics. Each helper runs in a transaction of its own that is rolled back.

Every login role has a password (the world's): the cluster trusts only its admin on
the unix socket and asks every other role for its SCRAM password there too.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from psycopg import sql as pgsql
from psycopg.errors import InsufficientPrivilege

from flpg.store import runs as store_runs
from flpg.store.db import connect
from flpg.store.sql import query

BUNDLES = {name: b"PK\x05\x06" + bytes(17) + bytes([i]) for i, name in enumerate("ab")}
HASHES = {name: hashlib.sha256(b).hexdigest() for name, b in BUNDLES.items()}
KINDS = ("node_a", "node_b", "alice", "bob", "sa1", "sa2", "ca1", "link", "exec", "aud")
GROUP = {
    "node_a": "node",
    "node_b": "node",
    "alice": "user",
    "bob": "user",
    "sa1": "serverapp",
    "sa2": "serverapp",
    "ca1": "clientapp",
    "link": "link",
    "exec": "exec",
    "aud": "auditor",
}


@dataclass
class World:
    """Ids of what admin and the users built, each principal's role name, and the
    password every principal's role logs in with."""

    url: str
    password: str
    roles: dict[str, str]
    nodes: dict[str, int]  # A1, A2 (node_a, virtual), B (node_b)
    runs: dict[str, int]  # run1 (alice: A1, B), run2 (bob: A1), run3 (bob: B, pending)
    msgs: dict[str, int]
    arrays: dict[str, int]

    def url_as(self, who: str) -> str:
        """The admin URL with `who`'s role and password instead of admin."""
        login = f"{quote(self.roles[who], safe='')}:{quote(self.password, safe='')}"
        return self.url.replace("postgresql://flpg@", f"postgresql://{login}@", 1)


def scalar(conn: psycopg.Connection[Any], sql: str, params: Any = None) -> Any:
    row = conn.execute(sql, params).fetchone()
    assert row is not None
    return row[0]


def _message(conn: psycopg.Connection[Any], run: int, dst: int, state: str = "queued") -> int:
    claimed = state == "claimed"
    return int(
        scalar(
            conn,
            "INSERT INTO messages (run_id, dst_node_id, message_type, ttl_seconds, deadline,"
            " state, claimed_by, claimed_at, lease_until, finished_at)"
            " VALUES (%s, %s, 'train', 3600, now() + interval '1 hour', %s,"
            " CASE WHEN %s THEN 'w' END, CASE WHEN %s THEN now() END,"
            " CASE WHEN %s THEN now() + interval '1 hour' END,"
            " CASE WHEN %s = 'done' THEN now() END) RETURNING id",
            (run, dst, state, claimed, claimed, claimed, state),
        )
    )


def _array(conn: psycopg.Connection[Any], run: int, message: int | None = None) -> int:
    """A 4-byte array of `run`: a message's is round-transient (its chunk in
    array_chunks_transient), one without a message durable (a checkpoint's)."""
    durable = message is None
    array_id = int(
        scalar(
            conn,
            "INSERT INTO arrays (run_id, dtype, shape, nbytes, chunk_size, n_chunks, digest,"
            " durable) VALUES (%s, 'uint8', '{4}', 4, 4, 1, %s, %s) RETURNING id",
            (run, bytes(16), durable),
        )
    )
    table = "array_chunks" if durable else "array_chunks_transient"
    conn.execute(f"INSERT INTO {table} VALUES (%s, 0, '\\x01020304')", (array_id,))
    if message is not None:
        conn.execute(
            "INSERT INTO message_arrays VALUES (%s, 'arrays', 0, 'w', %s)", (message, array_id)
        )
    return array_id


def _submit(world: World, who: str, bundle: str, node_ids: list[int]) -> int:
    with connect(world.url_as(who)) as conn:
        return store_runs.create(
            conn,
            app_hash=HASHES[bundle],
            app_name=f"app-{bundle}",
            bundle=BUNDLES[bundle],
            run_config={"secret": who},
            node_ids=node_ids,
        )


def _principal(conn: psycopg.Connection[Any], world: World, who: str, **kw: Any) -> None:
    conn.execute(
        "INSERT INTO principals (role_name, kind, user_name, run_id) VALUES (%s, %s, %s, %s)",
        (world.roles[who], GROUP[who], kw.get("user"), kw.get("run")),
    )
    for node in kw.get("nodes", ()):
        conn.execute("INSERT INTO principal_nodes VALUES (%s, %s)", (world.roles[who], node))


def _build(admin: psycopg.Connection[Any], world: World) -> None:
    n = world.nodes
    for name in ("A1", "A2", "B"):
        n[name] = int(scalar(admin, "INSERT INTO nodes (name) VALUES (%s) RETURNING id", (name,)))
    for who in ("node_a", "node_b", "alice", "bob", "link", "exec", "aud"):
        nodes = {"node_a": [n["A1"], n["A2"]], "node_b": [n["B"]]}.get(who, [])
        _principal(admin, world, who, nodes=nodes, user=who if GROUP[who] == "user" else None)
    r = world.runs
    r["run1"] = _submit(world, "alice", "a", [n["A1"], n["B"]])
    r["run2"] = _submit(world, "bob", "a", [n["A1"]])
    r["run3"] = _submit(world, "bob", "b", [n["B"]])
    admin.execute(
        "UPDATE runs SET status = 'running', exec_id = 'e', claimed_at = now(),"
        " started_at = now(), heartbeat_at = now() WHERE id = ANY(%s)",
        ([r["run1"], r["run2"]],),
    )
    _principal(admin, world, "sa1", run=r["run1"])
    _principal(admin, world, "sa2", run=r["run2"])
    _principal(admin, world, "ca1", run=r["run1"], nodes=[n["A1"]])
    m, a = world.msgs, world.arrays
    m["i1"] = _message(admin, r["run1"], n["A1"])
    m["i2"] = _message(admin, r["run1"], n["B"], "done")
    m["i3"] = _message(admin, r["run2"], n["A1"])
    m["i4"] = _message(admin, r["run1"], n["A1"], "claimed")
    m["i6"] = _message(admin, r["run1"], n["B"], "claimed")
    m["i7"] = _message(admin, r["run1"], n["B"], "claimed")  # its lease lapsed
    admin.execute(
        "UPDATE messages SET lease_until = now() - interval '1 min' WHERE id = %s", (m["i7"],)
    )
    m["i8"] = _message(admin, r["run1"], n["A1"])  # past its deadline
    admin.execute(
        "UPDATE messages SET deadline = now() - interval '1 min' WHERE id = %s", (m["i8"],)
    )
    m["r2"] = int(
        scalar(
            admin,
            "INSERT INTO messages (run_id, src_node_id, reply_to, message_type, ttl_seconds,"
            " deadline) VALUES (%s, %s, %s, 'train', 3600, now() + interval '1 hour')"
            " RETURNING id",
            (r["run1"], n["B"], m["i2"]),
        )
    )
    a["X1"] = _array(admin, r["run1"], m["i1"])
    a["X2"] = _array(admin, r["run1"], m["i2"])
    a["X3"] = _array(admin, r["run2"], m["i3"])
    a["Y2"] = _array(admin, r["run1"], m["r2"])
    a["X9"] = _array(admin, r["run1"])  # old and unreferenced: the collector's
    admin.execute(
        "UPDATE arrays SET created_at = now() - interval '1 day' WHERE id = %s", (a["X9"],)
    )
    for run in ("run1", "run2"):
        admin.execute(
            "INSERT INTO run_logs (run_id, stream, line) VALUES (%s, 'stdout', %s)",
            (r[run], f"log of {run}"),
        )
        admin.execute(
            "INSERT INTO checkpoints (run_id, round, attempt, metrics) VALUES (%s, 1, 1, '{}')",
            (r[run],),
        )
        a[f"C{run}"] = _array(admin, r[run])
        admin.execute(
            "INSERT INTO checkpoint_arrays VALUES (%s, 0, 'w', %s)", (r[run], a[f"C{run}"])
        )
        admin.execute(
            "INSERT INTO round_metrics (run_id, round, phase, metrics) VALUES (%s, 1, 'train',"
            " '{}')",
            (r[run],),
        )


@contextmanager
def built_world(module_db_url: str) -> Iterator[World]:
    """The world, with a login role (with a password) per principal, dropped afterwards."""
    tag = f"t{os.getpid()}"
    roles = {who: f"{tag}_{who}" for who in KINDS}
    w = World(module_db_url, secrets.token_urlsafe(16), roles, {}, {}, {}, {})
    with psycopg.connect(module_db_url, autocommit=True) as admin:
        for who, role in roles.items():
            admin.execute(
                pgsql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE {}").format(
                    pgsql.Identifier(role),
                    pgsql.Literal(w.password),
                    pgsql.Identifier(f"flpg_{GROUP[who]}"),
                )
            )
        try:
            _build(admin, w)
            yield w
        finally:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = ANY(%s)",
                (list(roles.values()),),
            )
            for role in roles.values():
                admin.execute(f'DROP ROLE IF EXISTS "{role}"')


@contextmanager
def as_role(world: World, who: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection as `who`, in one transaction that is rolled back."""
    with psycopg.connect(world.url_as(who)) as conn:
        try:
            yield conn
        finally:
            conn.rollback()


def denied(world: World, who: str, sql: str, params: Any = None) -> None:
    """`sql` as `who` fails with InsufficientPrivilege (a grant or a policy refused it)."""
    with as_role(world, who) as conn, pytest.raises(InsufficientPrivilege):
        conn.execute(sql, params)


def rows(world: World, who: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    """What `sql` as `who` returns (rolled back afterwards)."""
    with as_role(world, who) as conn:
        return conn.execute(sql, params).fetchall()


def affected(world: World, who: str, sql: str, params: Any = None) -> int:
    """How many rows `sql` as `who` changed (rolled back afterwards)."""
    with as_role(world, who) as conn:
        return conn.execute(sql, params).rowcount


def named(name: str, **params: Any) -> tuple[str, dict[str, Any]]:
    """A named query of sql/ and its parameters, as the workers run it."""
    return query(name), params


def positional(name: str, types: dict[str, str]) -> str:
    """Named query `name` with `$n::type` for each of its parameters, numbered in the
    order of `types` (for PREPARE, whose plan is the one a hot connection keeps)."""
    sql = query(name)
    for i, (param, kind) in enumerate(types.items(), start=1):
        sql = sql.replace(f"%({param})s", f"${i}::{kind}")
    return sql


def generic_plan(conn: psycopg.Connection[Any], sql: str, *params: Any, fmt: str = "TEXT") -> Any:
    """The plan `conn` keeps for `sql` once prepared (generic: the one the hot
    connections keep, with plan_cache_mode force_generic_plan), as EXPLAIN (VERBOSE,
    FORMAT fmt) gives it for `params`, not executed: the text, or the JSON's root."""
    conn.execute(pgsql.SQL("PREPARE kept AS {}").format(pgsql.SQL(sql)))  # type: ignore[arg-type]
    args: pgsql.Composable = pgsql.SQL("")
    if params:
        args = pgsql.SQL("({})").format(pgsql.SQL(", ").join(map(pgsql.Literal, params)))
    explain = pgsql.SQL("EXPLAIN (VERBOSE, COSTS OFF, FORMAT {}) EXECUTE kept{}")
    found = conn.execute(explain.format(pgsql.SQL(fmt), args)).fetchall()
    conn.execute("DEALLOCATE kept")
    if fmt == "JSON":
        doc = found[0][0]
        return (json.loads(doc) if isinstance(doc, str) else doc)[0]["Plan"]
    return "\n".join(r[0] for r in found)


def insert_reply(world: World, conn: psycopg.Connection[Any], run: str, src: str, to: str) -> None:
    conn.execute(
        "INSERT INTO messages (run_id, src_node_id, reply_to, message_type, ttl_seconds,"
        " deadline) VALUES (%s, %s, %s, 'train', 60, now() + interval '1 min')",
        (world.runs[run], world.nodes[src], world.msgs[to]),
    )
