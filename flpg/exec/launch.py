"""How an exec worker starts a run's ServerApp process (`python -m flpg.exec.runner`)
and what it keeps of each (`Child`).

The process gets an allowlisted environment (`flpg.bundle.process.app_environment`),
its run role's URL and its own session, and starts in its run's artifact directory
(`flpg.exec.artifacts`, also in `$FLPG_ARTIFACT_DIR`). With `--app-user USER` (a
`sandbox`) it runs as USER (`flpg.bundle.appuser`): the exec first extracts the run's
bundle into its cache, and the process only reads it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

from flpg.bundle.appuser import AppSandbox, AppSeat
from flpg.bundle.process import app_environment
from flpg.errors import FlpgError
from flpg.exec import artifacts
from flpg.exec.runner import EXEC_PID_ENV
from flpg.settings import DATABASE_URL_ENV
from flpg.states import LogStream
from flpg.store import apps as store_apps
from flpg.store import logs as store_logs
from flpg.store import runroles as store_runroles
from flpg.store import runs as store_runs
from flpg.store.db import TRANSIENT, Connection

log = logging.getLogger("flpg.exec")


@dataclass
class Child:
    run_id: int
    attempt: int
    proc: subprocess.Popen[bytes]
    readers: list[threading.Thread]
    last_stderr: list[str] = field(default_factory=lambda: [""])
    last_stdout: list[str] = field(default_factory=lambda: [""])
    terminated_at: float | None = None
    superseded_at: float | None = None
    """When the exec saw that its attempt no longer runs (monotonic)."""
    exited_at: float | None = None
    exit_logged: bool = False
    record_failures: int = 0
    role: str | None = None
    """The run role its ServerApp connects as (dropped once its outcome is recorded)."""
    seat: AppSeat | None = None
    """Its home and bundle when it runs as another OS user (released with its role)."""


def start_serverapp(
    conn: Connection, run_id: int, attempt: int, url: str, sandbox: AppSandbox | None
) -> tuple[subprocess.Popen[bytes], AppSeat | None]:
    """Start attempt `attempt` of run `run_id`'s ServerApp, connecting with `url` (its
    run role's), in the run's artifact directory (made, and named in an event of the
    run's log, first); in `sandbox`, as its user, once the exec extracted the run's
    bundle (AppError if it cannot be). OSError if the directory cannot be prepared or
    the process cannot start."""
    workdir = artifacts.prepare(run_id, None if sandbox is None else sandbox.user)
    store_logs.append(conn, run_id, [(LogStream.EVENT, artifacts.event(attempt, workdir))])
    seat = None
    python = sys.executable
    confined: dict[str, Any] = {}
    if sandbox is not None:
        app_hash = store_runs.get(conn, run_id).app_hash
        fetch = lambda: store_apps.get(conn, app_hash)[1]  # noqa: E731
        seat = sandbox.seat(f"serverapp-{run_id}", app_hash, fetch, url)
        url, python = seat.url, seat.python
        confined = seat.popen_kwargs()
    confined["cwd"] = workdir  # the seat's home stays its HOME and TMPDIR
    env = app_environment(
        {
            DATABASE_URL_ENV: url,
            "PYTHONUNBUFFERED": "1",
            EXEC_PID_ENV: str(os.getpid()),
            artifacts.ARTIFACT_DIR_ENV: str(workdir),
            # `python -m` would put the cwd (the artifact directory, which the app
            # writes) first on sys.path: a file left there must not shadow a module.
            "PYTHONSAFEPATH": "1",
        }
    )
    if seat is not None:
        env = seat.environment(env)
    try:
        proc = subprocess.Popen(  # bytes: app output need not be text (logwriter)
            [python, "-m", "flpg.exec.runner", str(run_id), str(attempt)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            **confined,
        )
    except BaseException:
        if seat is not None:
            seat.close()
        raise
    return proc, seat


def release(conn: Connection, child: Child) -> None:
    """Drop a ServerApp's run role and free its seat, once it ended."""
    if child.seat is not None:
        child.seat.close()
    drop_role(conn, child.run_id, child.role)


def drop_role(conn: Connection, run_id: int, role: str | None) -> None:
    """Drop a ServerApp's run role; a failure is logged (the link collects it later)."""
    if role is None:
        return
    try:
        store_runroles.drop(conn, role)
    except TRANSIENT:
        raise
    except FlpgError as exc:
        log.warning("run %d: could not drop role %s (%s); the link collects it", run_id, role, exc)


def signal_group(pgid: int, sig: signal.Signals) -> None:
    """Signal a ServerApp's process group; nothing if it is gone already."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
