"""Store functions that only make sense with two real sessions: lock conflicts."""

from __future__ import annotations

import pytest

from flpg.errors import LockTimeout
from flpg.store import nodes as store_nodes
from flpg.store import session as store_session
from flpg.store.db import Connection, connect
from tests.db.conftest import register, scalar


def test_a_statement_past_its_lock_timeout_raises_lock_timeout(
    conn: Connection, db_url: str
) -> None:
    node = register(conn, "n1")
    with connect(db_url, application_name="flpg-test-waiter") as waiter:
        store_session.set_lock_timeout(waiter, 1.0)
        assert scalar(waiter, "SHOW lock_timeout") == "1s"
        with conn.transaction():
            conn.execute("SELECT id FROM nodes WHERE id = %s FOR UPDATE", (node,))
            with pytest.raises(LockTimeout), store_session.lock_conflicts():
                store_nodes.heartbeat(waiter, [node])
        # The holder let go: the same statement now goes through.
        with store_session.lock_conflicts():
            store_nodes.heartbeat(waiter, [node])


def test_other_errors_pass_through_lock_conflicts(conn: Connection) -> None:
    with pytest.raises(ZeroDivisionError), store_session.lock_conflicts():
        raise ZeroDivisionError


def test_hot_connections_plan_each_statement_once_and_others_do_not_prepare(
    db_url: str,
) -> None:
    statement = "SELECT count(*) FROM nodes WHERE id = ANY(%s)"
    with connect(db_url, application_name="flpg-test-hot", hot=True) as hot:
        for ids in ([1], [2, 3], [4]):
            hot.execute(statement, (ids,))
        plans = hot.execute(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements"
            " WHERE statement LIKE 'SELECT count(*) FROM nodes%'"
        ).fetchall()
        assert plans == [(3, 0)]  # prepared at first use; planned once, generic
    with connect(db_url, application_name="flpg-test-cold") as cold:
        cold.execute(statement, ([1],))
        assert scalar(cold, "SELECT count(*) FROM pg_prepared_statements") == 0
        assert scalar(cold, "SHOW plan_cache_mode") == "auto"
