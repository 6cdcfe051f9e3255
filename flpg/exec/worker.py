"""The exec worker loop: wait (NOTIFY or poll) -> reap, stop, claim -> launch -> record.

Connections held: one for state changes, one dedicated LISTEN connection, and
one for writing run logs (3 in all); each ServerApp process holds its own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from flpg.db import EXEC_CHANNEL, TRANSIENT, Connection, Listener, Session
from flpg.exec.logwriter import LogWriter
from flpg.exec.runner import EXEC_PID_ENV, RESULT_PREFIX
from flpg.lifecycle import worker_id
from flpg.migrate import ensure_schema
from flpg.settings import DATABASE_URL_ENV, Intervals
from flpg.store import runs as store_runs

log = logging.getLogger("flpg.exec")

STOP_GRACE = 10.0
"""Seconds a ServerApp has to exit after SIGTERM before it is killed."""


@dataclass
class Child:
    run_id: int
    attempt: int
    proc: subprocess.Popen[str]
    readers: list[threading.Thread]
    last_stderr: list[str] = field(default_factory=lambda: [""])
    last_stdout: list[str] = field(default_factory=lambda: [""])
    terminated_at: float | None = None


class ExecWorker:
    """Launches pending runs as ServerApp processes, at most `max_runs` at once."""

    def __init__(self, url: str, *, max_runs: int = 4, intervals: Intervals | None = None) -> None:
        if max_runs < 1:
            raise ValueError(f"max_runs must be >= 1, got {max_runs}")
        self.url = url
        self.max_runs = max_runs
        self.intervals = intervals or Intervals.from_env()
        self.exec_id = worker_id("exec")
        self.children: dict[int, Child] = {}

    def run(self, stop: threading.Event) -> None:
        """Serve until `stop` is set; then stop its ServerApps and fail their runs."""
        ensure_schema(self.url)  # an unreachable database at start is an error (exit 3)
        session = Session(self.url, application_name="flpg-exec", stop=stop)
        session.conn  # noqa: B018 - connect now: fail fast on a bad URL
        listener = Listener(self.url, [EXEC_CHANNEL], application_name="flpg-exec-listen")
        logs = LogWriter(self.url)
        log.info("exec %s launching up to %d run(s) at once", self.exec_id, self.max_runs)
        try:
            while not stop.is_set():
                try:
                    conn = session.conn
                    self._reap(conn, logs)
                    self._apply_stops(conn)
                    free = self.max_runs - len(self.children)
                    for run_id, attempt in store_runs.claim_pending(conn, self.exec_id, free):
                        self._launch(conn, logs, run_id, attempt)
                except TRANSIENT as exc:
                    session.reset(exc)  # ServerApps keep running; retry with backoff
                    continue
                listener.wait(0.2 if self.children else self.intervals.poll, stop)
        finally:
            try:
                self._shutdown(session.conn, logs)
            except TRANSIENT as exc:
                log.warning("could not record the outcome of its runs (%s)", exc)
            listener.close()
            logs.close()
            session.close()
            log.info("stopped")

    def _launch(self, conn: Connection, logs: LogWriter, run_id: int, attempt: int) -> None:
        env = {
            **os.environ,
            DATABASE_URL_ENV: self.url,
            "PYTHONUNBUFFERED": "1",
            EXEC_PID_ENV: str(os.getpid()),
        }
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "flpg.exec.runner", str(run_id), str(attempt)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                bufsize=1,
                start_new_session=True,
            )
        except OSError as exc:
            store_runs.finish(
                conn, run_id, "failed", f"could not start the ServerApp: {exc}", attempt=attempt
            )
            return
        child = Child(run_id, attempt, proc, [])
        assert proc.stdout is not None and proc.stderr is not None
        child.readers = [
            logs.follow(run_id, "stdout", proc.stdout, child.last_stdout),
            logs.follow(run_id, "stderr", proc.stderr, child.last_stderr),
        ]
        self.children[run_id] = child
        if store_runs.mark_running(conn, run_id, self.exec_id, proc.pid):
            logs.put(
                run_id,
                "event",
                f"ServerApp attempt {attempt} started by {self.exec_id} (pid {proc.pid})",
            )
            log.info("run %d: ServerApp started (pid %d)", run_id, proc.pid)
        else:  # stopped while starting
            self._terminate(child)

    def _reap(self, conn: Connection, logs: LogWriter) -> None:
        for run_id, child in list(self.children.items()):
            code = child.proc.poll()
            if code is None:
                if child.terminated_at and time.monotonic() - child.terminated_at > STOP_GRACE:
                    os.killpg(child.proc.pid, signal.SIGKILL)
                continue
            for reader in child.readers:
                reader.join(timeout=5)
            del self.children[run_id]
            status, reason = self._outcome(conn, child, code)
            logs.put(run_id, "event", f"ServerApp exited with code {code}: {status}")
            new_status = store_runs.finish(conn, run_id, status, reason, attempt=child.attempt)
            if new_status == "pending":
                log.info(
                    "run %d: attempt %d failed (%s); restarting", run_id, child.attempt, reason
                )
            elif new_status is not None:
                log.info("run %d: %s%s", run_id, status, f" ({reason})" if reason else "")

    def _outcome(self, conn: Connection, child: Child, code: int) -> tuple[str, str | None]:
        run = store_runs.get(conn, child.run_id)
        if run.stop_requested_at is not None:
            return "stopped", "stopped by user"
        if code == 0:
            return "finished", None
        last = child.last_stderr[0]
        if last.startswith(RESULT_PREFIX):
            return "failed", last[len(RESULT_PREFIX) :]
        if code < 0:
            return "failed", f"ServerApp was killed by {signal.Signals(-code).name}"
        return "failed", f"ServerApp exited with code {code}"

    def _apply_stops(self, conn: Connection) -> None:
        for run_id in store_runs.stop_requested(conn, self.exec_id):
            child = self.children.get(run_id)
            if child is not None and child.terminated_at is None:
                log.info("run %d: stop requested, terminating its ServerApp", run_id)
                self._terminate(child)

    @staticmethod
    def _terminate(child: Child) -> None:
        child.terminated_at = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.proc.pid, signal.SIGTERM)

    def _shutdown(self, conn: Connection, logs: LogWriter) -> None:
        for child in self.children.values():
            self._terminate(child)
        deadline = time.monotonic() + STOP_GRACE
        for child in self.children.values():
            try:
                child.proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                os.killpg(child.proc.pid, signal.SIGKILL)
                child.proc.wait()
            for reader in child.readers:
                reader.join(timeout=5)
            store_runs.finish(
                conn,
                child.run_id,
                "failed",
                f"exec worker {self.exec_id} shut down",
                attempt=child.attempt,
            )
            logs.put(child.run_id, "event", "ServerApp terminated: exec worker shut down")
        self.children.clear()
