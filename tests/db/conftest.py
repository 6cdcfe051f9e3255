"""Fixtures and helpers shared by the database-level tests.

Everything here talks to the real PostgreSQL cluster of the test session (see
tests/conftest.py); `db_url` is a fresh, migrated database per test.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from flpg.app.message import Message
from flpg.app.records import RecordDict
from flpg.store import nodes as store_nodes
from flpg.store import runs as store_runs
from flpg.store.db import Connection, connect
from tests.conftest import scratch_database

BUNDLE = b"PK\x05\x06" + bytes(18)  # an empty zip file
APP_HASH = hashlib.sha256(BUNDLE).hexdigest()


@dataclass
class Federation:
    """A run with its selection, plus a registered node outside the selection."""

    url: str
    run_id: int
    selected: list[int]
    outside: int


@pytest.fixture
def conn(db_url: str) -> Iterator[Connection]:
    """An autocommit connection to the test's fresh database."""
    with connect(db_url, application_name="flpg-test") as c:
        yield c


@pytest.fixture
def second_empty_db_url(pg_server: Any) -> Iterator[str]:
    """Another empty database (`empty_db_url` gives only one per test)."""
    with scratch_database(pg_server, "flpg_models") as url:
        yield url


@pytest.fixture(scope="module")
def module_db_url(pg_server: Any) -> Iterator[str]:
    """A migrated database shared by one module's tests (copied from the session's
    template); tests that use it must roll back what they write."""
    with scratch_database(pg_server, "flpg_module", pg_server.template_dbname) as url:
        yield url


def register(conn: Connection, name: str, **config: Any) -> int:
    return store_nodes.register(conn, name=name, node_config=dict(config), labels={}).id


def create_run(conn: Connection, node_ids: list[int], **run_config: Any) -> int:
    return store_runs.create(
        conn,
        app_hash=APP_HASH,
        app_name="testapp",
        bundle=BUNDLE,
        run_config=dict(run_config),
        node_ids=node_ids,
    )


def make_federation(conn: Connection, url: str, n_selected: int = 3) -> Federation:
    selected = [register(conn, f"node-{i}", **{"partition-id": i}) for i in range(n_selected)]
    outside = register(conn, "node-outside")
    run_id = create_run(conn, selected, lr=0.1)
    return Federation(url=url, run_id=run_id, selected=selected, outside=outside)


@pytest.fixture
def fed(conn: Connection, db_url: str) -> Federation:
    """3 selected nodes and one registered node outside the run's selection."""
    return make_federation(conn, db_url)


def instruction(dst: int, content: RecordDict | None = None, **kwargs: Any) -> Message:
    return Message(content if content is not None else RecordDict(), dst, "train", **kwargs)


def scalar(conn: Connection, sql: str, params: Any = None) -> Any:
    row = conn.execute(sql, params).fetchone()
    assert row is not None
    return row[0]
