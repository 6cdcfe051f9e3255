"""Bad input to the real `flpg` command, by class: one line `flpg: error: ...` on
stderr, the documented exit code, and no row of any table changed.

No worker runs here: every case is refused before a worker would start, so the
CLI runs against a database with two registered nodes and nothing else.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from psycopg import sql

from tests.conftest import scratch_database
from tests.e2e.harness import APPS, Federation, wait_for
from tests.e2e.test_cli_errors import assert_one_line_error

pytestmark = pytest.mark.e2e

DETERMINISTIC = str(APPS / "deterministic")
EXTRA_CONFIG = """
name = "plain"
lr = 0.1
flag = false
sizes = [1, 2]

[tool.flpg.app.config.model]
depth = 2
"""


def snapshot(url: str) -> dict[str, str]:
    """Every table of the public schema -> a digest of all its rows."""
    with psycopg.connect(url, autocommit=True) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
            )
        ]
        digests = {}
        for table in tables:
            query = sql.SQL(
                "SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {} t"
            ).format(sql.Identifier(table))
            row = conn.execute(query).fetchone()
            digests[table] = row[0] if row else ""
    return digests


ROLE_PASSWORD = "bad-input-role-password"
"""The password of the login roles these tests create: the test cluster trusts only its
admin on the unix socket, every other role logs in with its password."""


def url_as(url: str, role: str) -> str:
    """`url` with another user, logging in with `ROLE_PASSWORD`."""
    tail = url.partition("@")[2]
    return f"postgresql://{quote(role, safe='')}:{quote(ROLE_PASSWORD, safe='')}@{tail}"


@pytest.fixture
def fed(federation: Federation) -> Federation:
    """Two registered nodes: 1:n0 (region eu, site "lab 2") and 2:n1 (region us)."""
    federation.sql(
        """
        INSERT INTO nodes (name, node_config, labels) VALUES
            ('n0', '{"partition-id": 0}', '{"region": "eu", "site": "lab 2"}'),
            ('n1', '{"partition-id": 1}', '{"region": "us"}')
        """
    )
    return federation


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The deterministic app with defaults of every kind (text, float, bool, list, a
    nested table)."""
    target = tmp_path_factory.mktemp("apps") / "typed"
    shutil.copytree(APPS / "deterministic", target, ignore=shutil.ignore_patterns("__pycache__"))
    pyproject = target / "pyproject.toml"
    pyproject.write_text(pyproject.read_text() + EXTRA_CONFIG)
    return str(target)


def refused(fed: Federation, args: list[str], code: int, *needles: str) -> str:
    """Run `flpg ARGS`; assert one error line with the needles, exit `code`, and that
    no row changed. Returns the line."""
    before = snapshot(fed.url)
    result = fed.cli(*args, check=False, timeout=60)
    line = assert_one_line_error(result, *needles)
    assert result.returncode == code, result
    assert "Traceback" not in result.stderr
    assert snapshot(fed.url) == before
    return line


