"""One attempt of a run's ServerApp, in its own process:
`python -m flpg.exec.runner RUN_ID ATTEMPT`.

Started by an exec worker with `FLPG_DATABASE_URL` set (and, when it runs as another
OS user, `FLPG_CACHE_READ_ONLY`: its exec extracted the bundle, which it only checks,
`flpg.bundle.appuser`). Heart-beats the run while
the ServerApp's main function runs, and records the outcome itself (`finished`, or
`failed` with the exception's last line; fenced by the attempt), so it stands even
if its exec is gone; the last line on stderr then starts with RESULT_PREFIX. The
exec records outcomes only for a ServerApp that could not (killed by a signal).
If its exec dies, the ServerApp notices at its next heartbeat (it was re-parented),
fails its attempt (a run with restarts left is relaunched by another exec from its
checkpoint) and ends.

Its first connections (loading the run and its bundle, opening the grid) and its
last (recording the outcome) are retried with backoff (`Session.call`) while the
database is away, for up to `appchild.CONNECT_WITHIN` s: a ServerApp launched during a database
blip waits for it, as every other component does, instead of failing the run.

The exec worker normally ends a stopped run's ServerApp with SIGTERM. The heartbeat
is the fallback when no exec does (its exec died: the ServerApp lives in its own
session and would run on): when it sees a stop request, or that its attempt is no
longer the run's running one (the run ended, or was restarted as a new attempt),
the ServerApp terminates itself (and its process group).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from flpg.app.context import Context
from flpg.app.records import RecordDict
from flpg.bundle.appdir import BundleCache, default_cache_dir, load_component, parse_pyproject
from flpg.bundle.cache import read_only_cache
from flpg.bundle.process import call_within
from flpg.compat.flwr import install as install_flwr_alias
from flpg.lifecycle import keep_freed_memory
from flpg.serverapp import ServerApp
from flpg.serverapp.grid import Grid
from flpg.settings import DATABASE_URL_ENV, Intervals
from flpg.states import RunStatus
from flpg.store import apps as store_apps
from flpg.store import runs as store_runs
from flpg.store.db import TRANSIENT, Connection, Session

RESULT_PREFIX = "flpg-serverapp-failed: "
EXEC_PID_ENV = "FLPG_EXEC_PID"
"""The pid of the exec worker that launched this ServerApp (unset when run by hand)."""

T = TypeVar("T")


def _within(url: str, run_id: int, fn: Callable[[Connection], T]) -> T:
    """`fn(conn)`, retried while the database is away (`appchild.call_within`)."""
    return call_within(url, f"flpg-serverapp-{run_id}", fn)


def _exec_gone() -> bool:
    """Whether the exec that launched this ServerApp died (it was re-parented)."""
    exec_pid = os.environ.get(EXEC_PID_ENV)
    return bool(exec_pid) and os.getppid() != int(exec_pid or 0)


def _record_failure(url: str, run_id: int, attempt: int, reason: str) -> None:
    """Record this attempt's failure (or the stop, if one was requested) in the
    database; best effort. A run with restarts left goes back to the queue."""

    def record(conn: Connection) -> None:
        if store_runs.get(conn, run_id).stop_requested_at is not None:
            store_runs.finish(conn, run_id, RunStatus.STOPPED, "stopped by user", attempt=attempt)
        else:
            store_runs.finish(conn, run_id, RunStatus.FAILED, reason, attempt=attempt)

    try:
        _within(url, run_id, record)
    except Exception as exc:
        _say(f"could not record the outcome: {exc}")


def _say(line: str) -> None:
    """A line on stderr; never raises (the exec reading it may be gone: broken pipe)."""
    with contextlib.suppress(OSError, ValueError):
        print(line, file=sys.stderr, flush=True)


def _terminate_self(why: str) -> None:
    """End this ServerApp as the exec's SIGTERM would (its whole process group)."""
    _say(f"flpg: {why}; terminating the ServerApp")
    if os.getpgrp() == os.getpid():  # launched by an exec: leader of its own group
        os.killpg(os.getpgrp(), signal.SIGTERM)
    else:
        os.kill(os.getpid(), signal.SIGTERM)


