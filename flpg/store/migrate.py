"""Schema migration: `flpg db upgrade`, and the idempotent upgrade every service runs.

Concurrent callers are safe: the migration transaction takes an advisory lock
first (see migrations/env.py), so the schema is migrated exactly once.

Before migrating, the database is checked, and refused with one line saying what
to do (SchemaMismatch or PermissionDenied, exit 6) when it is at a revision this
flpg does not know (a newer flpg's, or another application's), when it was never
migrated but already holds objects with the names flpg's schema uses, or when the
role may not read or change the schema.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import cache
from typing import TYPE_CHECKING

from flpg.errors import SchemaMismatch
from flpg.store import schema as store_schema
from flpg.store.db import connect
from flpg.store.errors import translated
from flpg.store.resources import migrations_dir, sql_dir
from flpg.store.sql import latest_views

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger(__name__)

HEAD_REVISION = "0018"
"""The newest revision shipped with this flpg, as Alembic's head names it (a test
checks they agree): services compare the database's revision with it in one query,
without loading Alembic and SQLAlchemy unless a migration is needed."""


SECURITY_SQL = (
    "roles.v1",
    "trust.v1",
    "runroles.v1",
    "trust.v2",
    "trust.v3",
    "trust.v4",
    "trust.v5",
    "trust.v6",
    "statistics.v1",
    "trust.v7",
    "trust.v8",
)
"""The files of `sql/security/` that head's schema is built with, in order: group
roles, then the functions, triggers, grants and policies of the trust model."""


def security_sql(name: str) -> str:
    """The text of `sql/security/<name>.sql`, as a migration names it (like views, a
    released version never changes); FileNotFoundError if it was never shipped."""
    path = sql_dir() / "security" / f"{name}.sql"
    if not path.is_file():
        raise FileNotFoundError(f"no security file {path.name} in {path.parent}")
    return path.read_text()


def _config(url: str) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.attributes["flpg_url"] = url
    return cfg


@cache
def _script() -> object:
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(migrations_dir()))


@cache
def head_revision() -> str:
    """The newest revision shipped with this flpg."""
    heads = _script().get_heads()  # type: ignore[attr-defined]
    if len(heads) != 1:
        raise RuntimeError(f"migrations have {len(heads)} heads, expected 1")
    return str(heads[0])


@cache
def known_revisions() -> frozenset[str]:
    """Every revision shipped with this flpg."""
    return frozenset(s.revision for s in _script().walk_revisions())  # type: ignore[attr-defined]


@cache
def schema_names() -> tuple[str, ...]:
    """Names flpg's schema gives to tables, views and enum types. Not Alembic's table:
    a downgrade to base leaves it empty, and a foreign one fails `revision`."""
    from sqlalchemy.dialects.postgresql import ENUM

    from flpg.models import metadata

    names = set(metadata.tables)
    for table in metadata.tables.values():
        names.update(c.type.name for c in table.columns if isinstance(c.type, ENUM) and c.type.name)
    names.update(latest_views())
    return tuple(sorted(names))


def current_revision(url: str) -> str | None:
    """The revision the database is at, or None for a database never migrated."""
    with connect(url, application_name="flpg-migrate") as conn, translated(url):
        return store_schema.revision(conn)


def check(url: str) -> str | None:
    """The database's revision, after checking that this flpg can use or migrate it;
    SchemaMismatch (or PermissionDenied) with what to do otherwise."""
    with connect(url, application_name="flpg-migrate") as conn, translated(url):
        current = store_schema.revision(conn)
        if current is not None and current not in known_revisions():
            raise SchemaMismatch(
                f"the database's schema is at revision {current!r}, which this flpg "
                f"(schema {head_revision()}) does not know: a newer flpg migrated it, or "
                "it belongs to another application; upgrade flpg, or point --db at "
                "another database"
            )
        if current is None:
            taken = store_schema.existing_names(conn, schema_names())
            if taken:
                listed = ", ".join(f"{kind} {name}" for name, kind in taken)
                raise SchemaMismatch(
                    f"the database already has {listed}, but no flpg schema revision: "
                    "flpg did not create them; give flpg a database of its own (--db), "
                    "or drop them"
                )
    return current


def _alembic(
    run: Callable[[Config, str], None], url: str, revision: str, current: str | None
) -> None:
    """Run an Alembic command from `current` to `revision`; database errors become
    FlpgErrors (a missing privilege says to migrate as the owner)."""
    from sqlalchemy.exc import DBAPIError

    try:
        run(_config(url), revision)
    except DBAPIError as exc:
        target = head_revision() if revision == "head" else revision
        error = store_schema.migration_error(exc, url, current=current, target=target)
        if error is None:
            raise
        raise error from exc


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database at `url` to `revision` (default: head), after `check`."""
    from alembic import command

    _alembic(command.upgrade, url, revision, check(url))


def downgrade(url: str, revision: str) -> None:
    """Migrate the database at `url` down to `revision` (`base` empties it)."""
    from alembic import command

    _alembic(command.downgrade, url, revision, check(url))


def ensure_schema(url: str) -> None:
    """Upgrade to head unless the database is already there: then it costs one query
    and does not import Alembic. Otherwise as `upgrade` (checked first)."""
    if current_revision(url) == HEAD_REVISION:
        return
    from alembic import command

    current = check(url)
    if current != head_revision():
        log.info("migrating the database schema to %s", head_revision())
        _alembic(command.upgrade, url, "head", current)
