"""The permission matrix: each principal connects as its own login role and tries what
it may and may not do; PostgreSQL (grants, row-level security, triggers) decides.

One world per module (see tests/db/_trust_world.py); every case runs in a
transaction of its own that is rolled back, so the cases do not see each other's
writes. A forbidden action either fails with InsufficientPrivilege (`denied`) or
finds or changes no row (`rows`, `affected` == empty); each case says which.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.errors import InsufficientPrivilege
from psycopg.types.json import Jsonb

from ._chunks import ALL_CHUNKS
from ._trust_world import (
    HASHES,
    KINDS,
    World,
    affected,
    as_role,
    built_world,
    denied,
    insert_reply,
    named,
    rows,
    scalar,
)


@pytest.fixture(scope="module")
def world(module_db_url: str) -> Iterator[World]:
    with built_world(module_db_url) as w:
        yield w


# Node ----------------------------------------------------------------------------


def test_node_sees_only_the_messages_of_its_own_node_ids(world: World) -> None:
    m = world.msgs
    seen = {r[0] for r in rows(world, "node_a", "SELECT id FROM messages")}
    assert seen == {m["i1"], m["i3"], m["i4"], m["i8"]}  # A1's and A2's, in both runs
    assert rows(world, "node_a", "SELECT * FROM messages WHERE id = %s", (m["i2"],)) == []


def test_node_cannot_read_another_nodes_reply(world: World) -> None:
    assert rows(world, "node_a", "SELECT * FROM messages WHERE id = %s", (world.msgs["r2"],)) == []
    assert rows(world, "node_b", "SELECT id FROM messages WHERE id = %s", (world.msgs["r2"],))


def test_node_reads_the_arrays_of_its_instructions_only(world: World) -> None:
    a = world.arrays
    seen = rows(world, "node_a", f"SELECT array_id, data FROM {ALL_CHUNKS} c ORDER BY 1")
    assert [r[0] for r in seen] == sorted([a["X1"], a["X3"]])
    for other in ("X2", "Y2", "X9", "Crun1"):
        assert rows(world, "node_a", "SELECT * FROM arrays WHERE id = %s", (a[other],)) == []


def test_node_cannot_claim_another_nodes_instruction(world: World) -> None:
    sql = (
        "UPDATE messages SET state = 'claimed', claimed_by = 'x', lease_until = now() WHERE id = %s"
    )
    assert affected(world, "node_a", sql, (world.msgs["i6"],)) == 0
    assert affected(world, "node_a", sql, (world.msgs["i1"],)) == 1  # its own


def test_node_claims_only_its_own_instructions_whatever_ids_it_names(world: World) -> None:
    n = world.nodes
    sql, params = named(
        "messages_claim", node_ids=[n["A1"], n["B"]], worker="w", lease=30.0, limit=10
    )
    claimed = rows(world, "node_a", sql, params)
    assert {r[0] for r in claimed} == {world.msgs["i1"], world.msgs["i3"]}
    assert {r[2] for r in claimed} == {n["A1"]}


@pytest.mark.parametrize("src", ["B", "A1"])
def test_node_cannot_reply_for_another_node(world: World, src: str) -> None:
    with as_role(world, "node_a") as conn, pytest.raises(InsufficientPrivilege):
        insert_reply(world, conn, "run1", src, "i6")  # i6 is B's, claimed


def test_node_cannot_reply_to_an_instruction_it_has_not_claimed(world: World) -> None:
    with as_role(world, "node_a") as conn, pytest.raises(InsufficientPrivilege):
        insert_reply(world, conn, "run1", "A1", "i1")  # queued, not claimed


def test_node_replies_to_its_claimed_instruction_with_its_arrays(world: World) -> None:
    with as_role(world, "node_a") as conn:
        sql, params = named(
            "arrays_insert_small",
            run_id=world.runs["run1"],
            chunk_size=1024,
            dtypes=["uint8"],
            shapes=["{2}"],
            nbytes=[2],
            digests=[bytes(16)],
            datas=[b"\x01\x02"],
            codecs=[None],
            bases=[None],
            digest_alg="xxh3-128",
            durable=False,
        )
        array_id = scalar(conn, sql, params)
        links = [
            {
                "reply_to": world.msgs["i4"],
                "record_name": "arrays",
                "position": 0,
                "array_name": "w",
                "array_id": array_id,
            }
        ]
        replies = [
            {
                "reply_to": world.msgs["i4"],
                "metrics": {},
                "configs": {},
                "error_code": None,
                "error_reason": None,
            }
        ]
        sql, params = named(
            "messages_insert_replies", worker="w", replies=Jsonb(replies), links=Jsonb(links)
        )
        reply = conn.execute(sql, params).fetchall()
        assert [(r[1], r[3]) for r in reply] == [(world.msgs["i4"], 1)]  # one link
        writer = scalar(conn, "SELECT created_by FROM messages WHERE id = %s", (reply[0][0],))
        assert writer == world.roles["node_a"]


def test_a_links_audience_comes_from_its_message_whatever_the_insert_says(world: World) -> None:
    """Row-level security reads a link's run and node from its own row (trust.v3):
    a node that writes another node's id and run into its reply's link is overruled."""
    with as_role(world, "node_a") as conn:
        own = scalar(
            conn,
            "INSERT INTO arrays (run_id, dtype, shape, nbytes, chunk_size, n_chunks, digest)"
            " VALUES (%s, 'uint8', '{0}', 0, 1, 0, %s) RETURNING id",
            (world.runs["run1"], bytes(16)),
        )
        reply = scalar(
            conn,
            "INSERT INTO messages (run_id, src_node_id, reply_to, message_type, ttl_seconds,"
            " deadline) VALUES (%s, %s, %s, 'train', 60, now() + interval '1 min')"
            " RETURNING id",
            (world.runs["run1"], world.nodes["A1"], world.msgs["i4"]),
        )
        stored = conn.execute(
            "INSERT INTO message_arrays (message_id, record_name, position, array_name,"
            " array_id, run_id, node_id) VALUES (%s, 'arrays', 0, 'w', %s, %s, %s)"
            " RETURNING run_id, node_id",
            (reply, own, world.runs["run2"], world.nodes["B"]),
        ).fetchall()
        assert stored == [(world.runs["run1"], world.nodes["A1"])]
        with pytest.raises(InsufficientPrivilege):  # nor can it be moved afterwards
            conn.execute("UPDATE message_arrays SET node_id = %s", (world.nodes["B"],))


def test_node_cannot_link_its_arrays_to_another_nodes_reply(world: World) -> None:
    with as_role(world, "node_a") as conn:
        own = scalar(
            conn,
            "INSERT INTO arrays (run_id, dtype, shape, nbytes, chunk_size, n_chunks, digest)"
            " VALUES (%s, 'uint8', '{0}', 0, 1, 0, %s) RETURNING id",
            (world.runs["run1"], bytes(16)),
        )
        with pytest.raises(InsufficientPrivilege):
            conn.execute(
                "INSERT INTO message_arrays VALUES (%s, 'evil', 0, 'w', %s)",
                (world.msgs["r2"], own),
            )


def test_node_cannot_change_a_runs_status(world: World) -> None:
    denied(world, "node_a", "UPDATE runs SET status = 'stopped'")


@pytest.mark.parametrize("node", ["A1", "B"])
def test_node_cannot_change_node_labels(world: World, node: str) -> None:
    denied(
        world,
        "node_a",
        "UPDATE nodes SET labels = '{\"x\": 1}' WHERE id = %s",
        (world.nodes[node],),
    )


def test_a_participant_cannot_make_temporary_tables(world: World) -> None:
    for who in ("node_b", "ca1", "sa1", "alice"):
        denied(world, who, "CREATE TEMPORARY TABLE principal_nodes (node_id bigint)")


def test_a_shadowing_mapping_in_the_callers_search_path_is_never_read(world: World) -> None:
    """The identity lookups run as the caller, with the caller's search_path (trust.v6):
    a temporary table named like the mapping, first in the path, changes nothing. The
    role is given the TEMPORARY privilege here, which no participant has."""
    n, m = world.nodes, world.msgs
    database, role = quoted_database(world), f'"{world.roles["node_b"]}"'
    with psycopg.connect(world.url, autocommit=True) as admin:
        admin.execute(f"GRANT TEMPORARY ON DATABASE {database} TO {role}")
    try:
        with as_role(world, "node_b") as conn:
            conn.execute("CREATE TEMPORARY TABLE principal_nodes (role_name text, node_id bigint)")
            conn.execute(
                "INSERT INTO pg_temp.principal_nodes SELECT current_user, unnest(%s::bigint[])",
                ([n["A1"], n["A2"], n["B"]],),
            )
            conn.execute("SET search_path = pg_temp, public")
            assert scalar(conn, "SELECT count(*) FROM pg_temp.principal_nodes") == 3
            assert scalar(conn, "SELECT flpg_my_node_ids()") == [n["B"]]
            seen = {r[0] for r in conn.execute("SELECT id FROM messages").fetchall()}
            assert m["i1"] not in seen and m["i2"] in seen
            assert [r[0] for r in conn.execute("SELECT id FROM nodes").fetchall()] == [n["B"]]
    finally:
        with psycopg.connect(world.url, autocommit=True) as admin:
            admin.execute(f"REVOKE TEMPORARY ON DATABASE {database} FROM {role}")


def quoted_database(world: World) -> str:
    with psycopg.connect(world.url) as conn:
        return f'"{scalar(conn, "SELECT current_database()")}"'


def test_node_heartbeats_only_its_own_node_ids(world: World) -> None:
    n = world.nodes
    sql, params = named("nodes_heartbeat", node_ids=[n["A1"], n["A2"], n["B"]])
    assert affected(world, "node_a", sql, params) == 2


def test_node_sees_only_the_runs_that_selected_it(world: World) -> None:
    seen = {r[0] for r in rows(world, "node_a", "SELECT id FROM runs")}
    assert seen == {world.runs["run1"], world.runs["run2"]}
    sql, params = named("runs_get", run_id=world.runs["run3"])
    assert rows(world, "node_a", sql, params) == []  # its config included
    assert rows(world, "node_a", *named("apps_get", hash=HASHES["b"])) == []
    assert rows(world, "node_a", *named("apps_get", hash=HASHES["a"]))  # its runs' bundle


def test_node_cannot_read_logs(world: World) -> None:
    denied(world, "node_a", "SELECT * FROM run_logs")


def test_node_cannot_enrol_itself_or_extend_its_mapping(world: World) -> None:
    denied(world, "node_a", "INSERT INTO nodes (name) VALUES ('rogue')")
    denied(
        world,
        "node_a",
        "INSERT INTO principal_nodes VALUES (%s, %s)",
        (world.roles["node_a"], world.nodes["B"]),
    )
    mapping = rows(world, "node_a", "SELECT role_name FROM principals")
    assert mapping == [(world.roles["node_a"],)]


# User ----------------------------------------------------------------------------


def test_user_sees_only_their_runs(world: World) -> None:
    assert rows(world, "alice", "SELECT id FROM runs") == [(world.runs["run1"],)]
    listed = rows(world, "alice", *named("runs_list", limit=10))
    assert [r[0] for r in listed] == [world.runs["run1"]]
    assert len(rows(world, "alice", *named("nodes_list"))) == 3  # the node list is shared


def test_user_cannot_see_another_users_logs_or_messages(world: World) -> None:
    run2 = world.runs["run2"]
    assert rows(world, "alice", "SELECT * FROM run_logs WHERE run_id = %s", (run2,)) == []
    assert rows(world, "alice", "SELECT * FROM messages WHERE run_id = %s", (run2,)) == []
    assert rows(world, "alice", "SELECT * FROM arrays WHERE run_id = %s", (run2,)) == []
    own = rows(
        world, "alice", *named("run_logs_tail", run_id=world.runs["run1"], after_id=0, limit=10)
    )
    assert [r[3] for r in own] == ["log of run1"]


def test_user_cannot_stop_another_users_run(world: World) -> None:
    assert rows(world, "alice", *named("runs_request_stop", run_id=world.runs["run2"])) == []
    assert rows(world, "alice", *named("runs_request_stop", run_id=world.runs["run1"])) == [
        ("running",)
    ]


def test_user_cannot_submit_a_run_as_someone_else(world: World) -> None:
    denied(
        world,
        "alice",
        "INSERT INTO runs (app_hash, app_name, submitted_by) VALUES (%s, 'x', %s)",
        (HASHES["a"], world.roles["bob"]),
    )
    denied(world, "alice", "UPDATE runs SET submitted_by = %s", (world.roles["bob"],))
    submitted = rows(world, "alice", "SELECT submitted_by FROM runs")
    assert submitted == [(world.roles["alice"],)]  # forced from the connection


def test_user_cannot_add_nodes_to_another_users_run(world: World) -> None:
    denied(
        world,
        "alice",
        "INSERT INTO run_nodes VALUES (%s, %s)",
        (world.runs["run3"], world.nodes["A1"]),
    )


# ServerApp -----------------------------------------------------------------------


def test_serverapp_cannot_read_another_runs_messages_checkpoints_or_logs(world: World) -> None:
    run2 = world.runs["run2"]
    for table in ("messages", "checkpoints", "run_logs", "round_metrics", "arrays"):
        assert rows(world, "sa1", f"SELECT * FROM {table} WHERE run_id = %s", (run2,)) == []
    assert rows(world, "sa1", *named("checkpoints_get", run_id=run2)) == []


def test_serverapp_reads_the_digests_of_its_runs_arrays_only(world: World) -> None:
    """A top-k delta's base digest (arrays_get_digest) is read as the ServerApp."""
    own, other = world.arrays["X1"], world.arrays["X3"]
    assert len(rows(world, "sa1", *named("arrays_get_digest", array_id=own))) == 1
    assert rows(world, "sa1", *named("arrays_get_digest", array_id=other)) == []


