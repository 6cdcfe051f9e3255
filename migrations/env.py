"""Alembic environment for flpg.

Migrations run online only, inside one transaction that first takes an advisory
lock, so several services starting at the same moment migrate exactly once.
"""

from __future__ import annotations

import os

import psycopg
from alembic import context
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from flpg.models import metadata

MIGRATION_LOCK_KEY = 0x666C7067  # "flpg"

config = context.config
url = (
    config.attributes.get("flpg_url")
    or context.get_x_argument(as_dictionary=True).get("db")
    or os.environ.get("FLPG_DATABASE_URL")
)
if not url:
    raise SystemExit("set FLPG_DATABASE_URL or pass -x db=URL")

connection = config.attributes.get("connection")


def _run(conn: object) -> None:
    context.configure(connection=conn, target_metadata=metadata, compare_type=True)
    with context.begin_transaction():
        context.execute(text(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})"))
        context.run_migrations()


if connection is not None:
    _run(connection)
else:
    engine = create_engine(
        "postgresql+psycopg://", creator=lambda: psycopg.connect(url), poolclass=NullPool
    )
    with engine.connect() as conn:
        _run(conn)
    engine.dispose()
