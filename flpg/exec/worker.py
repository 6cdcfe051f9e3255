"""The exec worker loop: wait (NOTIFY or poll) -> reap, stop, claim -> launch -> record.

Connections held: one for state changes, one dedicated LISTEN connection, and
one for writing run logs (3 in all); each ServerApp process holds its own.

ServerApps are tenant code and may be hostile; nothing one of them does stops the
exec serving the others. Each child is reaped on its own: recording one outcome
that fails is logged and retried (database away) or replaced by a plain reason,
never raised out of the loop. Any exit code or signal number is named
(`flpg.bundle.process.describe_exit`). Output is read bounded (`flpg.exec.logwriter`).
A ServerApp gets only an allowlisted environment (`flpg.bundle.process.app_environment`),
and with `--app-user USER` runs as USER (`flpg.exec.launch`, `flpg.bundle.appuser`).
One that no longer runs its run's current attempt (the link failed it for silence,
the run was restarted or taken back) is terminated EXIT_GRACE seconds (at least two
heartbeats) after the exec sees it, like one whose run was stopped: SIGTERM and
SIGCONT to its process group (a stopped process handles SIGTERM only once
continued), SIGKILL after STOP_GRACE.
Processes left in its group when it exits are killed.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
import time

from flpg.bundle.appuser import AppSandbox, AppUser
from flpg.bundle.cache import default_cache_dir
from flpg.bundle.process import describe_exit
from flpg.errors import FlpgError
from flpg.exec.launch import Child, drop_role, release, signal_group, start_serverapp
from flpg.exec.logwriter import LogWriter
from flpg.exec.runner import RESULT_PREFIX
from flpg.lifecycle import worker_id
from flpg.settings import Intervals
from flpg.states import EXEC_CHANNEL, LogStream, RunStatus
from flpg.store import logs as store_logs
from flpg.store import runroles as store_runroles
from flpg.store import runs as store_runs
from flpg.store.db import TRANSIENT, Connection, Listener, Session
from flpg.store.migrate import ensure_schema

log = logging.getLogger("flpg.exec")

STOP_GRACE = 10.0
"""Seconds a ServerApp has to exit after SIGTERM before it is killed."""
EXIT_GRACE = 10.0
"""Seconds a ServerApp whose attempt no longer runs has to exit on its own (at least two
heartbeats): one that recorded its outcome may take a while to exit on a busy machine."""
READERS_GRACE = 5.0
"""Seconds the exec waits, after a ServerApp exited, for the rest of its output."""
RECORD_TRIES = 3
"""Times the exec tries to record an exited ServerApp's outcome before it gives up."""


