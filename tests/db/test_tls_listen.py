"""Serving the embedded cluster over TCP (`flpg db serve --listen`, `Cluster.serve`) with
real servers: TLS with a certificate from the cluster's CA and SCRAM passwords only.

Each test starts a cluster of its own under a fresh /tmp directory (never the
session's) and destroys it at the end.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography.hazmat.primitives import serialization

from flpg.errors import EmbeddedDatabaseError
from flpg.local.cluster import Cluster
from flpg.local.listen import Listen
from flpg.local.tls import new_ca
from tests._binaries import require_bindir
from tests.db._served import flpg_cli, free_port

PASSWORD = "correct horse battery staple"


def _tcp(port: int, ca: Path, **params: Any) -> psycopg.Connection[Any]:
    """A connection over TCP; by default as alice, verify-full against `ca`."""
    base: dict[str, Any] = {
        "host": "localhost",
        "port": port,
        "dbname": "flpg",
        "user": "alice",
        "password": PASSWORD,
        "sslmode": "verify-full",
        "sslrootcert": str(ca),
        "passfile": "/nonexistent",
        "connect_timeout": 10,
    }
    return psycopg.connect(**{**base, **params})


def _refused(port: int, ca: Path, **params: Any) -> str:
    """The error message of a TCP connection that must fail."""
    with pytest.raises(psycopg.OperationalError) as info:
        _tcp(port, ca, **params).close()
    return str(info.value)


@dataclass
class Served:
    cluster: Cluster
    port: int
    ca: Path
    output: str


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    """A cluster served on 127.0.0.1 by `flpg db serve`, with login role alice."""
    require_bindir()
    home = Path(tempfile.mkdtemp(prefix="flpg-tls-", dir="/tmp"))
    os.chmod(home, 0o711)  # as root, the server account must pass through
    cluster = Cluster(home / "postgres")
    try:
        port = free_port()
        proc = flpg_cli(home, "db", "serve", "--listen", f"127.0.0.1:{port}")
        assert proc.returncode == 0, proc.stderr
        with psycopg.connect(cluster.url(), autocommit=True) as admin:
            admin.execute(f"create role alice login password '{PASSWORD}'")
        yield Served(cluster, port, cluster.tls_dir / "ca.crt", proc.stdout)
    finally:
        try:
            cluster.destroy()
        finally:
            shutil.rmtree(home, ignore_errors=True)


def test_serve_prints_where_the_ca_certificate_is(served: Served) -> None:
    assert f"CA certificate: {served.ca}" in served.output
    assert f"127.0.0.1:{served.port}" in served.output
    assert "verify-full" in served.output


def test_a_role_with_its_password_connects_over_tls(served: Served) -> None:
    with _tcp(served.port, served.ca) as conn:
        row = conn.execute(
            "select ssl, current_user from pg_stat_ssl where pid = pg_backend_pid()"
        ).fetchone()
    assert row == (True, "alice")
    with _tcp(served.port, served.ca, host="127.0.0.1") as conn:  # the IP is in the SANs
        assert conn.execute("select 1").fetchone() == (1,)


def test_a_connection_without_tls_is_refused(served: Served) -> None:
    assert "pg_hba.conf rejects connection" in _refused(served.port, served.ca, sslmode="disable")


def test_a_wrong_password_is_refused(served: Served) -> None:
    message = _refused(served.port, served.ca, password="wrong")
    assert "password authentication failed" in message


def test_a_client_trusting_another_ca_refuses_the_server(served: Served, tmp_path: Path) -> None:
    _, other = new_ca(dt.datetime.now(dt.UTC))
    other_ca = tmp_path / "other-ca.crt"
    other_ca.write_bytes(other.public_bytes(serialization.Encoding.PEM))
    assert "certificate verify failed" in _refused(served.port, other_ca)


def test_the_superuser_has_no_trust_over_tcp(served: Served) -> None:
    _refused(served.port, served.ca, user="flpg", password=None)
    _refused(served.port, served.ca, user="flpg", password="", sslmode="require")
    # The unix socket keeps working for the superuser.
    with psycopg.connect(served.cluster.url()) as conn:
        assert conn.execute("select current_user").fetchone() == ("flpg",)


def test_on_the_socket_only_the_superuser_is_trusted(served: Served) -> None:
    socket_url = served.cluster.url()
    as_alice = socket_url.replace("postgresql://flpg@", "postgresql://alice@", 1)
    with pytest.raises(psycopg.OperationalError, match="no password supplied"):
        psycopg.connect(as_alice, password="", passfile="/nonexistent", connect_timeout=10).close()
    with psycopg.connect(as_alice, password=PASSWORD, connect_timeout=10) as conn:
        assert conn.execute("select current_user").fetchone() == ("alice",)


def test_the_cli_refuses_a_bad_address_with_one_line(tmp_path: Path) -> None:
    proc = flpg_cli(tmp_path, "db", "serve", "--listen", "localhost")
    assert proc.returncode == 2
    assert proc.stderr.startswith("flpg: error: --listen 'localhost'")
    assert proc.stderr.count("\n") == 1
    assert not (tmp_path / "postgres").exists()  # nothing started


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    require_bindir()
    root = Path(tempfile.mkdtemp(prefix="flpg-tls-", dir="/tmp"))
    cluster = Cluster(root)
    try:
        yield cluster
    finally:
        try:
            cluster.destroy()
        finally:
            shutil.rmtree(root, ignore_errors=True)


def test_serve_is_idempotent_and_serving_without_listen_is_socket_only(cluster: Cluster) -> None:
    port = free_port()
    first = cluster.serve(Listen("127.0.0.1", port))
    assert first.started and first.tls is not None
    pid = cluster.status().pid
    again = cluster.serve(Listen("127.0.0.1", port))
    assert not again.started and cluster.status().pid == pid
    # Another caller of the default port reaches the server on the port it runs with.
    url = Cluster(cluster.root).ensure_running()
    assert f"port={port}" in url
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f"create role alice login password '{PASSWORD}'")
    _tcp(port, first.tls.ca_cert).close()

    back = cluster.serve(None)
    assert back.started and back.listen is None and cluster.status().pid != pid
    assert f"port={cluster.port}" in back.url
    assert "Connection refused" in _refused(port, first.tls.ca_cert)
    assert "listen_addresses = ''" in (cluster.data_dir / "flpg.conf").read_text()
    with psycopg.connect(back.url) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_a_new_certificate_name_reissues_the_certificate_and_keeps_the_ca(
    cluster: Cluster,
) -> None:
    port = free_port()
    first = cluster.serve(Listen("127.0.0.1", port))
    assert first.tls is not None
    ca = first.tls.ca_cert.read_bytes()
    second = cluster.serve(Listen("127.0.0.1", port), names=["db.example.org"])
    assert second.started and second.tls is not None and second.tls.renewed
    assert "db.example.org" in second.names
    assert second.tls.ca_cert.read_bytes() == ca
    with psycopg.connect(cluster.url(), autocommit=True) as admin:
        admin.execute(f"create role alice login password '{PASSWORD}'")
    _tcp(port, second.tls.ca_cert).close()


@pytest.mark.parametrize("same_port", [False, True])
def test_a_port_in_use_is_a_clear_error_and_the_server_keeps_running(
    cluster: Cluster, same_port: bool
) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        # same_port: the socket-only server already runs with the port asked for.
        running = Cluster(cluster.root, port=busy) if same_port else cluster
        url = running.ensure_running()
        pid = running.status().pid
        with pytest.raises(EmbeddedDatabaseError, match=f"port {busy} on 127.0.0.1 is in use"):
            running.serve(Listen("127.0.0.1", busy))
    assert running.status().pid == pid
    with psycopg.connect(url) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_db_status_shows_where_the_cluster_is_served(served: Served) -> None:
    status = flpg_cli(served.cluster.root.parent, "db", "status")
    assert status.returncode == 0, status.stderr
    assert f"served: 127.0.0.1:{served.port} (TLS, SCRAM passwords)" in status.stdout


def _credential(tmp_path: Path, name: str, port: int, ca_pem: str, role: str) -> Path:
    from flpg.store.credentials import Credentials, role_url, write_credentials

    params = {"host": "localhost", "port": port, "dbname": "flpg", "sslmode": "verify-full"}
    path = tmp_path / f"{name}.json"
    write_credentials(
        path, Credentials(role_url(params, role, PASSWORD), role, "user", ca_cert=ca_pem)
    )
    return path


def test_a_credential_file_for_the_wrong_server_is_one_line(served: Served, tmp_path: Path) -> None:
    """Made for another cluster: its CA does not sign this server, nothing listens at
    its address, or its role does not exist here. Each: one line, non-zero exit."""
    _, other = new_ca(dt.datetime.now(dt.UTC))
    other_pem = other.public_bytes(serialization.Encoding.PEM).decode()
    ca_pem = served.ca.read_text()
    cases = {
        "other-ca": (
            _credential(tmp_path, "a", served.port, other_pem, "alice"),
            3,
            "certificate verify failed",
        ),
        "no-server": (
            _credential(tmp_path, "b", free_port(), ca_pem, "alice"),
            3,
            "cannot connect",
        ),
        "no-role": (
            _credential(tmp_path, "c", served.port, ca_pem, "bob"),
            6,
            "credential for role bob was refused",
        ),
    }
    for case, (path, code, words) in cases.items():
        result = flpg_cli(tmp_path, "ls", "--credentials", str(path))
        lines = result.stderr.strip().splitlines()
        assert result.returncode == code, (case, result.stderr)
        assert len(lines) == 1 and lines[0].startswith("flpg: error: "), (case, lines)
        assert words in lines[0], (case, lines)
