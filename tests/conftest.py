"""Shared fixtures: a throwaway PostgreSQL cluster for the whole test session.

The cluster is started by flpg's own launcher (as an unprivileged account when the
tests run as root, since PostgreSQL refuses root) in a private /tmp directory,
listening on a unix socket only, so it never touches a server that happens to run
on this machine. pytest-postgresql then creates a fresh database per test from a
template that already holds the migrated schema.

Only the db, e2e and faults tests use the cluster. The unit tests must not reach it
(a collection check refuses a unit test whose fixtures would start it), so they run
on a machine without the PostgreSQL server binaries; there, every test that needs the
cluster errors with one message naming what to install.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from pytest_postgresql import factories
from pytest_postgresql.executors import NoopExecutor
from pytest_postgresql.janitor import DatabaseJanitor

from flpg.errors import EmbeddedDatabaseError
from flpg.local.binaries import find_bindir
from flpg.local.cluster import Cluster
from tests._binaries import MISSING_BINARIES

# Short intervals for every worker the tests start.
TEST_ENV = {
    "FLPG_HEARTBEAT": "0.5",
    "FLPG_OFFLINE_AFTER": "2",
    "FLPG_LEASE": "3",
    "FLPG_POLL": "1",
    "FLPG_SWEEP": "0.2",
}


def url_for(host: str, port: int, user: str, dbname: str) -> str:
    """A libpq URL for a unix-socket host."""
    return f"postgresql://{user}@/{dbname}?host={quote(host, safe='')}&port={port}"


def _migrate(host: str, port: int, user: str, dbname: str, **_: Any) -> None:
    from flpg.store.migrate import upgrade

    upgrade(url_for(host, port, user, dbname))


UNIT_TESTS = Path(__file__).parent / "unit"


CLUSTER_FIXTURES = frozenset({"pg_cluster", "pg_server", "postgresql"})
"""Fixtures that start the cluster; `postgresql` requests `pg_server` only at run time,
so it does not show `pg_cluster` in a test's fixture closure."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Refuse a unit test whose fixtures would start the PostgreSQL cluster."""
    for item in items:
        if item.path.is_relative_to(UNIT_TESTS) and CLUSTER_FIXTURES.intersection(
            getattr(item, "fixturenames", ())
        ):
            raise pytest.UsageError(
                f"{item.nodeid} uses the PostgreSQL cluster; unit tests must run without "
                "it (move the test to tests/db)"
            )


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    """The session's PostgreSQL cluster (destroyed at the end). Without the server
    binaries every test that uses it errors with `MISSING_BINARIES` (pytest caches a
    session fixture's failure, so the search runs once)."""
    missing = None
    try:
        find_bindir()
    except EmbeddedDatabaseError as exc:
        missing = str(exc)
    if missing is not None:
        pytest.fail(MISSING_BINARIES.format(missing), pytrace=False)
    root = Path(tempfile.mkdtemp(prefix="flpg-test-", dir="/tmp"))
    cluster = Cluster(root, dbname="postgres")
    cluster.ensure_running()
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="session")
def pg_server(pg_cluster: Cluster) -> Iterator[NoopExecutor]:
    """pytest-postgresql's view of the cluster, with a migrated template database."""
    executor = NoopExecutor(
        host=str(pg_cluster.socket_dir),
        port=pg_cluster.port,
        user="flpg",
        options="",
        dbname="flpg_test",
    )
    janitor = DatabaseJanitor(
        user=executor.user,
        host=executor.host,
        port=executor.port,
        dbname=executor.template_dbname,
        as_template=True,
    )
    with janitor:
        janitor.load(_migrate)
        yield executor


postgresql = factories.postgresql("pg_server")


@pytest.fixture
def db_url(postgresql: psycopg.Connection[Any]) -> str:
    """URL of a fresh, migrated database for this test (restricted as migrating made
    its template: a copy does not inherit database privileges)."""
    info = postgresql.info
    url = url_for(info.host, info.port, info.user, info.dbname)
    restrict_database(url)
    return url


def restrict_database(url: str) -> None:
    """Give a copy of the migrated template the database privileges migrating gave
    the template (CREATE DATABASE ... TEMPLATE does not copy them)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT flpg_restrict_database()")


_scratch_counter = itertools.count()


@contextlib.contextmanager
def scratch_database(
    pg_server: NoopExecutor, prefix: str, template: str | None = None
) -> Iterator[str]:
    """A database created for the caller (empty, or copied from `template`) and
    dropped afterwards; yields its URL."""
    name = f"{prefix}_{os.getpid()}_{next(_scratch_counter)}"
    admin = url_for(pg_server.host, pg_server.port, pg_server.user, "postgres")
    source = f' TEMPLATE "{template}"' if template else ""
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"{source}')
    try:
        url = url_for(pg_server.host, pg_server.port, pg_server.user, name)
        if template:
            restrict_database(url)
        yield url
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def empty_db_url(pg_server: NoopExecutor) -> Iterator[str]:
    """URL of a fresh database without any schema."""
    with scratch_database(pg_server, "flpg_empty") as url:
        yield url


@pytest.fixture
def flpg_env(db_url: str, tmp_path: Path) -> dict[str, str]:
    """Environment for flpg processes started by a test: its database, short
    intervals, a private app cache and flpg home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLPG_")}
    env.update(TEST_ENV)
    env["FLPG_DATABASE_URL"] = db_url
    env["FLPG_CACHE_DIR"] = str(tmp_path / "cache")
    env["FLPG_HOME"] = str(tmp_path / "home")
    return env