class ExecWorker:
    """Launches pending runs as ServerApp processes, at most `max_runs` at once."""

    def __init__(
        self,
        url: str,
        *,
        max_runs: int = 4,
        intervals: Intervals | None = None,
        app_user: AppUser | None = None,
    ) -> None:
        """`app_user`: the OS user its ServerApps run as (`--app-user`; None: its own)."""
        if max_runs < 1:
            raise ValueError(f"max_runs must be >= 1, got {max_runs}")
        self.url = url
        self.max_runs = max_runs
        self.app_user = app_user
        self.sandbox: AppSandbox | None = None
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
        if self.app_user is not None:  # ConfigError if its ServerApps cannot run as it
            try:
                self.sandbox = AppSandbox(self.app_user, default_cache_dir(), self.url, "exec")
            except BaseException:
                listener.close()
                logs.close()
                session.close()
                raise
        log.info("exec %s launching up to %d run(s) at once", self.exec_id, self.max_runs)
        unconfirmed: set[int] = set()  # launched; the answer of mark_running was lost
        try:
            while not stop.is_set():
                try:
                    conn = session.conn
                    self._reap(conn, logs)
                    self._apply_stops(conn)
                    self._claim(conn, logs, unconfirmed)
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
            if self.sandbox is not None:
                self.sandbox.close()
            log.info("stopped")

    def _claim(self, conn: Connection, logs: LogWriter, unconfirmed: set[int]) -> None:
        """Claim pending runs one at a time, launching each before claiming the next, so
        an exec that dies leaves at most one run `starting` (the link takes it back), and
        reaping after each launch.

        Launches whose `mark_running` answer was lost with the connection are confirmed
        first: their ServerApp goes on if its run is running under it, and is terminated
        if the run was stopped or taken back meanwhile.
        """
        for run_id in sorted(unconfirmed):
            child = self.children.get(run_id)
            if child is not None and child.terminated_at is None:
                if store_runs.mark_running(conn, run_id, self.exec_id, child.proc.pid):
                    logs.put(
                        run_id,
                        LogStream.EVENT,
                        store_logs.launch_event(child.attempt, self.exec_id, child.proc.pid),
                    )
                else:
                    self._terminate(child)
            unconfirmed.discard(run_id)
        while len(self.children) < self.max_runs:
            claim = store_runs.claim_next(conn, self.exec_id, exclude=sorted(self.children))
            if claim is None:
                return
            try:
                self._launch(conn, logs, claim.run_id, claim.attempt)
            except TRANSIENT:
                if claim.run_id in self.children:
                    unconfirmed.add(claim.run_id)
                raise
            # A burst of launches takes a while: a ServerApp that already ended is
            # recorded now, not after the burst (its heartbeat would look stale).
            self._reap(conn, logs)

    def _launch(self, conn: Connection, logs: LogWriter, run_id: int, attempt: int) -> None:
        try:  # the ServerApp connects as a role of its own, bound to its run
            login = store_runroles.serverapp_login(conn, run_id)
        except TRANSIENT:
            raise
        except FlpgError as exc:
            reason = f"could not make the ServerApp's database role: {exc}"
            store_runs.finish(conn, run_id, RunStatus.FAILED, reason, attempt=attempt)
            return
        try:
            proc, seat = start_serverapp(conn, run_id, attempt, login.url(self.url), self.sandbox)
        except TRANSIENT:
            raise
        except (OSError, FlpgError) as exc:  # FlpgError: its bundle (as another OS user)
            what = "start" if isinstance(exc, OSError) else "prepare the app bundle of"
            reason = f"could not {what} the ServerApp: {exc}"
            store_runs.finish(conn, run_id, RunStatus.FAILED, reason, attempt=attempt)
            drop_role(conn, run_id, login.role)
            return
        child = Child(run_id, attempt, proc, [], role=login.role, seat=seat)
        assert proc.stdout is not None and proc.stderr is not None
        child.readers = [
            logs.follow(run_id, LogStream.STDOUT, proc.stdout, child.last_stdout),
            logs.follow(run_id, LogStream.STDERR, proc.stderr, child.last_stderr),
        ]
        self.children[run_id] = child
        if store_runs.mark_running(conn, run_id, self.exec_id, proc.pid):
            logs.put(
                run_id, LogStream.EVENT, store_logs.launch_event(attempt, self.exec_id, proc.pid)
            )
            log.info("run %d: ServerApp started (pid %d)", run_id, proc.pid)
        else:  # stopped while starting
            self._terminate(child)

    def _reap(self, conn: Connection, logs: LogWriter) -> None:
        """Record the outcome of every ServerApp that exited, each on its own: one
        that cannot be recorded never stops the others (see `_reap_one`)."""
        for run_id, child in list(self.children.items()):
            try:
                self._reap_one(conn, logs, child)
            except TRANSIENT:
                raise  # the database went away: the loop reconnects; reaped again then
            except Exception:
                child.record_failures += 1
                log.exception(
                    "run %d: could not record the outcome of attempt %d (try %d of %d)",
                    run_id,
                    child.attempt,
                    child.record_failures,
                    RECORD_TRIES,
                )
                if child.record_failures >= RECORD_TRIES:
                    self._give_up(conn, child)

    def _reap_one(self, conn: Connection, logs: LogWriter, child: Child) -> None:
        """Escalate a termination, or record an exited ServerApp's outcome once its
        output is read (at most READERS_GRACE s after its exit); the child is dropped
        only once that is recorded."""
        now = time.monotonic()
        code = child.proc.poll()
        if code is None:
            if child.terminated_at and now - child.terminated_at > STOP_GRACE:
                signal_group(child.proc.pid, signal.SIGKILL)
            elif (
                child.terminated_at is None
                and child.superseded_at is not None
                and now - child.superseded_at > max(EXIT_GRACE, 2 * self.intervals.heartbeat)
            ):  # a healthy ServerApp sees this at its next heartbeat and ends itself
                log.info(
                    "run %d: attempt %d no longer runs; terminating its ServerApp",
                    child.run_id,
                    child.attempt,
                )
                self._terminate(child)
            return
        if child.exited_at is None:
            child.exited_at = now
            # Whatever it left in its group (and holding its pipes) ends with it.
            signal_group(child.proc.pid, signal.SIGKILL)
        if any(r.is_alive() for r in child.readers) and now - child.exited_at < READERS_GRACE:
            return  # the rest of its output is still being read
        status, reason = self._outcome(conn, child, code)
        if not child.exit_logged:
            logs.put(
                child.run_id,
                LogStream.EVENT,
                store_logs.end_event(f"{describe_exit(code)}: {status}"),
            )
            child.exit_logged = True
        new_status = store_runs.finish(conn, child.run_id, status, reason, attempt=child.attempt)
        del self.children[child.run_id]
        release(conn, child)
        if new_status == RunStatus.PENDING:
            log.info(
                "run %d: attempt %d failed (%s); restarting", child.run_id, child.attempt, reason
            )
        elif new_status is not None:
            log.info("run %d: %s%s", child.run_id, status, f" ({reason})" if reason else "")

    def _give_up(self, conn: Connection, child: Child) -> None:
        """Drop a child whose outcome could not be recorded; try a plain reason once
        (if even that fails, the link fails the run: its ServerApp is silent)."""
        del self.children[child.run_id]
        code = child.proc.returncode
        how = describe_exit(code) if code is not None else "ended"
        try:
            store_runs.finish(
                conn,
                child.run_id,
                RunStatus.FAILED,
                f"ServerApp {how}; its outcome could not be recorded",
                attempt=child.attempt,
            )
        except TRANSIENT:
            raise
        except Exception:
            log.exception("run %d: could not record even a plain outcome", child.run_id)
        release(conn, child)

    def _outcome(self, conn: Connection, child: Child, code: int) -> tuple[RunStatus, str | None]:
        run = store_runs.get(conn, child.run_id)
        if run.stop_requested_at is not None:
            return RunStatus.STOPPED, "stopped by user"
        if code == 0:
            return RunStatus.FINISHED, None
        last = child.last_stderr[0]
        if last.startswith(RESULT_PREFIX):
            return RunStatus.FAILED, last[len(RESULT_PREFIX) :]
        return RunStatus.FAILED, f"ServerApp {describe_exit(code)}"

    def _apply_stops(self, conn: Connection) -> None:
        """Terminate the ServerApps of runs with a stop request; note those whose
        attempt no longer runs (`_reap_one` terminates them EXIT_GRACE s later, unless
        they end themselves first, as a healthy one does)."""
        for run_id in store_runs.stop_requested(conn, self.exec_id):
            child = self.children.get(run_id)
            if child is not None and child.terminated_at is None:
                log.info("run %d: stop requested, terminating its ServerApp", run_id)
                self._terminate(child)
        running = [
            (c.run_id, c.attempt)
            for c in self.children.values()
            if c.superseded_at is None and c.exited_at is None
        ]
        now = time.monotonic()
        for run_id, attempt in store_runs.superseded(conn, self.exec_id, running):
            child = self.children.get(run_id)
            if child is not None and child.attempt == attempt:
                child.superseded_at = now

    @staticmethod
    def _terminate(child: Child) -> None:
        """SIGTERM to the ServerApp's group, then SIGCONT: a stopped process (SIGSTOP)
        handles SIGTERM only once continued. SIGKILL follows after STOP_GRACE."""
        child.terminated_at = time.monotonic()
        signal_group(child.proc.pid, signal.SIGTERM)
        signal_group(child.proc.pid, signal.SIGCONT)

    def _shutdown(self, conn: Connection, logs: LogWriter) -> None:
        """Terminate every ServerApp and fail its run (each recorded on its own)."""
        for child in self.children.values():
            self._terminate(child)
        deadline = time.monotonic() + STOP_GRACE
        for child in self.children.values():
            try:
                child.proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                signal_group(child.proc.pid, signal.SIGKILL)
                child.proc.wait()
            signal_group(child.proc.pid, signal.SIGKILL)  # what it left in its group
            for reader in child.readers:
                reader.join(timeout=READERS_GRACE)
            logs.put(
                child.run_id,
                LogStream.EVENT,
                store_logs.end_event("terminated: exec worker shut down"),
            )
            try:
                store_runs.finish(
                    conn,
                    child.run_id,
                    RunStatus.FAILED,
                    f"exec worker {self.exec_id} shut down",
                    attempt=child.attempt,
                )
            except TRANSIENT:
                raise
            except Exception:
                log.exception("run %d: could not record that it was shut down", child.run_id)
            release(conn, child)
        self.children.clear()
