"""Who may connect to the embedded cluster over its unix socket (flpg.local.datadir's
``pg_hba.conf``): the admin (the superuser flpg's URL names) without a password, every
other role only with its SCRAM password; the socket directory is private to the
account the server runs as.

The first tests use the session's cluster (roles they create are dropped afterwards);
the last starts a cluster of its own under a fresh /tmp directory.
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import psycopg.conninfo
import pytest
from psycopg import sql

from flpg.local.account import server_account
from flpg.local.binaries import find_bindir
from flpg.local.cluster import SUPERUSER, Cluster
from flpg.local.datadir import hba_text, pg_ctl_start
from tests._binaries import require_bindir

# The pg_hba.conf flpg wrote before the admin alone was trusted.
_OLD_HBA = "local all all trust\nlocal replication all trust\nhost all all all reject\n"


@pytest.fixture(autouse=True)
def _no_password_from_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    """libpq must not find a password in the environment or a password file."""
    for name in ("PGPASSWORD", "PGPASSFILE", "PGUSER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PGPASSFILE", "/nonexistent")


def _as(cluster: Cluster, role: str, password: str | None = None, db: str | None = None) -> str:
    """The cluster's socket URL of its database (or `db`) with `role` (and `password`)."""
    login = quote(role, safe="") + (f":{quote(password, safe='')}" if password else "")
    return cluster.url(db).replace(f"postgresql://{SUPERUSER}@", f"postgresql://{login}@")


def _current_user(url: str) -> Any:
    with psycopg.connect(url, connect_timeout=10) as conn:
        row = conn.execute("select current_user").fetchone()
        assert row is not None
        return row[0]


def _refused(url: str) -> str:
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(url, connect_timeout=10).close()
    return str(info.value)


@pytest.fixture
def login_role(pg_cluster: Cluster) -> Iterator[tuple[str, str]]:
    """A login role with a password on the session's cluster: (name, password)."""
    name, password = f"flpg_localauth_{os.getpid()}", secrets.token_urlsafe(16)
    with psycopg.connect(pg_cluster.url("postgres"), autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(name), sql.Literal(password)
            )
        )
        try:
            yield name, password
        finally:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (name,),
            )
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def test_the_admin_connects_over_the_socket_without_a_password(pg_cluster: Cluster) -> None:
    assert _current_user(pg_cluster.url("postgres")) == SUPERUSER


def test_another_role_without_its_password_is_refused(
    pg_cluster: Cluster, login_role: tuple[str, str]
) -> None:
    name, _ = login_role
    # The server asked for a password (SCRAM) and libpq had none to give.
    assert "no password supplied" in _refused(_as(pg_cluster, name))
    wrong = _refused(_as(pg_cluster, name, "not-the-password"))
    assert f'password authentication failed for user "{name}"' in wrong


def test_another_role_with_its_password_connects(
    pg_cluster: Cluster, login_role: tuple[str, str], empty_db_url: str
) -> None:
    name, password = login_role
    db = psycopg.conninfo.conninfo_to_dict(empty_db_url)["dbname"]
    assert _current_user(_as(pg_cluster, name, password, str(db))) == name
    with psycopg.connect(pg_cluster.url("postgres")) as admin:
        stored = admin.execute(
            "SELECT rolpassword FROM pg_authid WHERE rolname = %s", (name,)
        ).fetchone()
    assert stored is not None and stored[0].startswith("SCRAM-SHA-256$")


@pytest.mark.parametrize("db", ["postgres", "template1"])
def test_no_role_but_the_admin_connects_to_the_clusters_own_databases(
    pg_cluster: Cluster, login_role: tuple[str, str], db: str
) -> None:
    name, password = login_role
    with pytest.raises(psycopg.OperationalError, match="User does not have CONNECT privilege"):
        _current_user(_as(pg_cluster, name, password, db))
    with psycopg.connect(pg_cluster.url(db)) as admin:
        assert admin.execute("select current_user").fetchone() == (SUPERUSER,)


def test_only_the_admin_is_trusted_in_the_rules_the_server_loaded(pg_cluster: Cluster) -> None:
    with psycopg.connect(pg_cluster.url("postgres")) as admin:
        rules = admin.execute(
            "SELECT type, database, user_name, auth_method, error FROM pg_hba_file_rules"
            " ORDER BY line_number"
        ).fetchall()
    assert all(error is None for *_, error in rules)
    trusted = [(t, db, users) for t, db, users, method, _ in rules if method == "trust"]
    assert trusted == [("local", ["all"], [SUPERUSER]), ("local", ["replication"], [SUPERUSER])]
    assert ("local", ["all"], ["all"], "scram-sha-256", None) in rules


def test_the_socket_directory_is_private_to_the_server_account(pg_cluster: Cluster) -> None:
    account = server_account(pg_cluster.data_dir)
    st = pg_cluster.socket_dir.stat()
    assert stat.S_IMODE(st.st_mode) == 0o700
    assert st.st_uid == (account.uid if account is not None else os.geteuid())
    assert "unix_socket_permissions = 0700" in (pg_cluster.data_dir / "flpg.conf").read_text()


@pytest.fixture
def own_cluster() -> Iterator[Cluster]:
    require_bindir()
    root = Path(tempfile.mkdtemp(prefix="flpg-auth-", dir="/tmp"))
    try:
        yield Cluster(root)
    finally:
        try:
            Cluster(root).destroy()
        finally:
            shutil.rmtree(root, ignore_errors=True)


def test_an_existing_cluster_gets_the_new_rules_on_its_next_start(own_cluster: Cluster) -> None:
    """A data directory with the old all-trust pg_hba.conf: the next start (and a serve
    of a server still running with it) replaces it."""
    cluster = own_cluster
    cluster.ensure_running()
    password = secrets.token_urlsafe(16)
    with psycopg.connect(cluster.url("postgres"), autocommit=True) as admin:
        admin.execute(f"CREATE ROLE alice LOGIN PASSWORD '{password}'")
    hba = cluster.data_dir / "pg_hba.conf"

    cluster.stop()
    hba.write_text(_OLD_HBA)
    cluster.ensure_running()
    assert hba.read_text() == hba_text(False)
    assert "no password supplied" in _refused(_as(cluster, "alice"))

    # A server an older flpg left running with the old rules: the next serve restarts it.
    cluster.stop()
    hba.write_text(_OLD_HBA)
    account = server_account(cluster.data_dir)
    pg_ctl_start(find_bindir(), account, cluster.data_dir, cluster.log_file, 60)
    assert _current_user(_as(cluster, "alice")) == "alice"  # trusted, as before
    assert cluster.serve(None).started
    assert hba.read_text() == hba_text(False)
    assert "no password supplied" in _refused(_as(cluster, "alice"))
    assert _current_user(_as(cluster, "alice", password)) == "alice"
