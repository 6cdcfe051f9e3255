"""House rules the code must keep, checked by reading flpg's own source with `ast`.

- Every named query of `sql/` is run by the store, and every query name the code
  passes to the store's executors exists.
- Query names are noun-first, `<table>_<verb>[_<detail>]` with the table as the
  schema names it, and all queries of one table live in one file.
- Only the store and the connection layer import psycopg.
- View DDL lives in versioned files of `sql/views/`, never pasted into migrations.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import flpg
from flpg.models import metadata
from flpg.store.resources import migrations_dir, sql_dir
from flpg.store.sql import latest_views, parse, queries

PACKAGE = Path(flpg.__file__).parent

# The store's executors and the position of the query name among their arguments.
EXECUTORS = {
    ("flpg.store._exec", "rows"): 1,
    ("flpg.store._exec", "one"): 1,
    ("flpg.store._exec", "run"): 1,
    ("flpg.store._exec", "many"): 1,
    ("flpg.store._exec", "many_returning"): 1,
    ("flpg.store.sql", "query"): 0,
}


def modules() -> Iterator[tuple[Path, ast.Module]]:
    """Every module of the flpg package, parsed."""
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path, ast.parse(path.read_text(), filename=str(path))


def query_name_args(tree: ast.Module) -> Iterator[ast.expr]:
    """The query-name argument of each call to an executor imported into `tree`."""
    position: dict[str, int] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                if (node.module, alias.name) in EXECUTORS:
                    position[alias.asname or alias.name] = EXECUTORS[(node.module, alias.name)]
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            at = position.get(node.func.id)
            if at is not None and len(node.args) > at:
                yield node.args[at]


def used_query_names() -> tuple[set[str], list[str]]:
    """Names passed as literals to the executors, and the calls that pass anything else."""
    used: set[str] = set()
    not_literal: list[str] = []
    for path, tree in modules():
        if path == PACKAGE / "store" / "_exec.py":
            continue  # the executors themselves pass the name through
        for arg in query_name_args(tree):
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                used.add(arg.value)
            else:
                not_literal.append(f"{path.relative_to(PACKAGE)}:{arg.lineno}: {ast.unparse(arg)}")
    return used, not_literal


def test_the_scan_sees_the_store_run_queries() -> None:
    used, _ = used_query_names()
    assert "messages_claim" in used  # the scan would pass vacuously if it saw nothing


def test_query_names_are_literals() -> None:
    _, not_literal = used_query_names()
    assert not_literal == []


def test_every_named_query_is_used_and_every_used_name_exists() -> None:
    used, _ = used_query_names()
    defined = set(queries())
    assert sorted(defined - used) == [], "named queries that no code runs"
    assert sorted(used - defined) == [], "query names that sql/ does not define"


# Queries about the schema itself (its revision, names in the catalog) or the
# session's settings serve no table.
NON_TABLE_NOUNS = {"schema", "session", "ui"}


def table_of(name: str) -> str | None:
    """The longest table (or non-table noun) that `name` starts with, then `_`."""
    nouns = set(metadata.tables) | NON_TABLE_NOUNS
    found = [noun for noun in nouns if name.startswith(noun + "_")]
    return max(found, key=len) if found else None


def test_query_names_start_with_their_table() -> None:
    assert table_of("messages_claim") == "messages"
    assert table_of("message_arrays_list") == "message_arrays"
    assert [name for name in queries() if table_of(name) is None] == []


def test_the_queries_of_a_table_live_in_one_file() -> None:
    files_of: dict[str, set[str]] = {}
    for path in sorted(sql_dir().glob("*.sql")):
        for name in parse(path.read_text()):
            files_of.setdefault(str(table_of(name)), set()).add(path.name)
    assert {table: files for table, files in files_of.items() if len(files) > 1} == {}


# Who may import psycopg: the store (runs SQL, translates errors), the connection
# layer (flpg/store/db.py: connect, sessions, LISTEN; psycopg_pool's ConnectionPool, which
# the node worker and its app processes hold as their connections) and the embedded
# cluster's admin (flpg/local/cluster.py: checks the server answers, creates its database).
PSYCOPG_ALLOWED = ("store/", "local/cluster.py")
CONNECTION_LAYER = {"psycopg_pool": ("store/db.py",)}


def imported_modules(tree: ast.Module) -> Iterator[str]:
    """Top-level package of every module `tree` imports (absolute imports)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module.split(".")[0]


def test_only_the_store_and_the_connection_layer_import_psycopg() -> None:
    offenders = []
    for path, tree in modules():
        where = path.relative_to(PACKAGE).as_posix()
        for module in imported_modules(tree):
            if module == "psycopg" and not where.startswith(PSYCOPG_ALLOWED):
                offenders.append(f"{where}: {module}")
            if module in CONNECTION_LAYER and where not in CONNECTION_LAYER[module]:
                offenders.append(f"{where}: {module}")
    assert offenders == []


def test_the_import_scan_sees_psycopg_imports() -> None:
    found = {
        path.relative_to(PACKAGE).as_posix()
        for path, tree in modules()
        if "psycopg" in set(imported_modules(tree))
    }
    assert {"store/db.py", "store/_exec.py"} <= found


def test_view_versions_are_numbered_from_one_without_gaps() -> None:
    versions: dict[str, list[int]] = {}
    for path in (sql_dir() / "views").glob("*.sql"):
        name, version = path.name.removesuffix(".sql").rsplit(".v", 1)
        versions.setdefault(name, []).append(int(version))
    assert set(versions) == set(latest_views())
    assert {name: sorted(v) for name, v in versions.items()} == {
        name: list(range(1, len(v) + 1)) for name, v in versions.items()
    }


def test_views_come_after_the_views_they_select_from() -> None:
    order = list(latest_views())
    assert order.index("message_latency") < order.index("node_participation")


def test_migrations_name_view_files_instead_of_pasting_views() -> None:
    pasted = [
        path.name
        for path in sorted((migrations_dir() / "versions").glob("*.py"))
        if "CREATE OR REPLACE VIEW" in path.read_text().upper()
        or "CREATE VIEW" in path.read_text().upper()
    ]
    assert pasted == []


def test_migrations_name_security_files_instead_of_pasting_them() -> None:
    """Roles, grants and policies live in sql/security/, like views in sql/views/;
    every file there is named by a migration."""
    from flpg.store.migrate import SECURITY_SQL

    texts = [p.read_text() for p in sorted((migrations_dir() / "versions").glob("*.py"))]
    pasted = [
        word
        for word in ("CREATE POLICY", "CREATE ROLE", "GRANT ", "CREATE FUNCTION")
        if any(word in text.upper() for text in texts)
    ]
    assert pasted == []
    shipped = {p.name.removesuffix(".sql") for p in (sql_dir() / "security").glob("*.sql")}
    named = {name for name in shipped if any(f'security_sql("{name}")' in t for t in texts)}
    assert named == shipped
    assert set(SECURITY_SQL) <= shipped
