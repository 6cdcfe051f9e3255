"""The ClientApp processes of a node worker: one per run, started on the run's first
message and kept between rounds until the run ends.

A run's app code runs in its own OS process (`flpg.node.appprocess`), so one run's
ClientApp cannot touch another run's memory, modules or context state, and a crash
(segfault, `os._exit`, OOM kill) takes down only that run's process. Messages it
held get an error reply; the run's next message starts a fresh process (with fresh
context state). A handler that outlives its message's TTL gets its process killed,
so a hanging ClientApp frees the worker's slot instead of holding it for ever.

Messages go to a process in batches, one protocol line each, and come back as one
line per batch of replies written (`flpg.node.protocol`); the node worker learns of
them through the callbacks of its `Launch`, on the process's reader thread.

App code is tenant code: the process gets only an allowlisted environment
(`flpg.bundle.process.app_environment`); its protocol pipe is read as bytes in lines of
at most `protocol.LINE_LIMIT` bytes, and a line that is not a protocol answer (binary,
cut, garbage the app wrote there) is logged and skipped; any exit code or signal is
named (`flpg.bundle.process.describe_exit`); when the process ends, whatever it left in
its process group is killed, so no leftover holds its pipes open.

With `--app-user USER` (`Launch.app_user`) the processes run as USER
(`flpg.bundle.appuser`): the worker extracts each run's bundle into its cache before
starting the process (on a short connection of its own), which then only reads it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flpg.bundle.appuser import AppSandbox, AppSeat, AppUser
from flpg.bundle.process import app_environment, describe_exit
from flpg.node.logins import RunLogins
from flpg.node.protocol import (
    LINE_LIMIT,
    Done,
    ProtocolError,
    Settled,
    Started,
    decode_report,
    encode_batch,
)
from flpg.settings import DATABASE_URL_ENV
from flpg.store import apps as store_apps
from flpg.store import runs as store_runs
from flpg.store.db import connect
from flpg.store.messages import MessageRow

log = logging.getLogger("flpg.node")

OnStarted = Callable[["AppProcess", list[int]], None]
"""Called (on the process's reader thread) with messages whose handlers started."""
OnDone = Callable[["AppProcess", list[tuple[MessageRow, Settled]]], None]
"""Called (on the process's reader thread) with the messages one answer line settled."""
OnExit = Callable[["AppProcess", str, list[MessageRow]], None]
"""Called once the process ended, with how (`describe_exit`) and the messages it held."""


@dataclass(frozen=True)
class Launch:
    """How a node worker starts its runs' ClientApp processes, and whom they report to."""

    url: str
    worker: str
    cache_dir: Path
    concurrency: int
    """Handlers a process runs at once, at most."""
    grace: float
    """Seconds a closed process may take to finish its started handlers."""
    on_started: OnStarted
    on_done: OnDone
    on_exit: OnExit
    logins: RunLogins | None = None
    """The run roles its processes connect as; None: they connect with `url`."""
    app_user: AppUser | None = None
    """The OS user its processes run as (`--app-user`); None: the worker's."""

    def run_url(self, run_id: int) -> str:
        """The URL run `run_id`'s processes connect with."""
        return self.url if self.logins is None else self.logins.url(run_id)

    def argv(self, run_id: int, seat: AppSeat | None = None) -> list[str]:
        """The command line of run `run_id`'s process (in `seat`: it reads the cache
        through its descriptor, and only reads it)."""
        cache = [f"--cache-dir={self.cache_dir}"]
        if seat is not None:
            cache = [f"--cache-dir={seat.cache_dir}", "--cache-read-only"]
        return [
            sys.executable if seat is None else seat.python,
            "-m",
            "flpg.node.appprocess",
            f"--run={run_id}",
            f"--worker={self.worker}",
            *cache,
            f"--concurrency={self.concurrency}",
            f"--grace={self.grace}",
        ]

    def seat(self, sandbox: AppSandbox, run_id: int, url: str) -> AppSeat:
        """Run `run_id`'s bundle extracted by the worker and a home for its process."""
        with connect(self.url, application_name="flpg-node-bundles") as conn:
            app_hash = store_runs.get(conn, run_id).app_hash
            return sandbox.seat(
                f"clientapp-{run_id}", app_hash, lambda: store_apps.get(conn, app_hash)[1], url
            )


class AppProcess:
    """One run's ClientApp process: hand it batches of claimed messages; the launch's
    `on_done` and `on_exit` report what became of them."""

    def __init__(self, run_id: int, launch: Launch, sandbox: AppSandbox | None = None) -> None:
        self.run_id = run_id
        url = launch.run_url(run_id)  # before the process: a refused role starts none
        self.seat = None if sandbox is None else launch.seat(sandbox, run_id, url)
        env = app_environment({DATABASE_URL_ENV: url})
        confined: dict[str, Any] = {}
        if self.seat is not None:
            env = self.seat.environment(app_environment({DATABASE_URL_ENV: self.seat.url}))
            confined = self.seat.popen_kwargs()
        try:
            self.popen = subprocess.Popen(
                launch.argv(run_id, self.seat),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=env,
                # Its own session: a signal meant for the node worker (Ctrl-C, SIGTERM
                # to the group) must not kill the run's app mid-message; the worker
                # decides. If the worker dies, the process sees end of input and exits.
                start_new_session=True,
                **confined,
            )
        except BaseException:
            if self.seat is not None:
                self.seat.close()
            raise
        self._launch = launch
        self._lock = threading.Lock()
        self._pending: dict[int, MessageRow] = {}
        self._ended: str | None = None
        self.used = False
        """Set once it was handed a message."""
        self.closed = False
        """Set when the worker closed it (its run ended, or the worker stops)."""
        self.overdue: set[int] = set()
        """Messages whose TTL ran out while the process held them (it was killed)."""
        self._lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        threading.Thread(target=self._read, name=f"clientapp-{run_id}-reader", daemon=True).start()
        threading.Thread(target=self._write, name=f"clientapp-{run_id}-writer", daemon=True).start()
        threading.Thread(target=self._wait, name=f"clientapp-{run_id}-waiter", daemon=True).start()
        log.info("run %d: started ClientApp process %d", run_id, self.popen.pid)

    @property
    def ended(self) -> bool:
        return self._ended is not None

    @property
    def how_ended(self) -> str:
        """How the process ended (`describe_exit`), or "" while it runs."""
        return self._ended or ""

    def holds(self, message_id: int) -> bool:
        """Whether the message was handed to this process and not answered yet."""
        with self._lock:
            return message_id in self._pending

    def submit(self, rows: list[MessageRow], node_configs: dict[int, dict[str, Any]]) -> bool:
        """Start claimed messages in the process, in one protocol line (written by
        the process's writer thread, so a process that does not read never blocks the
        caller). False (and nothing taken) if the process already ended."""
        line = encode_batch(rows, node_configs) + "\n"
        with self._lock:
            if self._ended is not None:
                return False
            self.used = True
            for row in rows:
                self._pending[row.id] = row
            self._lines.put(line)
        return True

    def _write(self) -> None:
        """Write queued protocol lines in order; close stdin at the end marker."""
        stdin = self.popen.stdin
        assert stdin is not None
        while True:
            line = self._lines.get()
            try:
                if line is None:
                    stdin.close()
                    return
                stdin.write(line.encode())
                stdin.flush()
            except (OSError, ValueError):
                pass  # the process is gone: the reader reports its messages at end of output

    def _answers(self) -> Iterator[bytes]:
        """The protocol lines the process writes, until its end of output; a longer
        line than LINE_LIMIT bytes is skipped (read in bounded pieces)."""
        out = self.popen.stdout
        assert out is not None
        while line := out.readline(LINE_LIMIT):
            if line.endswith(b"\n"):
                yield line
                continue
            skipped = len(line)
            while (more := out.readline(LINE_LIMIT)) and not more.endswith(b"\n"):
                skipped += len(more)
            if more or skipped > LINE_LIMIT:  # not the process's last words
                log.warning("run %d: skipped a line of %d+ bytes", self.run_id, skipped)
            else:
                yield line

    def _wait(self) -> None:
        """Once the process ended, kill what it left in its group (and holding its
        pipes), so its end of output comes."""
        self.popen.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        if self.seat is not None:
            self.seat.close()  # its home goes; its bundle may be evicted

    def _read(self) -> None:
        """Report each answer line (about messages this process holds only: app code
        could lie); once output ends, report the process's end."""
        for line in self._answers():
            try:
                report = decode_report(line)
            except ProtocolError:
                log.warning("run %d: ClientApp process sent %r", self.run_id, line[:200])
                continue
            if isinstance(report, Started):
                with self._lock:
                    started = [i for i in report.ids if i in self._pending]
                if started:
                    self._launch.on_started(self, started)
            elif isinstance(report, Done):
                with self._lock:
                    settled = [
                        (row, s)
                        for s in report.settled
                        if (row := self._pending.pop(s.id, None)) is not None
                    ]
                if settled:
                    self._launch.on_done(self, settled)
        how = describe_exit(self.popen.wait())
        with self._lock:
            self._ended = how
            held, self._pending = list(self._pending.values()), {}
            self._lines.put(None)  # ends the writer thread
        level = logging.INFO if how == "exited with code 0" else logging.WARNING
        log.log(level, "run %d: ClientApp process %d %s", self.run_id, self.popen.pid, how)
        self._launch.on_exit(self, how, held)

    def close(self) -> None:
        """Ask the process to finish what it holds and exit (does not wait): end of
        input once the lines submitted before are written."""
        with self._lock:
            if not self.closed:
                self.closed = True
                self._lines.put(None)

    def kill(self, overdue: Iterable[int] = ()) -> None:
        """Kill the process; `overdue` names the messages whose TTL ran out in it."""
        self.overdue.update(overdue)
        if self.popen.poll() is None:
            self.popen.kill()


class AppHost:
    """The live ClientApp process of each run this node worker has served."""

    def __init__(self, launch: Launch) -> None:
        """With `launch.app_user`, ConfigError if the processes cannot run as that
        user (`flpg.bundle.appuser.AppSandbox`)."""
        self._launch = launch
        self._sandbox = None
        if launch.app_user is not None:
            self._sandbox = AppSandbox(launch.app_user, launch.cache_dir, launch.url, "node")
        self._lock = threading.Lock()
        self._procs: dict[int, AppProcess] = {}
        self._retired: list[AppProcess] = []
        """Closed processes that may still be finishing their last messages."""

    def process(self, run_id: int) -> AppProcess:
        """The run's process, started if it has none or its last one ended."""
        with self._lock:
            proc = self._procs.get(run_id)
            if proc is None or proc.ended:
                proc = AppProcess(run_id, self._launch, self._sandbox)
                self._procs[run_id] = proc
            return proc

    def has(self, run_id: int) -> bool:
        """Whether the run has a live process here."""
        with self._lock:
            proc = self._procs.get(run_id)
            return proc is not None and not proc.ended

    def waiting(self) -> int:
        """Live processes that were never handed a message (started ahead)."""
        with self._lock:
            return sum(1 for p in self._procs.values() if not p.used and not p.ended)

    def run_ids(self) -> list[int]:
        with self._lock:
            return sorted(self._procs)

    def kill_overdue(self, rows: list[MessageRow]) -> None:
        """Kill each process (retired ones included) that runs a handler for one of
        `rows`, whose TTL ran out: that frees its slots."""
        with self._lock:
            procs = [*self._procs.values(), *self._retired]
        for proc in procs:
            ids = sorted(row.id for row in rows if row.run_id == proc.run_id and proc.holds(row.id))
            if ids and not proc.ended:
                log.warning(
                    "run %d: ClientApp still busy with message(s) %s past their TTL; "
                    "killing the run's ClientApp process",
                    proc.run_id,
                    ", ".join(map(str, ids)),
                )
                proc.kill(ids)

    def retire(self, run_ids: list[int]) -> None:
        """Close the processes of runs that ended (they exit once idle)."""
        with self._lock:
            procs = [self._procs.pop(r) for r in run_ids if r in self._procs]
            self._retired = [p for p in self._retired if p.popen.poll() is None] + procs
        for proc in procs:
            log.info("run %d ended: closing its ClientApp process", proc.run_id)
            proc.close()
        if self._launch.logins is not None:
            self._launch.logins.drop(run_ids)

    def close_all(self, timeout: float) -> int:
        """Close every process (retired ones included); kill those still alive after
        `timeout` seconds. Returns how many had to be killed."""
        with self._lock:
            procs, self._procs = list(self._procs.values()), {}
            procs += [p for p in self._retired if p.popen.poll() is None]
            self._retired = []
        for proc in procs:
            proc.close()
        deadline = time.monotonic() + timeout
        killed = 0
        for proc in procs:
            try:
                proc.popen.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                killed += 1
                proc.kill()
                proc.popen.wait()
        if self._launch.logins is not None:
            self._launch.logins.close()
        if self._sandbox is not None:
            self._sandbox.close()
        return killed