def test_serverapp_cannot_write_into_another_run(world: World) -> None:
    run2 = world.runs["run2"]
    denied(
        world,
        "sa1",
        "INSERT INTO run_logs (run_id, stream, line) VALUES (%s, 'event', 'x')",
        (run2,),
    )
    denied(
        world,
        "sa1",
        "INSERT INTO messages (run_id, dst_node_id, message_type, ttl_seconds, deadline)"
        " VALUES (%s, %s, 'train', 60, now())",
        (run2, world.nodes["A1"]),
    )
    saved = named("checkpoints_upsert", run_id=run2, round=2, attempt=1, metrics=Jsonb({}))
    assert rows(world, "sa1", *saved) == []
    assert affected(world, "sa1", *named("runs_heartbeat", run_id=run2, attempt=1)) == 0


def test_serverapp_cannot_forge_a_nodes_reply(world: World) -> None:
    with as_role(world, "sa1") as conn, pytest.raises(InsufficientPrivilege):
        insert_reply(world, conn, "run1", "A1", "i4")


def test_serverapp_sends_pulls_and_checkpoints_in_its_run(world: World) -> None:
    run1, m = world.runs["run1"], world.msgs
    with as_role(world, "sa1") as conn:
        array_id = scalar(
            conn,
            *named(
                "arrays_insert",
                run_id=run1,
                dtype="uint8",
                shape=[1],
                nbytes=1,
                chunk_size=1,
                n_chunks=1,
                digest=bytes(16),
                digest_alg="xxh3-128",
                durable=False,
                codec=None,
                base_array_id=None,
            ),
        )
        conn.execute(
            *named("array_chunks_transient_insert", array_id=array_id, seq=0, data=b"\x07")
        )
        instructions = [
            {
                "ord": 0,
                "dst_node_id": world.nodes["A1"],
                "group_id": "",
                "message_type": "train",
                "ttl": 60.0,
                "metrics": {},
                "configs": {},
                "send_key": "k",
            }
        ]
        links = [
            {
                "ord": 0,
                "record_name": "arrays",
                "position": 0,
                "array_name": "w",
                "array_id": array_id,
            }
        ]
        sent = conn.execute(
            *named(
                "messages_insert_batch",
                run_id=run1,
                instructions=Jsonb(instructions),
                links=Jsonb(links),
            )
        )
        assert [r[3] for r in sent.fetchall()] == [1]  # linked
        pulled = conn.execute(
            *named("messages_pull_replies", run_id=run1, ids=[m["i2"]], again=False)
        ).fetchall()
        assert [r[0] for r in pulled] == [m["r2"]]
        assert conn.execute(
            *named("checkpoints_upsert", run_id=run1, round=2, attempt=1, metrics=Jsonb({}))
        ).fetchall() == [(run1,)]
        conn.execute(*named("checkpoint_arrays_replace_old", run_id=run1, keep=[array_id]))
        conn.execute(
            *named(
                "checkpoint_arrays_insert",
                run_id=run1,
                position=0,
                array_name="w",
                array_id=array_id,
            )
        )
        # The broadcast it keeps in its checkpoint moves to the WAL-logged chunks.
        moved = scalar(conn, *named("checkpoint_arrays_make_durable", run_id=run1))
        assert moved == 1
        assert scalar(conn, "SELECT durable FROM arrays WHERE id = %s", (array_id,)) is True
        found = conn.execute("SELECT seq, data FROM array_chunks WHERE array_id = %s", (array_id,))
        assert found.fetchall() == [(0, b"\x07")]
        assert conn.execute(*named("runs_heartbeat", run_id=run1, attempt=1)).rowcount == 1