def _heartbeat(url: str, run_id: int, attempt: int, period: float, stop: threading.Event) -> None:
    session = Session(url, application_name=f"flpg-serverapp-{run_id}-heartbeat", stop=stop)
    try:
        # Beat at once, then every period: the exec's mark_running beat is already
        # as old as this process's start-up (imports, bundle fetch), which on a busy
        # machine can approach the link's offline limit.
        while not stop.is_set():
            try:
                conn = session.conn
                stop_requested = store_runs.heartbeat(conn, run_id, attempt)
                current = None if stop_requested is not None else store_runs.get(conn, run_id)
            except TRANSIENT as exc:  # the database went away: reconnect, keep beating
                session.reset(exc)
                continue
            except Exception as exc:  # nor may any other error kill the run
                _say(f"heartbeat failed: {exc}")
            else:
                if stop.is_set():
                    return
                if _exec_gone():
                    # Nobody reads this process's output or records its outcome any
                    # more: fail this attempt (a run with restarts left is relaunched
                    # by another exec, from its checkpoint) and end.
                    _record_failure(url, run_id, attempt, "its exec worker went away")
                    _terminate_self(f"run {run_id}: its exec worker went away")
                    return
                if stop_requested:
                    _terminate_self(f"run {run_id}: a stop was requested")
                    return
                if current is not None and not (
                    current.attempt == attempt and current.status == RunStatus.STARTING
                ):
                    _terminate_self(
                        f"run {run_id} attempt {attempt} is no longer running "
                        f"(the run is {current.status}, attempt {current.attempt})"
                    )
                    return
            stop.wait(period)
    finally:
        session.close()


def run_serverapp(url: str, run_id: int, attempt: int) -> None:
    """Load the run's ServerApp from its bundle and run it to completion (raises);
    then record the run finished, unless a stop was requested (the exec records that)."""
    intervals = Intervals.from_env()
    stop = threading.Event()
    beat = threading.Thread(
        target=_heartbeat, args=(url, run_id, attempt, intervals.heartbeat, stop), daemon=True
    )
    beat.start()  # before loading the app, which may take a while
    try:
        try:
            _load_and_run(url, run_id, attempt, intervals)
        except SystemExit as exc:
            if exc.code not in (0, None):
                raise
    finally:
        stop.set()

    def record(conn: Connection) -> None:
        if store_runs.get(conn, run_id).stop_requested_at is None:
            store_runs.finish(conn, run_id, RunStatus.FINISHED, attempt=attempt)

    try:
        _within(url, run_id, record)
    except TRANSIENT as exc:  # it exits 0, so its exec records `finished`
        _say(f"could not record the outcome: {exc}")


def _load_and_run(url: str, run_id: int, attempt: int, intervals: Intervals) -> None:
    def fetch(conn: Connection) -> tuple[store_runs.Run, Path]:
        run = store_runs.get(conn, run_id)
        if read_only_cache():  # run as another OS user: its exec extracted the bundle
            return run, BundleCache(default_cache_dir(), shared=True).verified(run.app_hash)
        root = BundleCache(default_cache_dir()).path(
            run.app_hash, lambda: store_apps.get(conn, run.app_hash)[1]
        )
        return run, root

    run, root = _within(url, run_id, fetch)
    spec = parse_pyproject((root / "pyproject.toml").read_text(), f"app {run.app_name}")
    app = load_component(root, spec.serverapp, ServerApp)
    grid = _within(
        url, run_id, lambda _: Grid(url, run_id, attempt=attempt, poll=min(intervals.poll, 2.0))
    )
    try:
        context = Context(
            run_id=run_id,
            node_id=None,
            node_config={},
            state=RecordDict(),
            run_config=dict(run.run_config),
        )
        app(grid, context)
    finally:
        grid.close()


def _reason(exc: BaseException) -> str:
    """`Type: message` of an exception, all of its message (which may span lines;
    a SyntaxError's quoted code before it and any notes after it are left out)."""
    lines = traceback.format_exception_only(exc)
    line = next((x for x in lines if not x.startswith(" ")), lines[-1])
    return line.rstrip("\n")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or not all(a.isdigit() for a in args):
        print("usage: python -m flpg.exec.runner RUN_ID ATTEMPT", file=sys.stderr)
        return 2
    url = os.environ.get(DATABASE_URL_ENV)
    if not url:
        print(f"{RESULT_PREFIX}{DATABASE_URL_ENV} is not set", file=sys.stderr)
        return 2
    install_flwr_alias()  # `import flwr...` in the app resolves to flpg (flpg.compat.flwr)
    keep_freed_memory()  # payload chunk buffers are reused, not faulted in again
    try:
        run_serverapp(url, int(args[0]), int(args[1]))
    except BaseException as exc:  # report every failure, including SystemExit from user code
        with contextlib.suppress(OSError, ValueError):
            traceback.print_exc()
        reason = _reason(exc)
        if _exec_gone():
            reason = f"its exec worker went away ({reason})"
        _record_failure(url, int(args[0]), int(args[1]), reason)
        # One line, so the exec finds it as the last line on stderr.
        _say(RESULT_PREFIX + reason.replace("\r", "\\r").replace("\n", "\\n"))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
