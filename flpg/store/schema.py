"""The schema's own state: its Alembic revision, names already taken, and the
planner's statistics of its tables."""

from __future__ import annotations

from collections.abc import Sequence

import psycopg

from flpg.errors import FlpgError, PermissionDenied, SchemaMismatch
from flpg.store._exec import one, rows
from flpg.store.db import Connection
from flpg.store.errors import role_of, translate


def revision(conn: Connection) -> str | None:
    """The revision the database is at; None if it was never migrated. SchemaMismatch
    if `alembic_version` exists but is not Alembic's (another application's table)."""
    try:
        with conn.transaction():  # a failed read must not poison an outer transaction
            row = one(conn, "schema_get_revision")
    except psycopg.errors.UndefinedTable:
        return None
    except psycopg.errors.UndefinedColumn as exc:
        raise SchemaMismatch(
            "the database has a table alembic_version that is not a schema revision "
            f"({exc.diag.message_primary}); use a database of flpg's own (--db)"
        ) from exc
    return None if row is None else str(row["version_num"])


def existing_names(conn: Connection, names: Sequence[str]) -> list[tuple[str, str]]:
    """`(name, kind)` of the objects in the current schema that have one of `names`."""
    return [
        (r["name"], r["kind"])
        for r in rows(conn, "schema_list_existing_names", {"names": list(names)})
    ]


def migration_error(
    exc: BaseException, url: str, *, current: str | None, target: str
) -> FlpgError | None:
    """The FlpgError for a migration (from `current` to `target`) that failed with
    `exc` (Alembic's DBAPIError); None if `exc` does not wrap a psycopg error. A
    missing privilege says to migrate as the database's owner."""
    orig = getattr(exc, "orig", None)
    if not isinstance(orig, psycopg.Error):
        return None
    error = translate(orig, url)
    if isinstance(error, PermissionDenied):
        return PermissionDenied(
            f"the schema needs migrating from {current or 'empty'} to {target}, but "
            f"{role_of(orig, url)} may not change it "
            f"({orig.diag.message_primary}); run `flpg db upgrade` as the "
            "database's owner"
        )
    return error


MIN_CHANGES = 64
"""Row changes a table needs since its last ANALYZE before `refresh_statistics`
analyzes it."""


def refresh_statistics(conn: Connection, min_changes: int = MIN_CHANGES) -> list[str]:
    """Analyze the coordination tables that changed at least `min_changes` rows, and
    as many rows as they had, since their last ANALYZE; return their names.

    Hot connections keep each plan until ANALYZE invalidates it, and autovacuum's
    first ANALYZE of a new table comes up to a minute late, so the link calls this
    every sweep (docs/architecture.md, "Young tables"). Only a link or admin may
    (PermissionDenied otherwise, from the database)."""
    row = one(conn, "schema_refresh_statistics", {"min_changes": min_changes})
    return list(row["analyzed"]) if row is not None else []