# ClientApp -----------------------------------------------------------------------


def test_clientapp_cannot_see_another_runs_instruction_on_its_node(world: World) -> None:
    m, a = world.msgs, world.arrays
    seen = {r[0] for r in rows(world, "ca1", "SELECT id FROM messages")}
    assert seen == {m["i1"], m["i4"], m["i8"]}  # run1's for A1; not run2's i3 on A1 too
    chunks_of = f"SELECT seq FROM {ALL_CHUNKS} c WHERE array_id = %s"
    assert rows(world, "ca1", chunks_of, (a["X3"],)) == []
    assert rows(world, "ca1", chunks_of, (a["X1"],))


def test_clientapp_writes_arrays_only_for_its_run(world: World) -> None:
    sql = (
        "INSERT INTO arrays (run_id, dtype, shape, nbytes, chunk_size, n_chunks, digest)"
        " VALUES (%s, 'uint8', '{0}', 0, 1, 0, %s)"
    )
    assert affected(world, "ca1", sql, (world.runs["run1"], bytes(16))) == 1
    denied(world, "ca1", sql, (world.runs["run2"], bytes(16)))


# Link ----------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["link", "aud"])
def test_link_and_auditor_cannot_read_payload_bytes(world: World, who: str) -> None:
    denied(world, who, "SELECT data FROM array_chunks")
    denied(world, who, "SELECT data FROM array_chunks_transient")
    denied(world, who, "SELECT bundle FROM apps")
    both = f"SELECT array_id, seq FROM {ALL_CHUNKS.replace(', data', '')} c"
    assert len(rows(world, who, both)) == len(world.arrays)
    assert len(rows(world, who, "SELECT hash, name, size FROM apps")) == 2