# ------------------------------------------------------------------ integers


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["run", "APP", "--priority", "99999999999"], ["--priority", "99999999999", "range"]),
        (["run", "APP", "--priority", "-2147483649"], ["--priority", "-2147483649"]),
        (["run", "APP", "--priority", "high"], ["--priority", "'high'", "integer"]),
        (["run", "APP", "--max-restarts", "2147483648"], ["--max-restarts", "2147483648"]),
        (["run", "APP", "--max-restarts", "-1"], ["--max-restarts", "-1"]),
        (["node", "--name", "a", "--concurrency", "0"], ["--concurrency", "0"]),
        (["node", "--name", "a", "--concurrency", "99999999999"], ["--concurrency"]),
        (["node", "--name", "a", "--virtual", "0"], ["--virtual", "0"]),
        (["node", "--name", "a", "--virtual", "99999999999"], ["--virtual", "99999999999"]),
        (["exec", "--max-runs", "0"], ["--max-runs", "0"]),
        (["exec", "--max-runs", "99999999999"], ["--max-runs", "99999999999"]),
        (["link", "--sweep", "nan"], ["--sweep", "nan"]),
        (["link", "--sweep", "-1"], ["--sweep", "-1"]),
        (["link", "--sweep", "1e9"], ["--sweep", "1e9"]),
        (["show", "99999999999999999999"], ["RUN_ID", "99999999999999999999"]),
        (["log", "0"], ["RUN_ID", "0"]),
        (["stop", "first"], ["RUN_ID", "'first'"]),
        (["resume", "9223372036854775808"], ["RUN_ID", "9223372036854775808"]),
        (["ls", "--limit", "0"], ["--limit", "0"]),
        (["ls", "--limit", "99999999999999999999"], ["--limit"]),
        (["up", "--nodes", "100000"], ["--nodes", "100000"]),
        (["demo", "--rounds", "0"], ["--rounds", "0"]),
    ],
    ids=lambda v: ascii(" ".join(v))[1:50] if isinstance(v, list) else None,
)
def test_integer_beyond_its_range_is_refused(
    fed: Federation, app: str, args: list[str], needles: list[str]
) -> None:
    refused(fed, [app if a == "APP" else a for a in args], 2, *needles)


# ------------------------------------------------------------------ text


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["node", "--name", "7"], ["--name", "'7'", "all digits"]),
        (["node", "--name", "0042"], ["--name", "'0042'", "all digits"]),
        (["node", "--name", "   "], ["--name", "empty"]),
        (["node", "--name", "x" * 129], ["--name", "129 characters", "128"]),
        (["node", "--name", "bad\udcffbyte"], ["--name", "not UTF-8"]),
        (["node", "--name", "a,b"], ["--name", "commas"]),
        (["node", "--name", " lead"], ["--name", "space"]),
        (["node", "--name", "tab\there"], ["--name", "control characters"]),
        (["node", "--name", "x" * 126, "--virtual", "100"], ["--virtual 100", "129 characters"]),
        (["node", "--name", "a", "--node-config", 'k="a\\u0000b"'], ["--node-config", "NUL"]),
        (["node", "--name", "a", "--node-config", "k=inf"], ["--node-config", "k", "finite"]),
        (["node", "--name", "a", "--node-config", "k=\udcff"], ["--node-config", "'k'"]),
        (["node", "--name", "a", "--label", 'k="\\u0000"'], ["--label", "k", "NUL"]),
        (["node", "--name", "a", "--label", 'k="\udcff"'], ["--label", "not UTF-8"]),
        (["node", "--name", "a", "--label", "k=nan"], ["--label", "finite"]),
        (["run", "APP", "--nodes", "n0,\udcff"], ["--nodes", "not UTF-8"]),
        (["run", "APP", "--nodes", "99999999999999999999"], ["--nodes", "not a node id"]),
        (["run", "APP", "--node-selector", 'region="\\u0000"'], ["--node-selector", "NUL"]),
        (["run", "APP", "--run-config", 'name="a\\u0000b"'], ["--run-config", "name", "NUL"]),
        (["run", "APP", "--run-config", 'name="\udcff"'], ["--run-config", "not UTF-8"]),
        (["run", "APP", "--run-config", "lr=nan"], ["--run-config", "lr", "finite"]),
        (["run", "APP", "--run-config", "lr=-inf"], ["--run-config", "lr", "finite"]),
        (
            ["run", "APP", "--run-config", "num-server-rounds=99999999999999999999"],
            ["num-server-rounds", "64-bit"],
        ),
        (["run", "APP", "--run-config", "name=1979-05-27"], ["name", "date", "quote it"]),
        (["run", "APP", "--run-config", "sizes=[1, nan]"], ["sizes[1]", "finite"]),
        (["run", "APP", "--run-config", "name={a=1}"], ["'name'", "table"]),
        (["run", "APP", "--run-config", "lr=0.2#x"], ["'lr'", "not a TOML value"]),
        (["run", "APP", "--run-config", "x" * 129 + "=1"], ["not a valid key", "128"]),
        (["ls", "--db", "not-a-url"], ["--db", "not a PostgreSQL URL"]),
        (["ls", "--db", "postgresql://u:secret@/x?bogus=1"], ["--db", "u:***@", "bogus"]),
    ],
    ids=lambda v: ascii(" ".join(v))[1:50] if isinstance(v, list) else None,
)
def test_text_the_database_cannot_store_is_refused(
    fed: Federation, app: str, args: list[str], needles: list[str]
) -> None:
    line = refused(fed, [app if a == "APP" else a for a in args], 2, *needles)
    assert "secret" not in line


