"""A private local PostgreSQL cluster that flpg initialises and starts itself.

The cluster lives under one root directory::

    root/
      data/          PGDATA (mode 0700, owned by the server account)
      run/           unix socket directory (mode 0700, owned by the server account)
      tls/           CA and server certificates and keys, made by `serve` (flpg.local.tls)
      postgres.log   server log
      cluster.lock   flock taken while initialising, starting or stopping

By default the server listens on a unix socket in ``run/`` only (``listen_addresses =
''``), so it never conflicts with another server or TCP port on the machine. The
superuser is ``flpg`` with trust authentication on that socket; the socket directory is
private, so only the owning account (and root) can connect. `Cluster.serve` restarts it
listening on TCP as well, with TLS (files in ``tls/``, see `flpg.local.tls`) and SCRAM
passwords only; the next start without it is socket-only again. The binaries come from
`flpg.local.binaries`; as root, the server runs as the account of `flpg.local.account`.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import quote

import psycopg
from psycopg import sql

from flpg.errors import EmbeddedDatabaseError
from flpg.local.account import (
    Account,
    chown,
    ensure_reachable,
    private_dir,
    server_account,
    server_user_name,
)
from flpg.local.binaries import find_bindir, server_major
from flpg.local.datadir import (
    SUPERUSER,
    check_data_dir,
    conf_text,
    conf_unchanged,
    hba_text,
    initdb,
    kill_server,
    make_root,
    one_line,
    pg_ctl_start,
    pg_ctl_stop,
    pid_alive,
    read_pidfile,
    remove_stale_pidfile,
    tcp_port,
    write_conf,
)
from flpg.local.listen import Listen, check_port_free
from flpg.local.tls import TlsFiles, cert_names, ensure_tls

__all__ = ["SUPERUSER", "Cluster", "ClusterStatus", "Serving"]

log = logging.getLogger(__name__)

# Longest unix socket path the kernel accepts (sun_path minus the trailing NUL).
_MAX_SOCKET_PATH = 103 if sys.platform == "darwin" else 107


@dataclass(frozen=True)
class ClusterStatus:
    """A snapshot of a `Cluster`."""

    root: Path
    bindir: Path | None
    initialised: bool
    running: bool
    pid: int | None
    url: str
    server_user: str


@dataclass(frozen=True)
class Serving:
    """What `Cluster.serve` left running: its URL (unix socket), its TCP address, TLS
    files and certificate names (None and empty when socket-only), and whether this
    call (re)started the server."""

    url: str
    listen: Listen | None
    tls: TlsFiles | None
    names: tuple[str, ...]
    started: bool


def _remaining(deadline: float) -> float:
    return max(deadline - time.monotonic(), 1.0)


class Cluster:
    """A private PostgreSQL cluster under `root`, reachable on a unix socket (and over
    TCP with TLS after `serve`).

    `port` is the port a start without `serve` uses; a running server is reached on the
    port it runs with. All methods are safe to call from several processes at once: initialising,
    starting and stopping happen under an exclusive flock on ``cluster.lock``.
    """

    def __init__(self, root: Path | str, *, port: int = 5432, dbname: str = "flpg") -> None:
        if not 1 <= port <= 65535:
            raise EmbeddedDatabaseError(f"invalid port {port}; use a number from 1 to 65535")
        if not dbname:
            raise EmbeddedDatabaseError("empty database name; pass dbname='flpg' or another name")
        self.root = Path(root).expanduser().resolve()
        self.port = port
        self.dbname = dbname

    def __repr__(self) -> str:
        return f"Cluster({str(self.root)!r}, port={self.port}, dbname={self.dbname!r})"

    # ---- layout
    @property
    def data_dir(self) -> Path:
        """PGDATA."""
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        """The unix socket directory."""
        return self.root / "run"

    @property
    def log_file(self) -> Path:
        """The server log (appended to by every start)."""
        return self.root / "postgres.log"

    @property
    def lock_file(self) -> Path:
        """The flock file serialising init/start/stop."""
        return self.root / "cluster.lock"

    @property
    def tls_dir(self) -> Path:
        """The CA and server certificates and keys used when serving over TCP."""
        return self.root / "tls"

    # ---- public API
    def url(self, dbname: str | None = None) -> str:
        """The libpq URL (unix socket) of database `dbname` (default: this cluster's
        database), on the running server's port, else on `port`."""
        name = quote(dbname or self.dbname, safe="")
        host = quote(str(self.socket_dir), safe="")
        return f"postgresql://{SUPERUSER}@/{name}?host={host}&port={self._live_port()}"

    def status(self) -> ClusterStatus:
        """Report what is on disk and whether the server runs; never starts anything."""
        try:
            bindir: Path | None = find_bindir()
        except EmbeddedDatabaseError:
            bindir = None
        pidfile = read_pidfile(self.data_dir)
        pid = pidfile.pid if pidfile is not None else None
        running = pid is not None and pid_alive(pid)
        return ClusterStatus(
            root=self.root,
            bindir=bindir,
            initialised=(self.data_dir / "PG_VERSION").is_file(),
            running=running,
            pid=pid if running else None,
            url=self.url(),
            server_user=server_user_name(self.data_dir),
        )

    def ensure_running(self, timeout: float = 60) -> str:
        """Initialise, start and create the database as needed; return `url()`.

        Idempotent and process-safe; fast (no subprocess) when already running.
        Raises `EmbeddedDatabaseError` with a one-line reason, never hangs past
        about `timeout` seconds.
        """
        if self._fast_check():
            return self.url()
        deadline = time.monotonic() + timeout
        with self._locked(deadline):
            bindir = find_bindir()
            account = server_account(self.data_dir)
            self._prepare_data(bindir, account, self.port, deadline)
            if not self._wait_if_running(deadline):
                self._prepare_runtime(account)
                pg_ctl_start(bindir, account, self.data_dir, self.log_file, _remaining(deadline))
            self._create_database(deadline)
        return self.url()

    def serve(
        self, listen: Listen | None, names: Sequence[str] = (), timeout: float = 60
    ) -> Serving:
        """Run the server listening on `listen` over TCP as well (None: socket only).

        Over TCP the server takes only TLS connections (certificate for `listen`'s host,
        `names` and localhost, see `flpg.local.tls`) authenticated by a SCRAM password.
        Restarts a running server only when its configuration or certificate changes.
        Raises `EmbeddedDatabaseError` (port in use, start failed, ...) with a one-line
        reason: a port held by another process leaves a running server as it was, a
        failed start leaves it stopped.
        """
        deadline = time.monotonic() + timeout
        with self._locked(deadline):
            bindir = find_bindir()
            account = server_account(self.data_dir)
            port = listen.port if listen is not None else self.port
            self._prepare_data(bindir, account, port, deadline)
            tls: TlsFiles | None = None
            sans: tuple[str, ...] = ()
            if listen is not None:
                sans = cert_names(listen.host, names)
                tls = ensure_tls(self.tls_dir, sans, account)
            host = listen.host if listen is not None else None
            conf = conf_text(self.socket_dir, port, host, tls)
            same = conf_unchanged(self.data_dir, conf, hba_text(listen is not None))
            running = self._wait_if_running(deadline)
            if listen is not None and not (running and tcp_port(self.data_dir) == listen.port):
                check_port_free(listen)  # before stopping a server that could keep running
            if running and (not same or (tls is not None and tls.renewed)):
                pg_ctl_stop(bindir, account, self.data_dir, self.log_file, _remaining(deadline))
                running = False
            if not running:
                if listen is not None:
                    check_port_free(listen)
                private_dir(self.socket_dir, account)
                self._prepare_log(account)
                write_conf(self.data_dir, self.socket_dir, port, account, listen_host=host, tls=tls)
                pg_ctl_start(bindir, account, self.data_dir, self.log_file, _remaining(deadline))
            self._create_database(deadline)
        return Serving(self.url(), listen, tls, sans, started=not running)

    def stop(self, timeout: float = 60, *, immediate: bool = False) -> bool:
        """Stop the server (``pg_ctl stop -m fast``; with `immediate`, ``-m immediate``,
        which PostgreSQL recovers from as from a crash); return whether it was running."""
        if not self.root.is_dir():
            return False
        deadline = time.monotonic() + timeout
        with self._locked(deadline):
            pidfile = read_pidfile(self.data_dir)
            if pidfile is None:
                return False
            if pidfile.pid is None or not pid_alive(pidfile.pid):
                remove_stale_pidfile(self.data_dir, self.socket_dir, pidfile, self.port)
                return False
            bindir, account = find_bindir(), server_account(self.data_dir)
            pg_ctl_stop(
                bindir,
                account,
                self.data_dir,
                self.log_file,
                _remaining(deadline),
                "immediate" if immediate else "fast",
            )
            return True

    def destroy(self) -> None:
        """Stop the server (killing it if a clean stop fails) and remove `root`."""
        if not self.root.exists():
            return
        try:
            self.stop(timeout=30)
        except EmbeddedDatabaseError as exc:
            log.warning("clean stop failed, killing the server: %s", exc)
            kill_server(self.data_dir)
        shutil.rmtree(self.root, ignore_errors=True)
        if self.root.exists():
            shutil.rmtree(self.root)

    # ---- locking
    @contextlib.contextmanager
    def _locked(self, deadline: float) -> Iterator[None]:
        """Hold the exclusive flock on ``cluster.lock`` until the block exits."""
        make_root(self.root)
        try:
            fh: IO[bytes] = open(self.lock_file, "ab")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise EmbeddedDatabaseError(
                f"cannot open {self.lock_file} ({exc.strerror or exc}); make {self.root} "
                "writable or set FLPG_HOME to a writable directory"
            ) from exc
        try:
            while True:
                try:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise EmbeddedDatabaseError(
                            f"timed out waiting for {self.lock_file}: another process is "
                            "initialising, starting or stopping this cluster; retry later"
                        ) from None
                    time.sleep(0.05)
            yield
        finally:
            fh.close()  # releases the flock

    # ---- filesystem preparation
    def _prepare_root(self, account: Account | None, port: int) -> None:
        """Check the socket path length and, as root, that `account` can reach root."""
        socket = self.socket_dir / f".s.PGSQL.{port}"
        if len(os.fsencode(socket)) > _MAX_SOCKET_PATH:
            raise EmbeddedDatabaseError(
                f"the socket path {socket} is longer than the {_MAX_SOCKET_PATH} bytes unix "
                "sockets allow; use a shorter cluster directory (e.g. FLPG_HOME=/var/lib/flpg)"
            )
        if account is not None:
            ensure_reachable(self.root, account)

    def _prepare_data(
        self, bindir: Path, account: Account | None, port: int, deadline: float
    ) -> None:
        """Check root and the data directory; initdb unless initialised."""
        self._prepare_root(account, port)
        check_data_dir(self.data_dir, server_major(bindir), bindir)
        if not (self.data_dir / "PG_VERSION").is_file():
            initdb(
                bindir,
                account,
                self.data_dir,
                socket_dir=self.socket_dir,
                port=port,
                timeout=_remaining(deadline),
            )

    def _prepare_log(self, account: Account | None) -> None:
        self.log_file.touch(mode=0o600, exist_ok=True)
        chown(self.log_file, account)

    def _prepare_runtime(self, account: Account | None) -> None:
        """Create run/ and the log file for the server account; write a socket-only conf."""
        private_dir(self.socket_dir, account)
        self._prepare_log(account)
        write_conf(self.data_dir, self.socket_dir, self.port, account)

    # ---- subprocesses
    def _live_port(self) -> int:
        """The port of the running server, else `port`."""
        pidfile = read_pidfile(self.data_dir)
        if pidfile is None or pidfile.port is None or pidfile.pid is None:
            return self.port
        return pidfile.port if pid_alive(pidfile.pid) else self.port

    def _fast_check(self) -> bool:
        """True when the server is up and the database answers (no subprocess, no lock)."""
        pidfile = read_pidfile(self.data_dir)
        if pidfile is None or pidfile.pid is None or pidfile.status != "ready":
            return False
        if not pid_alive(pidfile.pid):
            return False
        try:
            with psycopg.connect(self.url(), connect_timeout=5, autocommit=True):
                return True
        except psycopg.Error:
            return False

    def _wait_if_running(self, deadline: float) -> bool:
        """Under the lock: True once a live server is ready; False if none runs."""
        while True:
            pidfile = read_pidfile(self.data_dir)
            if pidfile is None:
                return False
            if pidfile.pid is None or not pid_alive(pidfile.pid):
                remove_stale_pidfile(self.data_dir, self.socket_dir, pidfile, self.port)
                return False
            if pidfile.status == "ready":
                return True
            if time.monotonic() >= deadline:
                raise EmbeddedDatabaseError(
                    f"the PostgreSQL server in {self.data_dir} (pid {pidfile.pid}) is not ready "
                    f"(status {pidfile.status or 'unknown'!r}); see {self.log_file}"
                )
            time.sleep(0.1)

    def _create_database(self, deadline: float) -> None:
        """Create `dbname` unless it exists."""
        connect_timeout = max(2, math.ceil(_remaining(deadline)))
        try:
            with psycopg.connect(
                self.url("postgres"), connect_timeout=connect_timeout, autocommit=True
            ) as conn:
                row = conn.execute(
                    "select 1 from pg_database where datname = %s", (self.dbname,)
                ).fetchone()
                if row is None:
                    with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                        conn.execute(
                            sql.SQL("create database {}").format(sql.Identifier(self.dbname))
                        )
                # Nobody but the superuser connects to the cluster's own databases (a
                # run role could otherwise make objects in template1 that every new
                # database would inherit).
                conn.execute(
                    "revoke connect, temporary on database postgres, template1 from public"
                )
        except psycopg.Error as exc:
            raise EmbeddedDatabaseError(
                f"cannot create database {self.dbname!r} in the cluster at {self.root}: "
                f"{one_line(str(exc))}; see {self.log_file}"
            ) from exc