def test_link_runs_its_sweeps(world: World) -> None:
    with as_role(world, "link") as conn:

        def first(name: str, **params: Any) -> tuple[Any, ...]:
            row = conn.execute(*named(name, **params)).fetchone()
            assert row is not None
            return tuple(row)

        assert first("messages_requeue_lapsed")[0] == 1  # i7
        assert first("messages_expire", error_code=1)[0] == 1  # i8, with an error reply
        writer = scalar(
            conn, "SELECT created_by FROM messages WHERE reply_to = %s", (world.msgs["i8"],)
        )
        assert writer == world.roles["link"]
        assert conn.execute(*named("nodes_mark_silent_offline", after=0.0)).rowcount == 3
        offline = [world.nodes["B"]]
        assert first("messages_fail_offline", node_ids=offline, error_code=2)[0] == 2  # i6, i7
        assert conn.execute(*named("runs_fail_silent", after=3600.0, startup=3600.0)).rowcount == 0
        assert conn.execute(*named("runs_take_back_unlaunched", after=3600.0)).rowcount == 0
        assert first("arrays_collect", grace=3600.0, limit=10) == (1, 4)  # X9


def test_link_cannot_forge_a_reply_or_delete_history(world: World) -> None:
    with as_role(world, "link") as conn, pytest.raises(InsufficientPrivilege):
        insert_reply(world, conn, "run1", "A1", "i4")  # no error code: a forged answer
    denied(world, "link", "DELETE FROM messages")
    denied(world, "link", "UPDATE runs SET run_config = '{}'")


