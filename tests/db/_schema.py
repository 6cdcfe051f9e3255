"""A normalized, comparable description of a database schema, read from pg_catalog.

Also holds the function the concurrent-migration test runs in spawned processes
(it must be importable without pytest fixtures).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import psycopg

IGNORED_TABLES = ("alembic_version",)


def _frozen(value: Any) -> Any:
    return tuple(_frozen(v) for v in value) if isinstance(value, list | tuple) else value


def _rows(conn: psycopg.Connection[Any], sql: str) -> list[tuple[Any, ...]]:
    """Rows as (hashable) tuples; arrays become tuples too."""
    return [_frozen(r) for r in conn.execute(sql, {"ignored": list(IGNORED_TABLES)}).fetchall()]


def describe(url: str) -> dict[str, Any]:
    """Tables, columns, constraints, indexes, sequences, enums, views, triggers and
    functions of the `public` schema, as plain data (alembic_version ignored)."""
    with psycopg.connect(url, autocommit=True) as conn:
        tables = _rows(
            conn,
            """
            SELECT c.relname, c.relpersistence, coalesce(c.reloptions, '{}')
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
              AND c.relname <> ALL(%(ignored)s)
            ORDER BY c.relname
            """,
        )
        columns = _rows(
            conn,
            """
            SELECT c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod),
                   a.attnotnull, pg_get_expr(d.adbin, d.adrelid), a.attidentity,
                   a.attgenerated, a.attstorage, a.attcompression, a.attcollation::regcollation
            FROM pg_attribute a
            JOIN pg_class c ON c.oid = a.attrelid
            JOIN pg_namespace n ON n.oid = c.relnamespace
            LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
            WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v')
              AND c.relname <> ALL(%(ignored)s)
              AND a.attnum > 0 AND NOT a.attisdropped
            ORDER BY c.relname, a.attnum
            """,
        )
        constraints = _rows(
            conn,
            """
            SELECT c.relname, k.conname, k.contype, pg_get_constraintdef(k.oid, true),
                   k.condeferrable, k.condeferred, k.convalidated
            FROM pg_constraint k
            JOIN pg_class c ON c.oid = k.conrelid
            JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = 'public' AND c.relname <> ALL(%(ignored)s)
            ORDER BY c.relname, k.conname
            """,
        )
        indexes = _rows(
            conn,
            """
            SELECT t.relname, i.relname, pg_get_indexdef(x.indexrelid)
            FROM pg_index x
            JOIN pg_class i ON i.oid = x.indexrelid
            JOIN pg_class t ON t.oid = x.indrelid
            JOIN pg_namespace n ON n.oid = t.relnamespace
            WHERE n.nspname = 'public' AND t.relname <> ALL(%(ignored)s)
            ORDER BY t.relname, i.relname
            """,
        )
        sequences = _rows(
            conn,
            """
            SELECT c.relname, format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement,
                   s.seqmax, s.seqmin, s.seqcache, s.seqcycle
            FROM pg_sequence s
            JOIN pg_class c ON c.oid = s.seqrelid
            JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = 'public'
            ORDER BY c.relname
            """,
        )
        enums = _rows(
            conn,
            """
            SELECT t.typname, array_agg(e.enumlabel::text ORDER BY e.enumsortorder)
            FROM pg_type t
            JOIN pg_enum e ON e.enumtypid = t.oid
            JOIN pg_namespace n ON n.oid = t.typnamespace
            WHERE n.nspname = 'public'
            GROUP BY t.typname
            ORDER BY t.typname
            """,
        )
        views = _rows(
            conn,
            """
            SELECT c.relname, pg_get_viewdef(c.oid, true)
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = 'public' AND c.relkind IN ('v', 'm')
            ORDER BY c.relname
            """,
        )
        triggers = _rows(
            conn,
            """
            SELECT c.relname, t.tgname, pg_get_triggerdef(t.oid, true)
            FROM pg_trigger t
            JOIN pg_class c ON c.oid = t.tgrelid
            JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = 'public' AND NOT t.tgisinternal
            ORDER BY c.relname, t.tgname
            """,
        )
        functions = _rows(
            conn,
            """
            SELECT p.proname, pg_get_function_identity_arguments(p.oid), pg_get_functiondef(p.oid)
            FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
            WHERE n.nspname = 'public'
            ORDER BY 1, 2
            """,
        )
    return {
        "tables": tables,
        "columns": columns,
        "constraints": constraints,
        "indexes": indexes,
        "sequences": sequences,
        "enums": enums,
        "views": views,
        "triggers": triggers,
        "functions": functions,
    }


def leftovers(url: str) -> dict[str, list[str]]:
    """What remains in `public` besides alembic_version: relations, types, functions."""
    with psycopg.connect(url, autocommit=True) as conn:
        relations = [
            f"{r[0]} ({r[1]})"
            for r in conn.execute(
                """
                SELECT c.relname, c.relkind FROM pg_class c
                JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE n.nspname = 'public' AND c.relname NOT IN ('alembic_version',
                                                                 'alembic_version_pkc')
                ORDER BY 1
                """
            )
        ]
        types = [
            r[0]
            for r in conn.execute(
                """
                SELECT t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
                WHERE n.nspname = 'public' AND t.typtype IN ('e', 'c', 'd', 'r')
                  AND t.typrelid = 0
                ORDER BY 1
                """
            )
        ]
        functions = [
            r[0]
            for r in conn.execute(
                """
                SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                WHERE n.nspname = 'public' ORDER BY 1
                """
            )
        ]
    return {"relations": relations, "types": types, "functions": functions}


def diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Human-readable differences between two descriptions (empty when equal)."""
    out: list[str] = []
    for key in sorted(set(a) | set(b)):
        left, right = set(a.get(key, [])), set(b.get(key, []))
        out += [f"{key}: only in first:  {x}" for x in sorted(left - right, key=repr)]
        out += [f"{key}: only in second: {x}" for x in sorted(right - left, key=repr)]
    return out


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def upgrade_in_process(url: str, barrier: Any, results: Any, tag: str) -> None:
    """Child process: wait for the sibling, then `flpg.store.migrate.upgrade(url)`.

    Puts `(tag, ok, error, alembic log lines, seconds)` on `results`.
    """
    from flpg.store.migrate import upgrade

    handler = _Collect()
    logger = logging.getLogger("alembic.runtime.migration")
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    # Warm up imports and the Alembic script directory so both start at the same moment.
    from alembic.script import ScriptDirectory  # noqa: F401

    barrier.wait(timeout=60)
    t0 = time.monotonic()
    try:
        upgrade(url)
    except BaseException as exc:  # report everything to the parent
        results.put((tag, False, f"{type(exc).__name__}: {exc}", handler.messages, 0.0))
        return
    results.put((tag, True, None, handler.messages, time.monotonic() - t0))
