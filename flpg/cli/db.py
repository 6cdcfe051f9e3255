"""`flpg db`: schema migrations and the embedded cluster."""

from __future__ import annotations

import click

from flpg.cli import render
from flpg.cli._base import db_option, handle_errors, resolve_url
from flpg.settings import DATABASE_URL_ENV, explicit_database_url
from flpg.store.db import connect, redact


@click.group()
def db() -> None:
    """Manage the database: schema migrations and the embedded cluster."""


@db.command("upgrade")
@db_option
@handle_errors
def db_upgrade(db: str | None) -> None:
    """Migrate the schema to the newest revision (idempotent)."""
    from flpg.store.migrate import check, head_revision, upgrade

    url = resolve_url(db)
    connect(url, application_name="flpg-cli").close()
    before = check(url)
    upgrade(url)
    render.schema_upgraded(head_revision(), before, redact(url))


@db.command("status")
@db_option
@handle_errors
def db_status(db: str | None) -> None:
    """Where the database is, whether it runs, and its schema revision."""
    from flpg.local.embedded import cluster
    from flpg.store.migrate import current_revision

    url = explicit_database_url(db)
    if url:
        render.database_status(redact(url), DATABASE_URL_ENV, _revision(current_revision(url)))
        return
    status = cluster().status()
    schema = _revision(current_revision(status.url)) if status.running else None
    render.cluster_status(
        status.root, status.running, status.pid, status.initialised, status.url, schema
    )


def _revision(revision: str | None) -> str:
    from flpg.store.migrate import head_revision, known_revisions

    return render.revision_text(
        revision, head_revision(), revision is None or revision in known_revisions()
    )


@db.command("stop")
@handle_errors
def db_stop() -> None:
    """Stop the embedded cluster (the next command starts it again)."""
    from flpg.local.embedded import cluster

    was_running = cluster().stop()
    render.cluster_stopped(was_running)
