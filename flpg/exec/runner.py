"""One run's ServerApp, in its own process: `python -m flpg.exec.runner RUN_ID`.

Started by an exec worker with `FLPG_DATABASE_URL` set. Heart-beats the run while
the ServerApp's main function runs. On failure, the last line on stderr starts
with RESULT_PREFIX and states the reason the exec worker records.

The exec worker normally ends a stopped run's ServerApp with SIGTERM. The heartbeat
is the fallback when no exec does (its exec died: the ServerApp lives in its own
session and would run on): when it sees a stop request, or that the run already
ended, the ServerApp terminates itself (and its process group).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import traceback

from flpg.appbundle import BundleCache, default_cache_dir, load_component, parse_pyproject
from flpg.context import Context
from flpg.db import connect
from flpg.grid import Grid
from flpg.records import RecordDict
from flpg.serverapp import ServerApp
from flpg.settings import DATABASE_URL_ENV, Intervals
from flpg.store import apps as store_apps
from flpg.store import runs as store_runs
from flpg.store.runs import TERMINAL

RESULT_PREFIX = "flpg-serverapp-failed: "


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


def _heartbeat(url: str, run_id: int, period: float, stop: threading.Event) -> None:
    conn = connect(url, application_name=f"flpg-serverapp-{run_id}-heartbeat")
    try:
        while not stop.wait(period):
            try:
                stop_requested = store_runs.heartbeat(conn, run_id)
                status = None if stop_requested else store_runs.get(conn, run_id).status
            except Exception as exc:  # a transient database error must not kill the run
                _say(f"heartbeat failed: {exc}")
                continue
            if stop.is_set():
                return
            if stop_requested:
                _terminate_self(f"run {run_id}: a stop was requested")
                return
            if status in TERMINAL:
                _terminate_self(f"run {run_id} already ended ({status})")
                return
    finally:
        conn.close()


def run_serverapp(url: str, run_id: int) -> None:
    """Load the run's ServerApp from its bundle and run it to completion (raises)."""
    intervals = Intervals.from_env()
    with connect(url, application_name=f"flpg-serverapp-{run_id}") as conn:
        run = store_runs.get(conn, run_id)
        root = BundleCache(default_cache_dir()).path(
            run.app_hash, lambda: store_apps.get(conn, run.app_hash)[1]
        )
    spec = parse_pyproject((root / "pyproject.toml").read_text(), f"app {run.app_name}")
    app = load_component(root, spec.serverapp, ServerApp)
    stop = threading.Event()
    beat = threading.Thread(
        target=_heartbeat, args=(url, run_id, intervals.heartbeat, stop), daemon=True
    )
    beat.start()
    grid = Grid(url, run_id, poll=min(intervals.poll, 2.0))
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
        stop.set()
        grid.close()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not args[0].isdigit():
        print("usage: python -m flpg.exec.runner RUN_ID", file=sys.stderr)
        return 2
    url = os.environ.get(DATABASE_URL_ENV)
    if not url:
        print(f"{RESULT_PREFIX}{DATABASE_URL_ENV} is not set", file=sys.stderr)
        return 2
    try:
        run_serverapp(url, int(args[0]))
    except BaseException as exc:  # report every failure, including SystemExit from user code
        if isinstance(exc, SystemExit) and exc.code in (0, None):
            return 0
        traceback.print_exc()
        reason = "".join(traceback.format_exception_only(exc)).strip().splitlines()[-1]
        print(f"{RESULT_PREFIX}{reason}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
