"""The embedded cluster's files on disk and the server process they name.

Creating the cluster's root directory; creating the data directory (PGDATA) with
initdb (into a scratch directory renamed into place when complete), checking that it
suits the binaries found, writing the ``flpg.conf`` it includes and its ``pg_hba.conf``
(who may connect how; written by `flpg.local.conffiles`); starting and stopping its
server with pg_ctl, reading the ``postmaster.pid`` the running server keeps in it, and
killing that server.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from flpg.errors import EmbeddedDatabaseError
from flpg.local.account import Account, private_dir, run_as
from flpg.local.conffiles import (
    SUPERUSER,
    conf_text,
    conf_unchanged,
    hba_text,
    served_address,
    tcp_port,
    write_conf,
)

__all__ = [
    "SUPERUSER",
    "PidFile",
    "check_data_dir",
    "conf_text",
    "conf_unchanged",
    "hba_text",
    "initdb",
    "kill_server",
    "make_root",
    "one_line",
    "pg_ctl_start",
    "pg_ctl_stop",
    "pid_alive",
    "read_pidfile",
    "remove_stale_pidfile",
    "served_address",
    "tcp_port",
    "write_conf",
]

log = logging.getLogger(__name__)

_ONE_LINE_CHARS = 600
_LOG_TAIL_LINES = 6


def one_line(text: str, limit: int = _ONE_LINE_CHARS) -> str:
    """`text` with whitespace collapsed, cut to its last `limit` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else "..." + text[-limit:]


def make_root(root: Path) -> None:
    """Create `root` (and its parents); raise `EmbeddedDatabaseError` unless writable."""
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        blocker = root
        while not blocker.exists() and blocker != blocker.parent:
            blocker = blocker.parent
        raise EmbeddedDatabaseError(
            f"cannot create the cluster directory {root} ({exc.strerror or exc}; "
            f"check {blocker}); set FLPG_HOME to a writable directory"
        ) from exc
    if not root.is_dir():
        raise EmbeddedDatabaseError(
            f"{root} is not a directory; set FLPG_HOME to a writable directory"
        )
    if not os.access(root, os.W_OK | os.X_OK):
        raise EmbeddedDatabaseError(
            f"the cluster directory {root} is not writable; fix its permissions "
            "or set FLPG_HOME to a writable directory"
        )


def check_data_dir(data_dir: Path, major: int, bindir: Path) -> None:
    """Reject a data directory from another major version or not from initdb (raises
    `EmbeddedDatabaseError`); an empty `data_dir` is removed (initdb recreates it)."""
    version_file = data_dir / "PG_VERSION"
    if version_file.is_file():
        found = version_file.read_text().strip()
        if found != str(major):
            raise EmbeddedDatabaseError(
                f"{data_dir} was created by PostgreSQL {found} but the binaries "
                f"found are {major} (in {bindir}); point FLPG_PG_BINDIR at PostgreSQL "
                f"{found} binaries or move the directory away"
            )
        return
    if data_dir.is_dir():
        if any(data_dir.iterdir()):
            raise EmbeddedDatabaseError(
                f"{data_dir} exists but is not a PostgreSQL data directory "
                "(no PG_VERSION); move it away"
            )
        data_dir.rmdir()
    elif data_dir.exists():
        raise EmbeddedDatabaseError(f"{data_dir} is not a directory; move it away")


