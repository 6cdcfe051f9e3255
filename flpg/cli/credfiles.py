"""Credential files of enrolled participants (admin): where they connect to, and
writing them.

The file's URL reaches the cluster over TCP with TLS (`sslmode=verify-full`, the
CA inside the file) when `--host HOST:PORT` is given or the embedded cluster is
served (`flpg db serve --listen`), else the admin's own connection (the local unix
socket, say) with the participant's role and password.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from flpg.errors import ConfigError
from flpg.settings import explicit_database_url
from flpg.store.credentials import Credentials, write_credentials
from flpg.store.principals import Enrolled

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


def _served(db: str | None) -> tuple[str, int] | None:
    """The embedded cluster's TCP address when it is served (and `--db` not given)."""
    if explicit_database_url(db):
        return None
    from flpg.local.datadir import served_address
    from flpg.local.embedded import cluster

    return served_address(cluster().data_dir)


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


def check_host(db: str | None, host: str | None) -> None:
    """Fail on a malformed `--host` (or, with it, a missing CA) before any role exists."""
    if host is not None:
        _login("postgresql:///x", db, host)


def _login(url: str, db: str | None, host: str | None) -> tuple[dict[str, Any], str | None]:
    """Connection parameters for a participant's credential, and the CA (TLS only)."""
    from flpg.local.listen import parse_listen
    from flpg.store.credentials import login_params

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


def write_file(
    enrolled: Enrolled, url: str, db: str | None, host: str | None, out: Path | None
) -> None:
    """Write the credential file of `enrolled` (`out`, default ./ROLE.json) and say
    where it is; `url` is admin's, `db` and `host` as given."""
    from flpg.store.credentials import role_url

    params, ca = _login(url, db, host)
    path = out if out is not None else Path(f"{enrolled.role}.json")
    cred = Credentials(
        url=role_url(params, enrolled.role, enrolled.password),
        role=enrolled.role,
        kind=enrolled.kind,
        node=enrolled.name if enrolled.kind == "node" else None,
        user=enrolled.name if enrolled.kind in ("user", "auditor") else None,
        ca_cert=ca,
    )
    write_credentials(path, cred)
    how = "TLS to " + str(params["host"]) if ca else "the local socket"
    n, name = len(enrolled.node_ids), enrolled.name
    many = f", for {n} node ids {name}-0 .. {name}-{n - 1}" if n > 1 else ""
    click.echo(f"{enrolled.kind} {enrolled.name!r}: role {enrolled.role}{many}")
    click.echo(f"credential file: {path} (mode 0600; connects over {how})")
