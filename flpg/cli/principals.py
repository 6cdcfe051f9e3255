"""Enrolment and revocation (admin): `flpg node enroll`, `flpg node revoke`,
`flpg user add`.

Each connects like every command (`--db`, else the embedded cluster) as admin,
creates or drops a login role (`flpg.store.principals`) and, for a new role,
writes its credential file (`flpg.store.credentials`, mode 0600). The file's URL
reaches the cluster over TCP with TLS (`sslmode=verify-full`, the CA inside the
file) when `--host HOST:PORT` is given or the embedded cluster is served (`flpg db
serve --listen`), else over the local unix socket.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import click

from flpg.cli import options
from flpg.cli._base import db_option, handle_errors, open_db
from flpg.cli.workers import NODE_DB
from flpg.errors import BadValue, ConfigError
from flpg.settings import explicit_database_url
from flpg.store.credentials import Credentials, write_credentials
from flpg.store.principals import Enrolled

_WILDCARDS = {"*", "0.0.0.0", "::", ""}

out_option = click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Credential file to write (mode 0600; default: ./ROLE.json).",
)
host_option = click.option(
    "--host",
    metavar="HOST:PORT",
    default=None,
    help="Address the participant reaches the served cluster at (TLS); default: the "
    "embedded cluster's --listen address when it is served, else the local socket.",
)


def _node_db(db: str | None) -> str | None:
    """`--db` of the subcommand, else the one given to `flpg node` before it."""
    if db is not None:
        return db
    given: str | None = click.get_current_context().meta.get(NODE_DB)
    return given


def _served(db: str | None) -> tuple[str, int] | None:
    """The embedded cluster's TCP address when it is served (and `--db` not given)."""
    if explicit_database_url(db):
        return None
    from flpg.local.datadir import tcp_port
    from flpg.local.embedded import cluster

    data_dir = cluster().data_dir
    port = tcp_port(data_dir)
    if port is None:
        return None
    lines = (data_dir / "flpg.conf").read_text().splitlines()
    settings = dict(line.split(" = ", 1) for line in lines if " = " in line)
    host = settings.get("listen_addresses", "''").strip("'")
    return (socket.getfqdn() if host in _WILDCARDS else host), port


def _ca_pem(db: str | None) -> str:
    """The embedded cluster's CA certificate (clients verify the server with it)."""
    from flpg.local.embedded import cluster

    path = cluster().tls_dir / "ca.crt"
    try:
        return path.read_text()
    except OSError as exc:
        raise ConfigError(
            f"--host needs the cluster's CA certificate, and {path} cannot be read "
            f"({exc.strerror}); serve the embedded cluster with `flpg db serve --listen`"
        ) from None


def _login(url: str, db: str | None, host: str | None) -> tuple[dict[str, Any], str | None]:
    """Connection parameters for a participant's credential, and the CA (TLS only)."""
    from flpg.local.listen import parse_listen
    from flpg.store.principals import login_params

    params = login_params(url)
    address: tuple[str, int] | None
    if host is not None:
        try:
            listen = parse_listen(host)
        except ConfigError as exc:
            raise ConfigError(str(exc).replace("--listen", "--host")) from None
        address = (listen.host, listen.port)
    else:
        address = _served(db)
    if address is None:
        return params, None
    params.update(host=address[0], port=address[1], sslmode="verify-full")
    params.pop("sslrootcert", None)
    return params, _ca_pem(db)


def _write(
    enrolled: Enrolled, url: str, db: str | None, host: str | None, out: Path | None
) -> None:
    from flpg.store.credentials import role_url

    params, ca = _login(url, db, host)
    path = out if out is not None else Path(f"{enrolled.role}.json")
    cred = Credentials(
        url=role_url(params, enrolled.role, enrolled.password),
        role=enrolled.role,
        kind=enrolled.kind,
        node=enrolled.name if enrolled.kind == "node" else None,
        user=enrolled.name if enrolled.kind == "user" else None,
        ca_cert=ca,
    )
    write_credentials(path, cred)
    how = "TLS to " + str(params["host"]) if ca else "the local socket"
    click.echo(f"{enrolled.kind} {enrolled.name!r}: role {enrolled.role}")
    click.echo(f"credential file: {path} (mode 0600; connects over {how})")


@click.command("enroll")
@click.argument("name", type=options.NODE_NAME)
@out_option
@host_option
@db_option
@handle_errors
def enroll_cmd(name: str, out: Path | None, host: str | None, db: str | None) -> None:
    """Enrol node NAME (admin): a login role in flpg_node and its credential file."""
    from flpg.store import principals as store_principals

    db = _node_db(db)
    if host is not None:
        _login("postgresql:///x", db, host)  # a malformed --host fails before the role exists
    url, conn = open_db(db)
    with conn:
        enrolled = store_principals.enrol_node(conn, name)
    _write(enrolled, url, db, host, out)


@click.command("revoke")
@click.argument("name", type=options.NODE_NAME)
@db_option
@handle_errors
def revoke_cmd(name: str, db: str | None) -> None:
    """Revoke node NAME (admin): end its sessions, drop its role, answer its
    undelivered instructions with error replies."""
    from flpg.store import principals as store_principals

    db = _node_db(db)
    _, conn = open_db(db)
    with conn:
        role, answered = store_principals.revoke_node(conn, name)
    click.echo(f"node {name!r}: role {role} dropped; {answered} undelivered instruction(s) failed")


@click.group("user")
def user_group() -> None:
    """Users (admin): `flpg user add NAME`."""


def _user_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """A user's name: printable text, not empty, at most NAME_LIMIT characters."""
    from flpg.submit.limits import NAME_LIMIT, check_text

    check_text(value, "NAME")
    if not value.strip() or not value.isprintable() or len(value) > NAME_LIMIT:
        raise BadValue(
            f"NAME {value!r} must be printable, not empty, at most {NAME_LIMIT} characters"
        )
    return value


@user_group.command("add")
@click.argument("name", callback=_user_name)
@out_option
@host_option
@db_option
@handle_errors
def user_add_cmd(name: str, out: Path | None, host: str | None, db: str | None) -> None:
    """Add user NAME (admin): a login role in flpg_user and its credential file."""
    from flpg.store import principals as store_principals

    if host is not None:
        _login("postgresql:///x", db, host)
    url, conn = open_db(db)
    with conn:
        enrolled = store_principals.add_user(conn, name)
    _write(enrolled, url, db, host, out)


NODE_SUBCOMMANDS = (enroll_cmd, revoke_cmd)
"""The subcommands this module adds to `flpg node`."""

COMMANDS = (user_group,)
"""The commands this module adds to `flpg`."""
