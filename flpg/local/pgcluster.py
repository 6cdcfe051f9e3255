"""A private local PostgreSQL cluster that flpg initialises and starts itself.

The cluster lives under one root directory::

    root/
      data/          PGDATA (mode 0700, owned by the server account)
      run/           unix socket directory (mode 0700, owned by the server account)
      postgres.log   server log
      cluster.lock   flock taken while initialising, starting or stopping

The server listens on a unix socket in ``run/`` only (``listen_addresses = ''``), so it
never conflicts with another server or TCP port on the machine. The superuser is
``flpg`` with trust authentication on that socket; the socket directory is private,
so only the owning account (and root) can connect.

PostgreSQL refuses to run as root: when flpg runs as root, initdb and pg_ctl run as
``FLPG_PG_USER``, else ``postgres`` if that account exists, else ``nobody``; an
existing data directory keeps running as the account that owns it.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import logging
import math
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
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

__all__ = ["SUPERUSER", "Cluster", "ClusterStatus", "find_bindir", "server_major"]

log = logging.getLogger(__name__)

SUPERUSER = "flpg"
"""Name of the cluster's superuser role."""

_SERVER_BINARIES = ("initdb", "pg_ctl", "postgres")

# Fallback locations searched after FLPG_PG_BINDIR, PATH and pg_config, in order.
# Patterns with a ``*`` expand to versioned directories, highest version first.
_FALLBACK_PATTERNS: tuple[str, ...] = (
    "/usr/lib/postgresql/*/bin",
    "/opt/homebrew/opt/postgresql@*/bin",
    "/usr/local/opt/postgresql@*/bin",
    "/opt/homebrew/bin",
    "/usr/local/pgsql/bin",
)

_INSTALL_HINT = (
    "install them (Debian/Ubuntu: apt-get install postgresql; "
    "macOS: brew install postgresql@16) or set FLPG_PG_BINDIR"
)

# Longest unix socket path the kernel accepts (sun_path minus the trailing NUL).
_MAX_SOCKET_PATH = 103 if sys.platform == "darwin" else 107

_PROBE_TIMEOUT = 15.0  # seconds, for `postgres --version` and `pg_config --bindir`
_LOG_TAIL_LINES = 6
_LOG_TAIL_CHARS = 600

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


# --------------------------------------------------------------------------- binaries


def _has_server_binaries(directory: Path) -> bool:
    return all(
        (directory / name).is_file() and os.access(directory / name, os.X_OK)
        for name in _SERVER_BINARIES
    )


def _version_key(path: str) -> tuple[int, ...]:
    """Sort key: the numbers in `path` (``.../postgresql@16/bin`` -> ``(16,)``)."""
    return tuple(int(n) for n in re.findall(r"\d+", path))


def _fallback_dirs() -> list[Path]:
    """The fallback candidates of `find_bindir`, in search order."""
    dirs: list[Path] = []
    for pattern in _FALLBACK_PATTERNS:
        if "*" in pattern:
            dirs.extend(Path(p) for p in sorted(glob.glob(pattern), key=_version_key, reverse=True))
        else:
            dirs.append(Path(pattern))
    return dirs