# Exec ----------------------------------------------------------------------------


def test_exec_launches_runs_and_writes_their_logs(world: World) -> None:
    with as_role(world, "exec") as conn:
        claimed = conn.execute(*named("runs_claim_next", exec_id="x", exclude=[])).fetchall()
        assert [r[0] for r in claimed] == [world.runs["run3"]]
        assert conn.execute(*named("apps_get", hash=HASHES["b"])).fetchone() is not None
        conn.execute(
            *named("run_logs_insert", run_id=world.runs["run3"], stream="event", line="launched")
        )


def test_exec_cannot_read_payloads_or_logs(world: World) -> None:
    denied(world, "exec", "SELECT array_id FROM array_chunks")
    denied(world, "exec", "SELECT array_id FROM array_chunks_transient")
    denied(world, "exec", "SELECT * FROM run_logs")


# Auditor -------------------------------------------------------------------------


def test_auditor_reads_every_runs_metadata_and_the_audit_views(world: World) -> None:
    assert len(rows(world, "aud", "SELECT id FROM runs")) == 3
    assert len(rows(world, "aud", "SELECT * FROM run_history")) == 3
    assert len(rows(world, "aud", "SELECT * FROM round_history")) == 2
    assert rows(world, "aud", "SELECT * FROM message_latency")
    assert len(rows(world, "aud", "SELECT * FROM node_participation")) == 3
    assert len(rows(world, "aud", "SELECT * FROM run_logs")) == 2


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO run_logs (run_id, stream, line) SELECT id, 'event', 'x' FROM runs",
        "UPDATE runs SET status = 'stopped'",
        "UPDATE nodes SET labels = '{}'",
        "UPDATE messages SET state = 'cancelled'",
        "INSERT INTO principals (role_name, kind) VALUES ('x', 'auditor')",
    ],
)
def test_auditor_writes_nothing(world: World, sql: str) -> None:
    denied(world, "aud", sql)


