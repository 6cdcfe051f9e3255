"""Schema migration: `flpg db upgrade`, and the idempotent upgrade every service runs.

Concurrent callers are safe: the migration transaction takes an advisory lock
first (see migrations/env.py), so the schema is migrated exactly once.
"""

from __future__ import annotations

import logging
from functools import cache

import psycopg

from flpg.db import connect
from flpg.resources import migrations_dir

log = logging.getLogger(__name__)


def _config(url: str) -> object:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.attributes["flpg_url"] = url
    return cfg


@cache
def head_revision() -> str:
    """The newest revision shipped with this flpg."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(str(migrations_dir()))
    heads = script.get_heads()
    if len(heads) != 1:
        raise RuntimeError(f"migrations have {len(heads)} heads, expected 1")
    return heads[0]


def current_revision(url: str) -> str | None:
    """The revision the database is at, or None for an empty database."""
    with connect(url, application_name="flpg-migrate") as conn:
        try:
            row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        except psycopg.errors.UndefinedTable:
            return None
    return str(row[0]) if row else None


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database at `url` to `revision` (default: head)."""
    from alembic import command

    command.upgrade(_config(url), revision)  # type: ignore[arg-type]


def downgrade(url: str, revision: str) -> None:
    """Migrate the database at `url` down to `revision` (`base` empties it)."""
    from alembic import command

    command.downgrade(_config(url), revision)  # type: ignore[arg-type]


def ensure_schema(url: str) -> None:
    """Upgrade to head unless the database is already there (cheap when it is)."""
    if current_revision(url) != head_revision():
        log.info("migrating the database schema to %s", head_revision())
        upgrade(url)