def initdb(
    bindir: Path,
    account: Account | None,
    data_dir: Path,
    *,
    socket_dir: Path,
    port: int,
    timeout: float,
) -> None:
    """Create `data_dir` with initdb, configured for `port` and `socket_dir`.

    initdb runs as `account` into ``data.initdb`` beside `data_dir`, which is renamed
    to `data_dir` only when complete; raises `EmbeddedDatabaseError` on failure.
    """
    scratch = data_dir.with_name(data_dir.name + ".initdb")
    if scratch.exists():
        shutil.rmtree(scratch)  # left over from an interrupted initdb
    private_dir(scratch, account)
    log.info("initialising PostgreSQL cluster in %s", data_dir)
    argv = [str(bindir / "initdb"), "-D", str(scratch), "-U", SUPERUSER]
    argv += ["--auth-local=trust", "--auth-host=reject", "-E", "UTF8", "--no-locale"]
    try:
        proc = run_as(account, argv, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        shutil.rmtree(scratch, ignore_errors=True)
        raise EmbeddedDatabaseError(
            f"initdb did not finish within {timeout:.0f} s for {data_dir}; "
            "check the disk and retry with a longer timeout"
        ) from exc
    if proc.returncode != 0:
        shutil.rmtree(scratch, ignore_errors=True)
        raise EmbeddedDatabaseError(
            f"initdb failed for {data_dir}: "
            f"{one_line(proc.stderr or proc.stdout) or f'exit status {proc.returncode}'}"
        )
    with open(scratch / "postgresql.conf", "a") as conf:
        conf.write("\n# flpg settings (port, socket directory, limits)\ninclude 'flpg.conf'\n")
    write_conf(scratch, socket_dir, port, account)
    os.replace(scratch, data_dir)


@dataclass(frozen=True)
class PidFile:
    """The parsed ``postmaster.pid``; fields are None when missing or garbled."""

    pid: int | None
    port: int | None
    status: str


def read_pidfile(data_dir: Path) -> PidFile | None:
    """The ``postmaster.pid`` of `data_dir`, or None when there is none."""
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
    except FileNotFoundError:
        return None
    except OSError:
        return PidFile(None, None, "")

    def field(i: int) -> str:
        return lines[i].strip() if len(lines) > i else ""

    pid_s, port_s = field(0).lstrip("-"), field(3)
    return PidFile(
        pid=int(pid_s) if pid_s.isdigit() else None,
        port=int(port_s) if port_s.isdigit() else None,
        status=field(7),
    )


def remove_stale_pidfile(data_dir: Path, socket_dir: Path, pidfile: PidFile, port: int) -> None:
    """Remove the pid file of a dead server and its socket lock file (port: the default)."""
    pid_path = data_dir / "postmaster.pid"
    log.warning("removing stale %s (pid %s is not running)", pid_path, pidfile.pid)
    with contextlib.suppress(FileNotFoundError):
        pid_path.unlink()
    lock = socket_dir / f".s.PGSQL.{pidfile.port or port}.lock"
    with contextlib.suppress(FileNotFoundError):
        lock.unlink()


def pid_alive(pid: int) -> bool:
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


def kill_server(data_dir: Path) -> None:
    """Immediate shutdown of `data_dir`'s server by signal (SIGQUIT, then SIGKILL); best effort."""
    pidfile = read_pidfile(data_dir)
    if pidfile is None or pidfile.pid is None or not pid_alive(pidfile.pid):
        return
    pid = pidfile.pid
    for sig, wait in ((signal.SIGQUIT, 10.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        end = time.monotonic() + wait
        while time.monotonic() < end:
            if not pid_alive(pid):
                return
            time.sleep(0.05)


def _pg_ctl(
    bindir: Path, account: Account | None, args: list[str], timeout: float
) -> subprocess.CompletedProcess[str]:
    """Run ``pg_ctl ARGS -w -s -t SECONDS`` as the server account, capturing output."""
    wait = str(max(1, math.ceil(timeout)))
    argv = [str(bindir / "pg_ctl"), *args, "-w", "-s", "-t", wait]
    return run_as(account, argv, timeout=timeout + 5)


def log_tail(log_file: Path, offset: int) -> str:
    """The last lines of `log_file` written after `offset`, as one line."""
    try:
        with open(log_file, "rb") as fh:
            fh.seek(offset)
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return one_line(" | ".join(lines[-_LOG_TAIL_LINES:]))


def pg_ctl_start(
    bindir: Path, account: Account | None, data_dir: Path, log_file: Path, timeout: float
) -> None:
    """Start `data_dir`'s server, logging to `log_file`, and wait until it accepts
    connections; raise `EmbeddedDatabaseError` quoting the log when it does not."""
    try:
        offset = log_file.stat().st_size
    except OSError:
        offset = 0
    log.info("starting PostgreSQL in %s", data_dir)
    args = ["start", "-D", str(data_dir), "-l", str(log_file)]
    try:
        proc = _pg_ctl(bindir, account, args, timeout)
    except subprocess.TimeoutExpired as exc:
        raise EmbeddedDatabaseError(
            f"pg_ctl start did not finish within {timeout:.0f} s for {data_dir}: "
            f"{log_tail(log_file, offset) or 'no log output'}; see {log_file}"
        ) from exc
    if proc.returncode != 0:
        detail = log_tail(log_file, offset) or one_line(proc.stderr or proc.stdout)
        raise EmbeddedDatabaseError(
            f"the PostgreSQL server in {data_dir} failed to start: "
            f"{detail or f'pg_ctl exit status {proc.returncode}'}; see {log_file}"
        )


def pg_ctl_stop(
    bindir: Path,
    account: Account | None,
    data_dir: Path,
    log_file: Path,
    timeout: float,
    mode: str = "fast",
) -> None:
    """Stop `data_dir`'s server (``pg_ctl stop -m fast``, or `mode` "immediate": a
    crash, as far as the server can tell); raise `EmbeddedDatabaseError` when it still
    runs afterwards."""
    before = read_pidfile(data_dir)
    pid = before.pid if before is not None else None
    try:
        proc = _pg_ctl(bindir, account, ["stop", "-D", str(data_dir), "-m", mode], timeout)
    except subprocess.TimeoutExpired as exc:
        raise EmbeddedDatabaseError(
            f"pg_ctl stop did not finish within {timeout:.0f} s for {data_dir}; see {log_file}"
        ) from exc
    if proc.returncode != 0 and pid is not None and pid_alive(pid):
        raise EmbeddedDatabaseError(
            f"cannot stop the PostgreSQL server in {data_dir}: "
            f"{one_line(proc.stderr or proc.stdout) or 'pg_ctl failed'}; see {log_file}"
        )