# ------------------------------------------------------------------ k=v syntax


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["run", "APP", "--run-config", "lr=0.2 lr=0.3"], ["--run-config", "'lr'", "twice"]),
        (["run", "APP", "--node-selector", "region=eu region=us"], ["'region'", "twice"]),
        (["node", "--name", "a", "--node-config", "k=1 k=1"], ["--node-config", "'k'", "twice"]),
        (["node", "--name", "a", "--label", "r=eu", "--label", "r=us"], ["--label", "twice"]),
        (["run", "APP", "--run-config", 'name="a b'], ["--run-config", "unterminated"]),
        (["node", "--name", "a", "--label", "site='lab 2"], ["--label", "unterminated"]),
        (["run", "APP", "--run-config", "name=a b"], ["--run-config", "'b'", "key=value"]),
        (["run", "APP", "--node-selector", "region"], ["'region'", "key=value"]),
        (["run", "APP", "--node-selector", ""], ["--node-selector", "empty"]),
        (["run", "APP", "--nodes", "1,,2"], ["--nodes", "comma-separated"]),
        (["run", "APP", "--nodes", "n0,1"], ["--nodes", "1:n0", "twice"]),
        (["node", "--name", "a", "--node-config", "9k=1"], ["--node-config", "'9k'", "key"]),
    ],
    ids=lambda v: ascii(" ".join(v))[1:50] if isinstance(v, list) else None,
)
def test_malformed_or_repeated_key_values_are_refused(
    fed: Federation, app: str, args: list[str], needles: list[str]
) -> None:
    refused(fed, [app if a == "APP" else a for a in args], 2, *needles)


# ------------------------------------------------------------------ run-config types


@pytest.mark.parametrize(
    ("override", "needles"),
    [
        ("num-server-rounds=abc", ["num-server-rounds", "an integer", "default 3", '"abc"']),
        ("num-server-rounds=1.5", ["num-server-rounds", "an integer", "1.5"]),
        ("num-server-rounds=true", ["num-server-rounds", "an integer", "true"]),
        ('num-server-rounds="3"', ["num-server-rounds", "an integer", '"3"']),
        ("lr=fast", ["lr", "a number", "default 0.1", '"fast"']),
        ("lr=true", ["lr", "a number", "true"]),
        ("flag=1", ["flag", "a boolean", "default false", "1"]),
        ("name=5", ["name", "a string", "quote it", "5"]),
        ("sizes=3", ["sizes", "a list", "[1, 2]", "3"]),
        ("model.depth=2.5", ["model.depth", "an integer", "2.5"]),
        ("depth=2", ["'depth'", "not in [tool.flpg.app.config]", "model.depth"]),
    ],
)
def test_run_config_of_the_wrong_type_is_refused_naming_key_type_and_value(
    fed: Federation, app: str, override: str, needles: list[str]
) -> None:
    refused(fed, ["run", app, "--run-config", override], 2, "--run-config", *needles)


@pytest.mark.parametrize(
    ("default", "needles"),
    [
        ('note = "a\\u0000b"', ["note", "NUL"]),
        ("lr = nan", ["lr", "finite"]),
        ("since = 1979-05-27", ["since", "date"]),
        ("big = 99999999999999999999", ["big", "64-bit"]),
    ],
    ids=["nul", "nan", "date", "big-int"],
)
def test_an_app_default_the_database_cannot_store_is_refused(
    fed: Federation, tmp_path: Path, default: str, needles: list[str]
) -> None:
    target = tmp_path / "bad-default"
    shutil.copytree(APPS / "deterministic", target, ignore=shutil.ignore_patterns("__pycache__"))
    pyproject = target / "pyproject.toml"
    pyproject.write_text(pyproject.read_text() + default + "\n")
    refused(fed, ["run", str(target)], 2, "[tool.flpg.app.config] of e2e-deterministic", *needles)


