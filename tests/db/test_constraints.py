"""The database itself enforces the protocol's state machine.

Each case sets up valid rows with the store, then tries one invalid write with
raw SQL and asserts the exact error class and constraint name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import errors

from flpg import bus
from flpg.app.message import Message
from flpg.store import messages as store_messages
from flpg.store import runs as store_runs
from flpg.store.db import Connection, connect
from tests.db import _replies as reply_path

from ._chunks import ALL_CHUNKS
from .conftest import Federation, create_run, instruction, make_federation, scalar

INSERT_INSTRUCTION = """
INSERT INTO messages (run_id, dst_node_id, message_type, ttl_seconds, deadline)
VALUES (%(run)s, %(dst)s, 'train', 60, now() + interval '60 s') RETURNING id
"""


@dataclass
class Case:
    sql: str
    error: type[psycopg.Error]
    constraint: str | None
    message: str | None = None
    prepare: Callable[[Connection, Federation], dict[str, Any]] | None = None


def _instruction_id(conn: Connection, fed: Federation) -> dict[str, Any]:
    (mid,) = bus.send(conn, fed.run_id, [instruction(fed.selected[0])])
    return {"mid": mid}


def _replied_instruction(conn: Connection, fed: Federation) -> dict[str, Any]:
    (mid,) = bus.send(conn, fed.run_id, [instruction(fed.selected[0])])
    store_messages.claim(conn, worker="w", node_ids=[fed.selected[0]], lease=60, limit=1)
    reply_path.reply_new(conn, worker="w", new=store_messages.NewReply(mid, {}, {}, []))
    return {"mid": mid}


def _running_run(conn: Connection, fed: Federation) -> dict[str, Any]:
    conn.execute(
        "UPDATE runs SET status = 'running', exec_id = 'e', started_at = now(),"
        " heartbeat_at = now() WHERE id = %s",
        (fed.run_id,),
    )
    return {}


CASES: dict[str, Case] = {
    "message to a node outside the run's selection": Case(
        INSERT_INSTRUCTION.replace("%(dst)s", "%(outside)s"),
        errors.ForeignKeyViolation,
        "fk_messages_dst_in_selection",
    ),
    "message to a node that does not exist": Case(
        INSERT_INSTRUCTION.replace("%(dst)s", "987654"),
        errors.ForeignKeyViolation,
        "fk_messages_dst_in_selection",
    ),
    "reply from a node outside the run's selection": Case(
        "INSERT INTO messages (run_id, src_node_id, reply_to, message_type, ttl_seconds,"
        " deadline) VALUES (%(run)s, %(outside)s, %(mid)s, 'train', 60, now())",
        errors.ForeignKeyViolation,
        "fk_messages_src_in_selection",
        prepare=_instruction_id,
    ),
    "second reply to one instruction": Case(
        "INSERT INTO messages (run_id, src_node_id, reply_to, message_type, ttl_seconds,"
        " deadline) VALUES (%(run)s, %(dst)s, %(mid)s, 'train', 60, now())",
        errors.UniqueViolation,
        "uq_messages_reply_to",
        prepare=_replied_instruction,
    ),
    "instruction with an error code": Case(
        "INSERT INTO messages (run_id, dst_node_id, message_type, ttl_seconds, deadline,"
        " error_code, error_reason) VALUES (%(run)s, %(dst)s, 'train', 60, now(), 1, 'boom')",
        errors.CheckViolation,
        "ck_messages_errors_only_in_replies",
    ),
    "error code without a reason": Case(
        "INSERT INTO messages (run_id, src_node_id, reply_to, message_type, ttl_seconds,"
        " deadline, error_code) VALUES (%(run)s, %(dst)s, %(mid)s, 'train', 60, now(), 1)",
        errors.CheckViolation,
        "ck_messages_error_code_with_reason",
        prepare=_instruction_id,
    ),
    "message both to and from a node": Case(
        "INSERT INTO messages (run_id, src_node_id, dst_node_id, message_type, ttl_seconds,"
        " deadline) VALUES (%(run)s, %(dst)s, %(dst)s, 'train', 60, now())",
        errors.CheckViolation,
        "ck_messages_direction",
    ),
    "reply that is claimed": Case(
        "INSERT INTO messages (run_id, src_node_id, reply_to, message_type, ttl_seconds,"
        " deadline, state, claimed_by, lease_until)"
        " VALUES (%(run)s, %(dst)s, %(mid)s, 'train', 60, now(), 'claimed', 'w', now())",
        errors.CheckViolation,
        "ck_messages_reply_states",
        prepare=_instruction_id,
    ),
    "claimed message without a lease": Case(
        "UPDATE messages SET state = 'claimed', claimed_by = 'w' WHERE id = %(mid)s",
        errors.CheckViolation,
        "ck_messages_claimed_has_lease",
        prepare=_instruction_id,
    ),
    "claimed message without a worker": Case(
        "UPDATE messages SET state = 'claimed', lease_until = now() WHERE id = %(mid)s",
        errors.CheckViolation,
        "ck_messages_claimed_has_lease",
        prepare=_instruction_id,
    ),
    "done message without finished_at": Case(
        "UPDATE messages SET state = 'done' WHERE id = %(mid)s",
        errors.CheckViolation,
        "ck_messages_finished_at_iff_final",
        prepare=_instruction_id,
    ),
    "queued message with finished_at": Case(
        "UPDATE messages SET finished_at = now() WHERE id = %(mid)s",
        errors.CheckViolation,
        "ck_messages_finished_at_iff_final",
        prepare=_instruction_id,
    ),
    "zero TTL": Case(
        INSERT_INSTRUCTION.replace("'train', 60", "'train', 0"),
        errors.CheckViolation,
        "ck_messages_ttl_positive",
    ),
    "empty message type": Case(
        INSERT_INSTRUCTION.replace("'train'", "''"),
        errors.CheckViolation,
        "ck_messages_message_type_not_empty",
    ),
    "metrics that are not an object": Case(
        "UPDATE messages SET metrics = '[1, 2]' WHERE id = %(mid)s",
        errors.CheckViolation,
        "ck_messages_metrics_is_object",
        prepare=_instruction_id,
    ),
    "finished run without finished_at": Case(
        "UPDATE runs SET status = 'finished', started_at = now(), exec_id = 'e' WHERE id = %(run)s",
        errors.CheckViolation,
        "ck_runs_finished_at_iff_terminal",
    ),
    "pending run with finished_at": Case(
        "UPDATE runs SET finished_at = now() WHERE id = %(run)s",
        errors.CheckViolation,
        "ck_runs_finished_at_iff_terminal",
    ),
    "failed run without reason": Case(
        "UPDATE runs SET status = 'failed', finished_at = now() WHERE id = %(run)s",
        errors.CheckViolation,
        "ck_runs_failed_has_reason",
        prepare=_running_run,
    ),
    "running run without exec": Case(
        "UPDATE runs SET status = 'running', started_at = now() WHERE id = %(run)s",
        errors.CheckViolation,
        "ck_runs_launched_has_exec",
    ),
    "running run without started_at": Case(
        "UPDATE runs SET status = 'running', exec_id = 'e' WHERE id = %(run)s",
        errors.CheckViolation,
        "ck_runs_running_has_started_at",
    ),
    "run config that is not an object": Case(
        "UPDATE runs SET run_config = '\"x\"' WHERE id = %(run)s",
        errors.CheckViolation,
        "ck_runs_run_config_is_object",
    ),
    "app hash that is not a sha256": Case(
        "INSERT INTO apps (hash, name, bundle, size) VALUES ('abc', 'x', 'zz', 2)",
        errors.CheckViolation,
        "ck_apps_hash_is_sha256",
    ),
    "array chunk count that does not match": Case(
        "INSERT INTO arrays (run_id, dtype, shape, nbytes, chunk_size, n_chunks, digest)"
        " VALUES (%(run)s, '<f4', '{10}', 40, 16, 2, '\\x00112233445566778899aabbccddeeff')",
        errors.CheckViolation,
        "ck_arrays_n_chunks_matches",
    ),
    # The reference is checked at commit (deferred); IMMEDIATE checks it now.
    "array referenced by a message cannot be deleted": Case(
        "SET CONSTRAINTS fk_message_arrays_array_id IMMEDIATE; DELETE FROM arrays",
        errors.ForeignKeyViolation,
        "fk_message_arrays_array_id",
        prepare=lambda conn, fed: {
            "mid": bus.send(
                conn,
                fed.run_id,
                [instruction(fed.selected[0], _content_with_array())],
            )[0]
        },
    ),
    "bad message state": Case(
        "UPDATE messages SET state = 'lost' WHERE id = %(mid)s",
        errors.InvalidTextRepresentation,
        None,
        'invalid input value for enum message_state: "lost"',
        prepare=_instruction_id,
    ),
    "bad run status": Case(
        "UPDATE runs SET status = 'paused' WHERE id = %(run)s",
        errors.InvalidTextRepresentation,
        None,
        'invalid input value for enum run_status: "paused"',
    ),
    "bad node status": Case(
        "UPDATE nodes SET status = 'sleeping'",
        errors.InvalidTextRepresentation,
        None,
        'invalid input value for enum node_status: "sleeping"',
    ),
    "bad log stream": Case(
        "INSERT INTO run_logs (run_id, stream, line) VALUES (%(run)s, 'stdin', 'x')",
        errors.InvalidTextRepresentation,
        None,
        'invalid input value for enum log_stream: "stdin"',
    ),
    "unknown round phase": Case(
        "INSERT INTO round_metrics (run_id, round, phase, metrics)"
        " VALUES (%(run)s, 1, 'fit', '{}')",
        errors.CheckViolation,
        "ck_round_metrics_phase_known",
    ),
}


def _content_with_array() -> Any:
    import numpy as np

    from flpg.app.records import ArrayRecord, RecordDict

    return RecordDict({"arrays": ArrayRecord({"w": np.arange(4.0)})})


@pytest.fixture(scope="module")
def shared(module_db_url: str) -> Iterator[tuple[Connection, Federation]]:
    """One database and federation for the whole module (creating a database per
    case would dominate the runtime)."""
    with connect(module_db_url, application_name="flpg-test") as c:
        yield c, make_federation(c, module_db_url)


@pytest.fixture
def rolled_back(shared: tuple[Connection, Federation]) -> Iterator[tuple[Connection, Federation]]:
    """The shared connection inside a transaction that is always rolled back."""
    conn, fed = shared
    with conn.transaction(force_rollback=True):
        yield conn, fed


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_database_rejects(case: Case, rolled_back: tuple[Connection, Federation]) -> None:
    conn, fed = rolled_back
    params: dict[str, Any] = {
        "run": fed.run_id,
        "dst": fed.selected[0],
        "outside": fed.outside,
    }
    if case.prepare is not None:
        params.update(case.prepare(conn, fed))
    counts_before = _row_counts(conn)

    with pytest.raises(case.error) as info, conn.transaction():  # a savepoint
        conn.execute(case.sql, params)  # type: ignore[arg-type]

    assert type(info.value) is case.error
    assert info.value.diag.constraint_name == case.constraint
    if case.message is not None:
        assert case.message in str(info.value)
    assert _row_counts(conn) == counts_before


def _row_counts(conn: Connection) -> dict[str, Any]:
    return {
        t: scalar(conn, f"SELECT count(*), coalesce(sum(hashtext(t::text)), 0) FROM {t} t")
        for t in ("apps", "runs", "nodes", "messages", "arrays", "round_metrics", "run_logs")
    }


def test_valid_rows_are_accepted(rolled_back: tuple[Connection, Federation]) -> None:
    """The constraints are not so tight that the normal protocol breaks."""
    conn, fed = rolled_back
    (mid,) = bus.send(conn, fed.run_id, [instruction(fed.selected[0])])
    _running_run(conn, fed)
    conn.execute(
        "UPDATE messages SET state = 'claimed', claimed_by = 'w', lease_until = now()"
        " WHERE id = %s",
        (mid,),
    )
    conn.execute(
        "INSERT INTO messages (run_id, src_node_id, reply_to, message_type, ttl_seconds,"
        " deadline, error_code, error_reason) VALUES (%s, %s, %s, 'train', 60, now(), 1, 'x')",
        (fed.run_id, fed.selected[0], mid),
    )
    conn.execute(
        "UPDATE messages SET state = 'done', finished_at = now(), lease_until = NULL WHERE id = %s",
        (mid,),
    )
    conn.execute(
        "UPDATE runs SET status = 'failed', reason = 'r', finished_at = now() WHERE id = %s",
        (fed.run_id,),
    )
    assert scalar(conn, "SELECT count(*) FROM messages WHERE reply_to = %s", (mid,)) == 1


def test_run_creation_with_an_unknown_node_writes_nothing(
    rolled_back: tuple[Connection, Federation],
) -> None:
    conn, fed = rolled_back
    before = _row_counts(conn)
    with pytest.raises(errors.ForeignKeyViolation) as info:
        create_run(conn, [fed.selected[0], 987654])
    assert info.value.diag.constraint_name == "fk_run_nodes_node_id"
    assert _row_counts(conn) == before


def _populate(conn: Connection, fed: Federation, run_id: int) -> None:
    """An answered instruction carrying arrays (and a reply carrying arrays), a log line
    and round metrics."""
    (mid,) = bus.send(conn, run_id, [instruction(fed.selected[0], _content_with_array())])
    store_messages.claim(conn, worker="w", node_ids=[fed.selected[0]], lease=60, limit=1)
    (received,) = bus.load(conn, _rows_for(conn, mid))
    reply_path.reply(conn, "w", mid, run_id, Message(_content_with_array(), reply_to=received))
    conn.execute(
        "INSERT INTO run_logs (run_id, stream, line) VALUES (%s, 'stdout', 'x')", (run_id,)
    )
    conn.execute(
        "INSERT INTO round_metrics (run_id, round, phase, metrics) VALUES (%s, 1, 'train', '{}')",
        (run_id,),
    )


OWNED = {
    "messages": "run_id = %s",
    "message_arrays": "message_id IN (SELECT id FROM messages WHERE run_id = %s)",
    "arrays": "run_id = %s",
    f"{ALL_CHUNKS} c": "array_id IN (SELECT id FROM arrays WHERE run_id = %s)",
    "run_nodes": "run_id = %s",
    "run_logs": "run_id = %s",
    "round_metrics": "run_id = %s",
    "runs": "id = %s",
}


def _owned(conn: Connection, run_id: int) -> dict[str, int]:
    return {
        t: scalar(conn, f"SELECT count(*) FROM {t} WHERE {w}", (run_id,)) for t, w in OWNED.items()
    }


def test_delete_ended_run_removes_everything_it_owns(
    rolled_back: tuple[Connection, Federation],
) -> None:
    """The retention path: one transaction removes a run and every row it owns."""
    conn, fed = rolled_back
    other = create_run(conn, fed.selected)
    _populate(conn, fed, fed.run_id)
    _populate(conn, fed, other)
    before = _owned(conn, fed.run_id)
    assert all(before.values()), before
    other_before = _owned(conn, other)

    assert store_runs.delete_ended(conn, fed.run_id) is False  # still pending: kept
    assert _owned(conn, fed.run_id) == before

    store_runs.finish(conn, fed.run_id, "stopped", "stopped by user")
    assert store_runs.delete_ended(conn, fed.run_id) is True
    assert set(_owned(conn, fed.run_id).values()) == {0}
    assert _owned(conn, other) == other_before
    assert scalar(conn, "SELECT count(*) FROM nodes") == 4  # nodes outlive runs
    assert store_runs.delete_ended(conn, fed.run_id) is False


def test_single_delete_of_a_run_with_payloads(
    rolled_back: tuple[Connection, Federation],
) -> None:
    conn, fed = rolled_back
    _populate(conn, fed, fed.run_id)
    with conn.transaction():
        conn.execute("DELETE FROM runs WHERE id = %s", (fed.run_id,))
    assert set(_owned(conn, fed.run_id).values()) == {0}


def _rows_for(conn: Connection, mid: int) -> list[store_messages.MessageRow]:
    row = conn.execute(
        "SELECT id, run_id, dst_node_id, group_id, message_type, ttl_seconds,"
        " extract(epoch FROM created_at)::float8, metrics, configs, attempts"
        " FROM messages WHERE id = %s",
        (mid,),
    ).fetchone()
    assert row is not None
    keys = (
        "id",
        "run_id",
        "dst_node_id",
        "group_id",
        "message_type",
        "ttl_seconds",
        "created_at",
        "metrics",
        "configs",
        "attempts",
    )
    return [
        store_messages.MessageRow(
            src_node_id=None, reply_to=None, **dict(zip(keys, row, strict=True))
        )
    ]
