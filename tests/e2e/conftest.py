"""Fixtures of the end-to-end tests: a `Federation` of real flpg processes per test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import TEST_ENV, restrict_database, url_for
from tests.e2e.harness import APPS, CliResult, Federation, FinishedRun


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    setattr(item, f"e2e_rep_{report.when}", report)
    return report


@pytest.fixture
def federation(
    request: pytest.FixtureRequest, flpg_env: dict[str, str], tmp_path: Path
) -> Iterator[Federation]:
    """A harness bound to this test's fresh database. Every process it started is
    stopped at teardown (SIGTERM, then SIGKILL). Teardown fails if a process is still
    alive afterwards, and, when the test passed, if a process had to be killed,
    exited non-zero on SIGTERM, or a stray (e.g. an orphaned ServerApp) was found."""
    fed = Federation(flpg_env, tmp_path)
    yield fed
    report = fed.stop_all()
    assert not report.left, f"processes left running: {report.left}\n{fed.logs()}"
    call = getattr(request.node, "e2e_rep_call", None)
    if call is not None and call.passed:
        assert report.clean, f"unclean shutdown: {report}\n{fed.logs()}"


def make_env(db_url: str, workdir: Path) -> dict[str, str]:
    """Like the `flpg_env` fixture, for a database and directory of our choosing."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLPG_")}
    env.update(TEST_ENV)
    env["FLPG_DATABASE_URL"] = db_url
    env["FLPG_CACHE_DIR"] = str(workdir / "cache")
    env["FLPG_HOME"] = str(workdir / "home")
    return env


def _submitted_id(result: CliResult) -> int:
    first = result.stdout.splitlines()[0] if result.stdout else ""
    assert first.startswith("submitted run "), result
    return int(first.split()[2])


@pytest.fixture(scope="session")
def finished_run(pg_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FinishedRun]:
    """One federated run of apps/deterministic (link, exec, two nodes, submitted with
    `flpg run --stream`) and one of apps/faulty, shared by the tests that only read
    their outcome. Its own database is a copy of the migrated template; the processes
    are stopped before the tests look at it."""
    name = f"flpg_e2e_run_{os.getpid()}"
    admin = url_for(pg_server.host, pg_server.port, pg_server.user, "postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{pg_server.template_dbname}"')
    try:
        url = url_for(pg_server.host, pg_server.port, pg_server.user, name)
        restrict_database(url)
        workdir = tmp_path_factory.mktemp("finished-run")
        fed = Federation(make_env(url, workdir), workdir)
        try:
            fed.federation(2)
            stream = fed.cli(
                "run", str(APPS / "deterministic"), "--stream", timeout=90, check=False
            )
            faulty = fed.cli(
                "run",
                str(APPS / "faulty"),
                "--run-config",
                'mode="client-raises"',
                "--stream",
                timeout=90,
                check=False,
            )
        finally:
            report = fed.stop_all()
        assert not report.left, f"processes left running: {report.left}\n{fed.logs()}"
        assert stream.returncode == 0, f"{stream}\n{fed.logs()}"
        assert faulty.returncode == 0, f"{faulty}\n{fed.logs()}"
        yield FinishedRun(url, _submitted_id(stream), _submitted_id(faulty), fed, stream, report)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