def test_run_config_values_with_spaces_quotes_and_int_for_float_are_stored(
    fed: Federation, app: str
) -> None:
    config = "name=\"a b\" lr=1 flag=true sizes=[3, 4] model.depth=5 num-server-rounds='7'"
    result = fed.cli("run", app, "--run-config", config, check=False)
    assert result.returncode == 2  # num-server-rounds is an integer: '7' is a string
    result = fed.cli("run", app, "--run-config", config.replace("'7'", "7"), "--format", "json")
    run_id = result.json()["run_id"]
    stored = fed.scalar("SELECT run_config FROM runs WHERE id = %s", [run_id])
    assert stored == {
        "num-server-rounds": 7,
        "name": "a b",
        "lr": 1.0,
        "flag": True,
        "sizes": [3, 4],
        "model.depth": 5,
    }
    assert isinstance(stored["lr"], float)


# ------------------------------------------------------------------ selection


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--nodes", "99"], ["--nodes", "id '99'", "1:n0, 2:n1"]),
        (["--nodes", "n0,nosuch"], ["--nodes", "name 'nosuch'"]),
        (["--node-selector", "region=asia"], ["'region=asia'", "matches no registered node"]),
        (
            ["--nodes", "n0", "--node-selector", "region=us"],
            ["'region=us'", "matches node(s) 2:n1", "none of --nodes n0"],
        ),
    ],
    ids=["unknown-id", "unknown-name", "selector-matches-none", "selector-outside-nodes"],
)
def test_a_selection_of_no_node_is_not_found(
    fed: Federation, app: str, args: list[str], needles: list[str]
) -> None:
    refused(fed, ["run", app, *args], 4, *needles)


def test_no_registered_node_is_not_found(federation: Federation) -> None:
    refused(federation, ["run", DETERMINISTIC], 4, "no nodes are registered")


def test_a_selector_with_a_quoted_space_matches_the_label(fed: Federation) -> None:
    result = fed.cli("run", DETERMINISTIC, "--node-selector", 'site="lab 2"', "--format", "json")
    assert result.json()["nodes"] == [1]


def test_a_node_registers_labels_with_spaces(federation: Federation) -> None:
    proc = federation.start(
        "node-lab", "node", "--name", "lab", "--label", 'site="lab 2"', "--label", "tier=3"
    )
    labels = wait_for(
        lambda: federation.sql("SELECT labels FROM nodes WHERE name = 'lab'"),
        timeout=30,
        what="the node to register",
    )
    assert labels == [({"site": "lab 2", "tier": 3},)]
    assert federation.stop([proc]).clean


# ------------------------------------------------------------------ usage


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["ls", "--bogus"], ["--bogus", "flpg ls --help"]),
        (["run"], ["APP_DIR", "flpg run --help"]),
        (["node"], ["--name", "flpg node --help"]),
        (["ls", "--format", "xml"], ["--format", "'xml'"]),
        (["no-such-command"], ["no-such-command"]),
    ],
    ids=["unknown-option", "missing-argument", "missing-option", "bad-choice", "no-command"],
)
def test_usage_errors_are_one_line(fed: Federation, args: list[str], needles: list[str]) -> None:
    refused(fed, args, 2, *needles)


# ------------------------------------------------------------------ the database itself


@pytest.fixture
def empty_url(pg_server: Any) -> Iterator[str]:
    with scratch_database(pg_server, "flpg_badinput") as url:
        yield url


@pytest.fixture
def role(fed: Federation) -> Iterator[str]:
    """A login role with no privilege on flpg's tables."""
    name = f"flpg_user_{fed.tag[:8]}"
    fed.sql(f"CREATE ROLE \"{name}\" LOGIN PASSWORD '{ROLE_PASSWORD}'")
    yield name
    fed.sql(f'DROP OWNED BY "{name}"')
    fed.sql(f'DROP ROLE "{name}"')


