"""Database errors become FlpgErrors by SQLSTATE class (flpg.store.errors), each
provoked for real on the test cluster: the CLI prints them as one line with the
exit code of their class, never "database connection failed" for a statement the
server refused."""

from __future__ import annotations

import random
import string
from collections.abc import Callable

import psycopg
import pytest

from flpg.errors import (
    BadValue,
    DatabaseRefused,
    DatabaseUnavailable,
    FlpgError,
    InvalidState,
    PermissionDenied,
    SchemaMismatch,
)
from flpg.store import nodes as store_nodes
from flpg.store import runs as store_runs
from flpg.store.db import Connection, connect
from flpg.store.errors import translated
from tests.db.conftest import APP_HASH, BUNDLE


def _create_run(conn: Connection, **overrides: object) -> int:
    fields: dict[str, object] = {
        "app_hash": APP_HASH,
        "app_name": "app",
        "bundle": BUNDLE,
        "run_config": {},
        "node_ids": [],
        "priority": 0,
        "max_restarts": 0,
    }
    fields.update(overrides)
    return store_runs.create(conn, **fields)  # type: ignore[arg-type]


def _huge_random_name(conn: Connection) -> None:
    # Incompressible and longer than a btree entry may be: program_limit_exceeded.
    rng = random.Random(7)
    name = "".join(rng.choice(string.ascii_letters) for _ in range(12000))
    store_nodes.register(conn, name=name, node_config={}, labels={})


def _priority_beyond_int4(conn: Connection) -> None:
    _create_run(conn, priority=2**40)


def _nan_in_jsonb(conn: Connection) -> None:
    _create_run(conn, run_config={"lr": float("nan")})


def _nul_in_text(conn: Connection) -> None:
    store_nodes.register(conn, name="a\x00b", node_config={}, labels={})  # refused by psycopg


def _negative_restarts(conn: Connection) -> None:
    _create_run(conn, max_restarts=-1)  # violates max_restarts_not_negative


def _without_privilege(conn: Connection) -> None:
    conn.execute("CREATE ROLE flpg_translation_test NOLOGIN")
    try:
        conn.execute("SET ROLE flpg_translation_test")
        store_nodes.list_all(conn)
    finally:
        conn.execute("RESET ROLE")
        conn.execute("DROP ROLE flpg_translation_test")


def _read_only(conn: Connection) -> None:
    conn.execute("SET default_transaction_read_only = on")
    _create_run(conn)


def _table_dropped(conn: Connection) -> None:
    conn.execute("DROP TABLE round_metrics CASCADE")
    store_runs.round_metrics(conn, 1)


def _statement_timeout(conn: Connection) -> None:
    conn.execute("SET statement_timeout = '50ms'")
    with psycopg.connect(conn.info.dsn, autocommit=True) as holder:
        holder.execute("BEGIN")
        holder.execute("LOCK TABLE nodes IN ACCESS EXCLUSIVE MODE")
        store_nodes.list_all(conn)  # waits for the lock past the timeout


def _connection_killed(conn: Connection) -> None:
    with psycopg.connect(conn.info.dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [conn.info.backend_pid])
    store_nodes.list_all(conn)


CASES: list[tuple[Callable[[Connection], None], type[FlpgError], int, str]] = [
    (_huge_random_name, BadValue, 2, "too large or complex"),
    (_priority_beyond_int4, BadValue, 2, "out of range"),
    (_nan_in_jsonb, BadValue, 2, "rejected a value"),
    (_nul_in_text, BadValue, 2, "NUL"),
    (_negative_restarts, InvalidState, 5, "max_restarts_not_negative"),
    (_without_privilege, PermissionDenied, 6, "permission denied for table nodes"),
    (_read_only, DatabaseRefused, 6, "read-only"),
    (_table_dropped, SchemaMismatch, 6, "round_metrics"),
    (_statement_timeout, DatabaseRefused, 6, "SQLSTATE 57014"),
    (_connection_killed, DatabaseUnavailable, 3, "database connection failed"),
]


@pytest.mark.parametrize(
    ("provoke", "error", "code", "needle"), CASES, ids=[c[0].__name__.strip("_") for c in CASES]
)
def test_a_database_error_becomes_the_flpg_error_of_its_class(
    db_url: str,
    provoke: Callable[[Connection], None],
    error: type[FlpgError],
    code: int,
    needle: str,
) -> None:
    with (
        connect(db_url, application_name="flpg-test") as conn,
        pytest.raises(error) as info,
        translated(db_url),
    ):
        provoke(conn)
    assert info.value.exit_code == code
    message = str(info.value)
    assert needle in message and "\n" not in message
    assert isinstance(info.value.__cause__, psycopg.Error)
    if error is not DatabaseUnavailable:
        assert "connection failed" not in message
    with connect(db_url, application_name="flpg-test") as check:
        assert check.execute("SELECT count(*) FROM runs").fetchone() == (0,)
