"""The embedded cluster's configuration files: the ``flpg.conf`` its postgresql.conf
includes (port, socket, TCP with TLS when served, server settings) and its
``pg_hba.conf`` (who may connect how), written on every start; and what a data
directory's ``flpg.conf`` says about where it is served.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from flpg.local.account import Account, chown
from flpg.local.tls import TlsFiles

SUPERUSER = "flpg"
"""Name of the cluster's superuser role."""

_SERVER_SETTINGS: tuple[tuple[str, str], ...] = (
    ("max_connections", "300"),
    ("shared_buffers", "128MB"),
    ("fsync", "on"),
    ("synchronous_commit", "on"),
    # Payload traffic: a round writes gigabytes; do not wait on a 4 MB WAL buffer,
    # force checkpoints mid-round, or zero-fill new WAL segments (recycle them).
    ("wal_buffers", "64MB"),
    ("max_wal_size", "4GB"),
    ("min_wal_size", "1GB"),
    ("logging_collector", "off"),
    ("log_line_prefix", "'%m [%p] '"),
    ("log_timezone", "'UTC'"),
    ("timezone", "'UTC'"),
)


def _conf_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def conf_text(
    socket_dir: Path, port: int, listen_host: str | None = None, tls: TlsFiles | None = None
) -> str:
    """The ``flpg.conf`` for `port` and `socket_dir`; TCP on `listen_host` with `tls` if given."""
    lines = [
        "# Written by flpg on every start; edit postgresql.auto.conf instead.",
        f"listen_addresses = {_conf_quote(listen_host or '')}",
        f"port = {port}",
        f"unix_socket_directories = {_conf_quote(str(socket_dir))}",
        "unix_socket_permissions = 0700",
        "password_encryption = 'scram-sha-256'",
        *(f"{key} = {value}" for key, value in _SERVER_SETTINGS),
    ]
    if tls is not None:
        lines += [
            "ssl = on",
            f"ssl_cert_file = {_conf_quote(str(tls.server_cert))}",
            f"ssl_key_file = {_conf_quote(str(tls.server_key))}",
            f"ssl_ca_file = {_conf_quote(str(tls.ca_cert))}",
            "ssl_min_protocol_version = 'TLSv1.2'",
        ]
    return "\n".join(lines) + "\n"


def hba_text(tcp: bool) -> str:
    """The ``pg_hba.conf``: on the private unix socket, trust for the superuser only
    (`SUPERUSER`) and a SCRAM password for every other role; over TCP (when `tcp`) only
    TLS with a SCRAM password, every other TCP connection rejected."""
    lines = [
        "# Written by flpg on every start.",
        "# TYPE   DATABASE     USER  ADDRESS  METHOD",
        f"local    all          {SUPERUSER}           trust",
        f"local    replication  {SUPERUSER}           trust",
        "local    all          all            scram-sha-256",
        "local    replication  all            reject",
    ]
    if tcp:
        lines.append("hostssl  all          all   all      scram-sha-256")
    lines += [
        "host     all          all   all      reject",
        "host     replication  all   all      reject",
    ]
    return "\n".join(lines) + "\n"


def _install(path: Path, text: str, account: Account | None) -> None:
    """Replace `path` with `text` atomically, mode 0600, owned by `account`."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.chmod(tmp, 0o600)
    chown(tmp, account)
    os.replace(tmp, path)


def conf_unchanged(data_dir: Path, conf: str, hba: str) -> bool:
    """True when `data_dir` already holds exactly this ``flpg.conf`` and ``pg_hba.conf``."""
    try:
        on_disk = (data_dir / "flpg.conf").read_text(), (data_dir / "pg_hba.conf").read_text()
    except OSError:
        return False
    return on_disk == (conf, hba)


_WILDCARDS = {"*", "0.0.0.0", "::", ""}


def _settings(data_dir: Path) -> dict[str, str]:
    try:
        lines = (data_dir / "flpg.conf").read_text().splitlines()
    except OSError:
        return {}
    return dict(line.split(" = ", 1) for line in lines if " = " in line)


def tcp_port(data_dir: Path) -> int | None:
    """The TCP port `data_dir`'s ``flpg.conf`` listens on, or None when socket-only."""
    settings = _settings(data_dir)
    port = settings.get("port", "")
    if settings.get("listen_addresses", "''") == "''" or not port.isdigit():
        return None
    return int(port)


def served_address(data_dir: Path) -> tuple[str, int] | None:
    """Where other machines reach the cluster of `data_dir` over TLS (its listen
    address; this machine's FQDN for a wildcard), or None when socket-only."""
    port = tcp_port(data_dir)
    if port is None:
        return None
    host = _settings(data_dir).get("listen_addresses", "''").strip("'")
    return (socket.getfqdn() if host in _WILDCARDS else host), port


def write_conf(
    data_dir: Path,
    socket_dir: Path,
    port: int,
    account: Account | None,
    *,
    listen_host: str | None = None,
    tls: TlsFiles | None = None,
) -> None:
    """(Re)write ``flpg.conf`` (included by postgresql.conf) and ``pg_hba.conf``.

    Without `listen_host` the server listens on `socket_dir` only; with it, also on TCP
    with TLS from `tls` (required then) and SCRAM passwords (see `hba_text`).
    """
    if listen_host is not None and tls is None:
        raise ValueError("listening on TCP needs the TLS files")
    _install(data_dir / "flpg.conf", conf_text(socket_dir, port, listen_host, tls), account)
    _install(data_dir / "pg_hba.conf", hba_text(listen_host is not None), account)