def test_an_unknown_schema_revision_is_refused(fed: Federation) -> None:
    fed.sql("UPDATE alembic_version SET version_num = '9999_from_the_future'")
    for args in (["ls"], ["db", "upgrade"], ["run", DETERMINISTIC]):
        refused(fed, args, 6, "'9999_from_the_future'", "does not know", "upgrade flpg")


@pytest.mark.parametrize(
    ("ddl", "needles"),
    [
        ("CREATE TABLE runs (id int, owner text)", ["table runs", "no flpg schema revision"]),
        ("CREATE TYPE run_status AS ENUM ('a')", ["type run_status"]),
        ("CREATE VIEW run_history AS SELECT 1 AS x", ["view run_history"]),
        ("CREATE TABLE alembic_version (id int)", ["alembic_version", "not a schema revision"]),
    ],
    ids=["table", "enum-type", "view", "foreign-alembic-table"],
)
def test_objects_flpg_did_not_create_are_refused(
    federation: Federation, empty_url: str, ddl: str, needles: list[str]
) -> None:
    with psycopg.connect(empty_url, autocommit=True) as conn:
        conn.execute(ddl)
    before = snapshot(empty_url)
    result = federation.cli("ls", "--db", empty_url, check=False)
    assert_one_line_error(result, *needles)
    assert result.returncode == 6
    assert snapshot(empty_url) == before  # nothing migrated, nothing dropped


def test_a_role_without_privileges_is_told_so(fed: Federation, role: str) -> None:
    url = url_as(fed.url, role)
    # Not a member of any flpg group: it may not even connect (migration 0008).
    refused(fed, ["ls", "--db", url], 6, f"role {role!r}", "may not connect", "not an flpg role")
    # Allowed to connect, but with no privilege on flpg's tables.
    database = fed.scalar("SELECT current_database()")
    fed.sql(f'GRANT CONNECT ON DATABASE "{database}" TO "{role}"')
    for args in (["ls"], ["nodes"], ["run", DETERMINISTIC]):
        refused(fed, [*args, "--db", url], 6, f"role {role!r}", "permission denied")


def test_a_role_that_may_only_read_cannot_submit_or_stop(fed: Federation, role: str) -> None:
    """An auditor (flpg_auditor: reads every table's metadata, writes nothing)."""
    run_id = fed.cli("run", DETERMINISTIC, "--format", "json").json()["run_id"]
    fed.sql(f'GRANT flpg_auditor TO "{role}"')
    url = url_as(fed.url, role)
    assert f"{run_id}" in fed.cli("ls", "--db", url).stdout
    refused(fed, ["run", DETERMINISTIC, "--db", url], 6, "permission denied for table")
    refused(fed, ["stop", str(run_id), "--db", url], 6, "permission denied for table runs")


def test_a_role_that_may_not_migrate_says_to_migrate_as_the_owner(
    federation: Federation, empty_url: str
) -> None:
    name = f"flpg_user_{federation.tag[:8]}"
    with psycopg.connect(empty_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE \"{name}\" LOGIN PASSWORD '{ROLE_PASSWORD}'")
        conn.execute(f'REVOKE CREATE ON SCHEMA public FROM PUBLIC, "{name}"')
    try:
        result = federation.cli("ls", "--db", url_as(empty_url, name), check=False)
        assert_one_line_error(result, "needs migrating from empty", f"role {name!r}", "owner")
        assert result.returncode == 6
        assert snapshot(empty_url) == {}
    finally:
        with psycopg.connect(empty_url, autocommit=True) as conn:
            conn.execute(f'DROP ROLE "{name}"')


def test_a_read_only_database_is_named(fed: Federation) -> None:
    dbname = fed.scalar("SELECT current_database()")
    fed.sql(f'ALTER DATABASE "{dbname}" SET default_transaction_read_only = on')
    refused(fed, ["run", DETERMINISTIC], 6, "read-only")
