"""`flpg db`: schema migrations and the embedded cluster."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from flpg.cli import render_local
from flpg.cli._base import db_option, handle_errors, resolve_url
from flpg.errors import ConfigError
from flpg.settings import DATABASE_URL_ENV, explicit_database_url
from flpg.store.db import connect, redact

if TYPE_CHECKING:
    from flpg.local.cluster import Serving

listen_option = click.option(
    "--listen",
    metavar="HOST:PORT",
    default=None,
    help="Serve the embedded cluster to other machines on this TCP address "
    "(TLS and passwords only; 0.0.0.0 or [::] for all addresses).",
)


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
    render_local.schema_upgraded(head_revision(), before, redact(url))


@db.command("status")
@db_option
@handle_errors
def db_status(db: str | None) -> None:
    """Where the database is, whether it runs, and its schema revision."""
    from flpg.local.embedded import cluster
    from flpg.store.migrate import current_revision

    url = explicit_database_url(db)
    if url:
        revision = _revision(current_revision(url))
        render_local.database_status(redact(url), DATABASE_URL_ENV, revision)
        _table_sizes(url)
        return
    from flpg.local.datadir import served_address

    embedded = cluster()
    status = embedded.status()
    schema = _revision(current_revision(status.url)) if status.running else None
    served = served_address(embedded.data_dir) if status.initialised else None
    render_local.cluster_status(
        status.root, status.running, status.pid, status.initialised, status.url, schema, served
    )
    _binaries_status(status.bindir)
    if status.running:
        _table_sizes(status.url)


def _binaries_status(bindir: Path | None) -> None:
    """The ``binaries:`` line of `flpg db status` (flpg.local.binaries.describe)."""
    from flpg.local.binaries import describe

    if bindir is None:
        render_local.binaries_status(None, None, "")
        return
    found = describe(bindir)
    render_local.binaries_status(found.bindir, found.major, found.source)


def _table_sizes(url: str) -> None:
    """The database's size and its largest tables (`flpg.store.retention.table_sizes`)."""
    from flpg.store.retention import table_sizes

    with connect(url, application_name="flpg-cli") as conn:
        total, tables = table_sizes(conn)
    render_local.table_sizes(total, [(t.name, t.bytes) for t in tables])


def _revision(revision: str | None) -> str:
    from flpg.store.migrate import head_revision, known_revisions

    return render_local.revision_text(
        revision, head_revision(), revision is None or revision in known_revisions()
    )


@db.command("stop")
@handle_errors
def db_stop() -> None:
    """Stop the embedded cluster (the next command starts it again)."""
    from flpg.local.embedded import cluster

    was_running = cluster().stop()
    render_local.cluster_stopped(was_running)


@db.command("serve")
@listen_option
@click.option(
    "--cert-name",
    "cert_names",
    multiple=True,
    metavar="NAME",
    help="Another host name or IP address clients reach the server by (repeatable).",
)
@handle_errors
def db_serve(listen: str | None, cert_names: tuple[str, ...]) -> None:
    """(Re)start the embedded cluster on HOST:PORT over TLS; without --listen, socket only."""
    print_serving(serve_embedded(listen, cert_names))


def serve_embedded(listen: str | None, cert_names: Sequence[str] = ()) -> Serving:
    """Parse the options and serve the embedded cluster accordingly (`Cluster.serve`)."""
    from flpg.local.embedded import cluster
    from flpg.local.listen import check_cert_name, parse_listen

    address = parse_listen(listen) if listen is not None else None
    if cert_names and address is None:
        raise ConfigError("--cert-name needs --listen HOST:PORT")
    return cluster().serve(address, [check_cert_name(name) for name in cert_names])


def print_serving(serving: Serving) -> None:
    """Where the embedded cluster listens and what a client over TCP needs."""
    how = "started" if serving.started else "already running so"
    if serving.listen is None or serving.tls is None:
        click.echo(f"embedded cluster on its unix socket only, no TCP ({how})")
        click.echo(f"url: {serving.url}")
        return
    click.echo(f"embedded cluster serving on {serving.listen} with TLS and passwords ({how})")
    click.echo(f"CA certificate: {serving.tls.ca_cert}")
    click.echo(f"server certificate names: {', '.join(serving.names)}")
    click.echo(
        "clients: copy the CA certificate and connect with sslmode=verify-full "
        "sslrootcert=<that copy>, a host name above, and a role with a password"
    )
    click.echo(f"local url (unix socket): {serving.url}")