def _pg_config_bindir() -> Path | None:
    pg_config = shutil.which("pg_config")
    if pg_config is None:
        return None
    try:
        out = subprocess.run(
            [pg_config, "--bindir"],
            capture_output=True,
            text=True,
            timeout=_PROBE_TIMEOUT,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return Path(out) if out else None


def find_bindir() -> Path:
    """Return the directory holding ``initdb``, ``pg_ctl`` and ``postgres``.

    Search order: env ``FLPG_PG_BINDIR`` (must be valid when set); ``pg_ctl`` on PATH
    (symlinks resolved); ``pg_config --bindir``; ``/usr/lib/postgresql/*/bin`` (highest
    major first); Homebrew; ``/usr/local/pgsql/bin``. Raises `EmbeddedDatabaseError`
    saying what to install when none qualifies.
    """
    env = os.environ.get("FLPG_PG_BINDIR", "").strip()
    if env:
        bindir = Path(env).expanduser()
        if _has_server_binaries(bindir):
            return bindir
        missing = [
            n
            for n in _SERVER_BINARIES
            if not ((bindir / n).is_file() and os.access(bindir / n, os.X_OK))
        ]
        raise EmbeddedDatabaseError(
            f"FLPG_PG_BINDIR={env} does not hold the PostgreSQL server binaries "
            f"(missing or not executable: {', '.join(missing)}); "
            "point it at a PostgreSQL bin directory, or unset it and "
            "install the server (Debian/Ubuntu: apt-get install postgresql; "
            "macOS: brew install postgresql@16)"
        )

    candidates: list[Path] = []
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl is not None:
        candidates.append(Path(pg_ctl).resolve().parent)
    pg_config_dir = _pg_config_bindir()
    if pg_config_dir is not None:
        candidates.append(pg_config_dir)
    candidates.extend(_fallback_dirs())
    for candidate in candidates:
        if _has_server_binaries(candidate):
            return candidate
    raise EmbeddedDatabaseError(
        "no PostgreSQL server binaries (initdb, pg_ctl, postgres) found on PATH, "
        "via pg_config or in /usr/lib/postgresql/*/bin; " + _INSTALL_HINT
    )


def server_major(bindir: Path) -> int:
    """Return the major version of ``bindir/postgres`` (e.g. 15 for 15.8)."""
    postgres = bindir / "postgres"
    try:
        out = subprocess.run(
            [str(postgres), "--version"],
            capture_output=True,
            text=True,
            timeout=_PROBE_TIMEOUT,
            check=True,
        ).stdout
    except subprocess.TimeoutExpired as exc:
        raise EmbeddedDatabaseError(
            f"{postgres} --version did not answer within {_PROBE_TIMEOUT:.0f} s; "
            "check the installation or set FLPG_PG_BINDIR"
        ) from exc
    except (OSError, subprocess.CalledProcessError) as exc:
        raise EmbeddedDatabaseError(
            f"cannot run {postgres} --version ({exc}); check the installation or set FLPG_PG_BINDIR"
        ) from exc
    match = re.search(r"\(PostgreSQL\)\s+(\d+)", out) or re.search(r"(\d+)(?:\.\d+)?", out)
    if match is None:
        raise EmbeddedDatabaseError(
            f"cannot parse the version of {postgres} from {out.strip()!r}; set FLPG_PG_BINDIR"
        )
    return int(match.group(1))


# --------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class _Account:
    """The unprivileged account the server runs as when flpg runs as root."""

    name: str
    uid: int
    gid: int


@dataclass(frozen=True)
class _PidFile:
    """The parsed ``postmaster.pid``; fields are None when missing or garbled."""

    pid: int | None
    port: int | None
    status: str


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


def _pid_alive(pid: int) -> bool:
    """True if process `pid` exists and is not a zombie."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return True
    return not fields or fields[0] not in ("Z", "X")


def _conf_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _one_line(text: str, limit: int = _LOG_TAIL_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else "..." + text[-limit:]


def _can_traverse(st: os.stat_result, account: _Account) -> bool:
    if st.st_uid == account.uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == account.gid:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


# --------------------------------------------------------------------------- cluster


class Cluster:
    """A private PostgreSQL cluster under `root`, reachable on a unix socket only.

    All methods are safe to call from several processes at once: initialising,
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
    def _initdb_dir(self) -> Path:
        return self.root / "data.initdb"

    @property
    def _pid_path(self) -> Path:
        return self.data_dir / "postmaster.pid"

    # ---- public API

    def url(self, dbname: str | None = None) -> str:
        """The libpq URL of database `dbname` (default: this cluster's database)."""
        name = quote(dbname or self.dbname, safe="")
        host = quote(str(self.socket_dir), safe="")
        return f"postgresql://{SUPERUSER}@/{name}?host={host}&port={self.port}"

    def status(self) -> ClusterStatus:
        """Report what is on disk and whether the server runs; never starts anything."""
        try:
            bindir: Path | None = find_bindir()
        except EmbeddedDatabaseError:
            bindir = None
        pidfile = self._read_pidfile()
        pid = pidfile.pid if pidfile is not None else None
        running = pid is not None and _pid_alive(pid)
        return ClusterStatus(
            root=self.root,
            bindir=bindir,
            initialised=(self.data_dir / "PG_VERSION").is_file(),
            running=running,
            pid=pid if running else None,
            url=self.url(),
            server_user=self._server_user_name(),
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
            account = self._server_account()
            self._prepare_root(account)
            major = server_major(bindir)
            self._check_data_dir(major, bindir)
            if not (self.data_dir / "PG_VERSION").is_file():
                self._initdb(bindir, account, deadline)
            self._prepare_runtime(account)
            if not self._wait_if_running(deadline):
                self._start(bindir, account, deadline)
            self._create_database(deadline)
        return self.url()

    def stop(self, timeout: float = 60) -> bool:
        """Stop the server (``pg_ctl stop -m fast``); return whether it was running."""
        if not self.root.is_dir():
            return False
        deadline = time.monotonic() + timeout
        with self._locked(deadline):
            pidfile = self._read_pidfile()
            if pidfile is None:
                return False
            if pidfile.pid is None or not _pid_alive(pidfile.pid):
                self._remove_stale_pidfile(pidfile)
                return False
            bindir = find_bindir()
            account = self._server_account()
            remaining = self._remaining(deadline)
            try:
                proc = self._run(
                    bindir,
                    account,
                    [
                        "pg_ctl",
                        "stop",
                        "-D",
                        str(self.data_dir),
                        "-m",
                        "fast",
                        "-w",
                        "-s",
                        "-t",
                        str(max(1, math.ceil(remaining))),
                    ],
                    timeout=remaining + 5,
                )
            except subprocess.TimeoutExpired as exc:
                raise EmbeddedDatabaseError(
                    f"pg_ctl stop did not finish within {remaining:.0f} s for {self.data_dir}; "
                    f"see {self.log_file}"
                ) from exc
            if proc.returncode != 0 and _pid_alive(pidfile.pid):
                raise EmbeddedDatabaseError(
                    f"cannot stop the PostgreSQL server in {self.data_dir}: "
                    f"{_one_line(proc.stderr or proc.stdout) or 'pg_ctl failed'}; "
                    f"see {self.log_file}"
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
            self._kill()
        shutil.rmtree(self.root, ignore_errors=True)
        if self.root.exists():
            shutil.rmtree(self.root)

    # ---- accounts

    def _server_account(self) -> _Account | None:
        """The account to run the server as, or None to run as the current user."""
        if os.geteuid() != 0:
            return None
        with contextlib.suppress(OSError):
            st = self.data_dir.stat()
            if st.st_uid != 0:
                try:
                    name = pwd.getpwuid(st.st_uid).pw_name
                except KeyError:
                    name = str(st.st_uid)
                return _Account(name, st.st_uid, st.st_gid)
        name = os.environ.get("FLPG_PG_USER", "").strip()
        if not name:
            name = "postgres"
            try:
                pwd.getpwnam(name)
            except KeyError:
                name = "nobody"
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise EmbeddedDatabaseError(
                f"no account named {name!r} to run PostgreSQL as (flpg runs as root and "
                "PostgreSQL refuses to); create it or set FLPG_PG_USER to an existing "
                "unprivileged account"
            ) from None
        if entry.pw_uid == 0:
            raise EmbeddedDatabaseError(
                f"FLPG_PG_USER={name} is a root account and PostgreSQL refuses to run as root; "
                "set FLPG_PG_USER to an unprivileged account such as postgres"
            )
        return _Account(name, entry.pw_uid, entry.pw_gid)

    def _server_user_name(self) -> str:
        try:
            account = self._server_account()
        except EmbeddedDatabaseError:
            return os.environ.get("FLPG_PG_USER", "?")
        if account is not None:
            return account.name
        try:
            return pwd.getpwuid(os.geteuid()).pw_name
        except KeyError:
            return str(os.geteuid())

    # ---- locking

    @contextlib.contextmanager
    def _locked(self, deadline: float) -> Iterator[None]:
        """Hold the exclusive flock on ``cluster.lock`` until the block exits."""
        self._make_root()
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

    def _make_root(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            blocker = self.root
            while not blocker.exists() and blocker != blocker.parent:
                blocker = blocker.parent
            raise EmbeddedDatabaseError(
                f"cannot create the cluster directory {self.root} ({exc.strerror or exc}; "
                f"check {blocker}); set FLPG_HOME to a writable directory"
            ) from exc
        if not self.root.is_dir():
            raise EmbeddedDatabaseError(
                f"{self.root} is not a directory; set FLPG_HOME to a writable directory"
            )
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise EmbeddedDatabaseError(
                f"the cluster directory {self.root} is not writable; fix its permissions "
                "or set FLPG_HOME to a writable directory"
            )

    def _prepare_root(self, account: _Account | None) -> None:
        """Check the socket path length and, as root, that `account` can reach root."""
        socket = self.socket_dir / f".s.PGSQL.{self.port}"
        if len(os.fsencode(socket)) > _MAX_SOCKET_PATH:
            raise EmbeddedDatabaseError(
                f"the socket path {socket} is longer than the {_MAX_SOCKET_PATH} bytes unix "
                "sockets allow; use a shorter cluster directory (e.g. FLPG_HOME=/var/lib/flpg)"
            )
        if account is None:
            return
        for parent in reversed(self.root.parents):
            st = parent.stat()
            if not _can_traverse(st, account):
                raise EmbeddedDatabaseError(
                    f"PostgreSQL runs as {account.name!r} (flpg runs as root), which cannot "
                    f"enter {parent} (mode {stat.S_IMODE(st.st_mode):04o}); put the cluster "
                    "where that account can reach it, e.g. FLPG_HOME=/var/lib/flpg, "
                    "or set FLPG_PG_USER"
                )
        st = self.root.stat()
        if not _can_traverse(st, account):
            # root is flpg's own directory: let the server account pass through it.
            os.chmod(self.root, stat.S_IMODE(st.st_mode) | stat.S_IXGRP | stat.S_IXOTH)

    def _check_data_dir(self, major: int, bindir: Path) -> None:
        """Reject a data directory from another major version or not from initdb."""
        version_file = self.data_dir / "PG_VERSION"
        if version_file.is_file():
            found = version_file.read_text().strip()
            if found != str(major):
                raise EmbeddedDatabaseError(
                    f"{self.data_dir} was created by PostgreSQL {found} but the binaries "
                    f"found are {major} (in {bindir}); point FLPG_PG_BINDIR at PostgreSQL "
                    f"{found} binaries or move the directory away"
                )
            return
        if self.data_dir.is_dir():
            if any(self.data_dir.iterdir()):
                raise EmbeddedDatabaseError(
                    f"{self.data_dir} exists but is not a PostgreSQL data directory "
                    "(no PG_VERSION); move it away"
                )
            self.data_dir.rmdir()
        elif self.data_dir.exists():
            raise EmbeddedDatabaseError(f"{self.data_dir} is not a directory; move it away")

    def _chown(self, path: Path, account: _Account | None) -> None:
        if account is not None:
            os.chown(path, account.uid, account.gid)

    def _private_dir(self, path: Path, account: _Account | None) -> None:
        path.mkdir(mode=0o700, exist_ok=True)
        os.chmod(path, 0o700)
        self._chown(path, account)

    def _prepare_runtime(self, account: _Account | None) -> None:
        """Create run/ and the log file for the server account; write flpg.conf."""
        self._private_dir(self.socket_dir, account)
        self.log_file.touch(mode=0o600, exist_ok=True)
        self._chown(self.log_file, account)
        self._write_conf(self.data_dir, account)

    def _write_conf(self, data_dir: Path, account: _Account | None) -> None:
        """(Re)write ``flpg.conf`` (included by postgresql.conf) for this port and root."""
        lines = [
            "# Written by flpg on every start; edit postgresql.auto.conf instead.",
            "listen_addresses = ''",
            f"port = {self.port}",
            f"unix_socket_directories = {_conf_quote(str(self.socket_dir))}",
            "unix_socket_permissions = 0700",
            *(f"{key} = {value}" for key, value in _SERVER_SETTINGS),
        ]
        target = data_dir / "flpg.conf"
        tmp = data_dir / "flpg.conf.tmp"
        tmp.write_text("\n".join(lines) + "\n")
        os.chmod(tmp, 0o600)
        self._chown(tmp, account)
        os.replace(tmp, target)

    # ---- subprocesses

    def _run(
        self,
        bindir: Path,
        account: _Account | None,
        args: Sequence[str],
        *,
        timeout: float,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``bindir/args[0] args[1:]`` as the server account, capturing output."""
        argv = [str(bindir / args[0]), *args[1:]]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        env.pop("LANG", None)
        if account is None:
            return subprocess.run(
                argv,
                capture_output=True,
                text=True,
                env=env,
                cwd="/",
                timeout=timeout,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        env["HOME"] = "/"
        env["USER"] = env["LOGNAME"] = account.name
        return subprocess.run(
            argv,
            capture_output=True,
            text=True,
            env=env,
            cwd="/",
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
            user=account.uid,
            group=account.gid,
            extra_groups=[],
        )

    @staticmethod
    def _remaining(deadline: float) -> float:
        return max(deadline - time.monotonic(), 1.0)

    def _initdb(self, bindir: Path, account: _Account | None, deadline: float) -> None:
        """Run initdb into a scratch directory and rename it to data/ when complete."""
        scratch = self._initdb_dir
        if scratch.exists():
            shutil.rmtree(scratch)  # left over from an interrupted initdb
        self._private_dir(scratch, account)
        remaining = self._remaining(deadline)
        log.info("initialising PostgreSQL cluster in %s", self.data_dir)
        try:
            proc = self._run(
                bindir,
                account,
                [
                    "initdb",
                    "-D",
                    str(scratch),
                    "-U",
                    SUPERUSER,
                    "--auth-local=trust",
                    "--auth-host=reject",
                    "-E",
                    "UTF8",
                    "--no-locale",
                ],
                timeout=remaining,
            )
        except subprocess.TimeoutExpired as exc:
            shutil.rmtree(scratch, ignore_errors=True)
            raise EmbeddedDatabaseError(
                f"initdb did not finish within {remaining:.0f} s for {self.data_dir}; "
                "check the disk and retry with a longer timeout"
            ) from exc
        if proc.returncode != 0:
            shutil.rmtree(scratch, ignore_errors=True)
            raise EmbeddedDatabaseError(
                f"initdb failed for {self.data_dir}: "
                f"{_one_line(proc.stderr or proc.stdout) or f'exit status {proc.returncode}'}"
            )
        with open(scratch / "postgresql.conf", "a") as conf:
            conf.write("\n# flpg settings (port, socket directory, limits)\ninclude 'flpg.conf'\n")
        self._write_conf(scratch, account)
        os.replace(scratch, self.data_dir)

    def _read_pidfile(self) -> _PidFile | None:
        try:
            lines = self._pid_path.read_text().splitlines()
        except FileNotFoundError:
            return None
        except OSError:
            return _PidFile(None, None, "")

        def field(i: int) -> str:
            return lines[i].strip() if len(lines) > i else ""

        pid_s, port_s = field(0).lstrip("-"), field(3)
        return _PidFile(
            pid=int(pid_s) if pid_s.isdigit() else None,
            port=int(port_s) if port_s.isdigit() else None,
            status=field(7),
        )

    def _remove_stale_pidfile(self, pidfile: _PidFile) -> None:
        log.warning("removing stale %s (pid %s is not running)", self._pid_path, pidfile.pid)
        with contextlib.suppress(FileNotFoundError):
            self._pid_path.unlink()
        lock = self.socket_dir / f".s.PGSQL.{pidfile.port or self.port}.lock"
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()

    def _check_port(self, pidfile: _PidFile) -> None:
        if pidfile.port is not None and pidfile.port != self.port:
            raise EmbeddedDatabaseError(
                f"the cluster in {self.root} is already running with port {pidfile.port}, "
                f"not {self.port}; use port={pidfile.port} or stop it first"
            )

    def _fast_check(self) -> bool:
        """True when the server is up and the database answers (no subprocess, no lock)."""
        pidfile = self._read_pidfile()
        if pidfile is None or pidfile.pid is None or pidfile.status != "ready":
            return False
        if not _pid_alive(pidfile.pid):
            return False
        self._check_port(pidfile)
        try:
            with psycopg.connect(self.url(), connect_timeout=5, autocommit=True):
                return True
        except psycopg.Error:
            return False

    def _wait_if_running(self, deadline: float) -> bool:
        """Under the lock: True once a live server is ready; False if none runs."""
        while True:
            pidfile = self._read_pidfile()
            if pidfile is None:
                return False
            if pidfile.pid is None or not _pid_alive(pidfile.pid):
                self._remove_stale_pidfile(pidfile)
                return False
            self._check_port(pidfile)
            if pidfile.status == "ready":
                return True
            if time.monotonic() >= deadline:
                raise EmbeddedDatabaseError(
                    f"the PostgreSQL server in {self.data_dir} (pid {pidfile.pid}) is not ready "
                    f"(status {pidfile.status or 'unknown'!r}); see {self.log_file}"
                )
            time.sleep(0.1)

    def _log_tail(self, offset: int) -> str:
        try:
            with open(self.log_file, "rb") as fh:
                fh.seek(offset)
                text = fh.read().decode("utf-8", "replace")
        except OSError:
            return ""
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return _one_line(" | ".join(lines[-_LOG_TAIL_LINES:]))

    def _start(self, bindir: Path, account: _Account | None, deadline: float) -> None:
        """Start the server with pg_ctl and wait until it accepts connections."""
        try:
            offset = self.log_file.stat().st_size
        except OSError:
            offset = 0
        remaining = self._remaining(deadline)
        log.info("starting PostgreSQL in %s", self.data_dir)
        try:
            proc = self._run(
                bindir,
                account,
                [
                    "pg_ctl",
                    "start",
                    "-D",
                    str(self.data_dir),
                    "-l",
                    str(self.log_file),
                    "-w",
                    "-s",
                    "-t",
                    str(max(1, math.ceil(remaining))),
                ],
                timeout=remaining + 5,
            )
        except subprocess.TimeoutExpired as exc:
            raise EmbeddedDatabaseError(
                f"pg_ctl start did not finish within {remaining:.0f} s for {self.data_dir}: "
                f"{self._log_tail(offset) or 'no log output'}; see {self.log_file}"
            ) from exc
        if proc.returncode != 0:
            detail = self._log_tail(offset) or _one_line(proc.stderr or proc.stdout)
            raise EmbeddedDatabaseError(
                f"the PostgreSQL server in {self.data_dir} failed to start: "
                f"{detail or f'pg_ctl exit status {proc.returncode}'}; see {self.log_file}"
            )

    def _create_database(self, deadline: float) -> None:
        """Create `dbname` unless it exists."""
        connect_timeout = max(2, math.ceil(self._remaining(deadline)))
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
        except psycopg.Error as exc:
            raise EmbeddedDatabaseError(
                f"cannot create database {self.dbname!r} in the cluster at {self.root}: "
                f"{_one_line(str(exc))}; see {self.log_file}"
            ) from exc

    def _kill(self) -> None:
        """Immediate shutdown by signal (SIGQUIT, then SIGKILL); best effort."""
        pidfile = self._read_pidfile()
        if pidfile is None or pidfile.pid is None or not _pid_alive(pidfile.pid):
            return
        pid = pidfile.pid
        for sig, wait in ((signal.SIGQUIT, 10.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            end = time.monotonic() + wait
            while time.monotonic() < end:
                if not _pid_alive(pid):
                    return
                time.sleep(0.05)