# Every principal -----------------------------------------------------------------


@pytest.mark.parametrize("who", KINDS)
def test_no_principal_runs_server_programs_or_reads_server_files(world: World, who: str) -> None:
    denied(world, who, "COPY (SELECT 1) TO PROGRAM 'true'")
    denied(world, who, "SELECT pg_read_file('/etc/hostname')")
    with as_role(world, who) as conn:
        row = conn.execute(
            "SELECT rolsuper, rolbypassrls, pg_has_role(current_user, 'pg_execute_server_program',"
            " 'MEMBER'), pg_has_role(current_user, 'pg_read_server_files', 'MEMBER'),"
            " pg_has_role(current_user, 'pg_write_server_files', 'MEMBER')"
            " FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
    assert row == (False, False, False, False, False)


@pytest.mark.parametrize("who", KINDS)
def test_history_is_append_only_for_every_principal(world: World, who: str) -> None:
    denied(world, who, "DELETE FROM run_logs")
    denied(world, who, "UPDATE run_logs SET line = 'rewritten'")
    denied(world, who, "DELETE FROM runs")
    denied(world, who, "DELETE FROM messages")


def test_clientapp_replies_to_its_runs_claimed_instruction(world: World) -> None:
    with as_role(world, "ca1") as conn:
        insert_reply(world, conn, "run1", "A1", "i4")
        writer = scalar(
            conn, "SELECT created_by FROM messages WHERE reply_to = %s", (world.msgs["i4"],)
        )
        assert writer == world.roles["ca1"]


def test_user_sees_only_their_runs_checkpoints_and_metrics(world: World) -> None:
    for table in ("checkpoints", "checkpoint_arrays", "round_metrics"):
        seen = rows(world, "alice", f"SELECT DISTINCT run_id FROM {table}")
        assert seen == [(world.runs["run1"],)]
