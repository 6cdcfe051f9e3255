"""The ClientApp processes of a node worker: one per run, started on the run's first
message and kept between rounds until the run ends.

A run's app code runs in its own OS process (`flpg.node.appprocess`), so one run's
ClientApp cannot touch another run's memory, modules or context state, and a crash
(segfault, `os._exit`, OOM kill) takes down only that run's process. Messages it
held get an error reply; the run's next message starts a fresh process (with fresh
context state). A handler that outlives its message's TTL gets its process killed,
so a hanging ClientApp frees the worker's slot instead of holding it for ever.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from flpg.settings import DATABASE_URL_ENV
from flpg.store.messages import MessageRow

log = logging.getLogger("flpg.node")


class AppProcessDied(Exception):
    """The run's ClientApp process ended while it held the message."""

    def __init__(self, run_id: int, how: str) -> None:
        super().__init__(f"the ClientApp process of run {run_id} {how}")
        self.how = how


@dataclass(frozen=True)
class Outcome:
    """What the ClientApp process did with one message."""

    outcome: str
    """"replied", "error" (an error reply was written) or "lease-lost"."""
    detail: str


def describe_exit(returncode: int) -> str:
    """`exited with code 3` or `was killed by SIGKILL`."""
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


class AppProcess:
    """One run's ClientApp process: send it claimed messages, get their outcomes."""

    def __init__(
        self, url: str, run_id: int, worker: str, cache_dir: Path, concurrency: int, grace: float
    ) -> None:
        self.run_id = run_id
        argv = [
            sys.executable,
            "-m",
            "flpg.node.appprocess",
            f"--run={run_id}",
            f"--worker={worker}",
            f"--cache-dir={cache_dir}",
            f"--concurrency={concurrency}",
            f"--grace={grace}",
        ]
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, DATABASE_URL_ENV: url},
            text=True,
            bufsize=1,
            # Its own session: a signal meant for the node worker (Ctrl-C, SIGTERM to
            # the group) must not kill the run's app mid-message; the worker decides.
            # If the worker dies, the process sees end of input and exits.
            start_new_session=True,
        )
        self._lock = threading.Lock()
        self._pending: dict[int, Future[Outcome]] = {}
        self._ended: str | None = None
        self.closed = False
        """Set when the worker closed it (its run ended, or the worker stops)."""
        threading.Thread(target=self._read, name=f"clientapp-{run_id}-reader", daemon=True).start()
        log.info("run %d: started ClientApp process %d", run_id, self.popen.pid)

    @property
    def ended(self) -> bool:
        return self._ended is not None

    def submit(self, row: MessageRow, node_config: dict[str, Any]) -> Future[Outcome]:
        """Hand a claimed message to the process; the future fails with AppProcessDied."""
        future: Future[Outcome] = Future()
        line = json.dumps({"message": asdict(row), "node_config": node_config}) + "\n"
        with self._lock:
            if self._ended is not None:
                future.set_exception(AppProcessDied(self.run_id, self._ended))
                return future
            self._pending[row.id] = future
            assert self.popen.stdin is not None
            try:
                self.popen.stdin.write(line)
                self.popen.stdin.flush()
            except (OSError, ValueError):
                pass  # the process is gone: the reader fails the future at end of output
        return future

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            try:
                answer = json.loads(line)
                message_id = int(answer["id"])
                outcome = Outcome(str(answer["outcome"]), str(answer["detail"]))
            except (ValueError, KeyError, TypeError):
                log.warning("run %d: ClientApp process sent %r", self.run_id, line[:200])
                continue
            with self._lock:
                future = self._pending.pop(message_id, None)
            if future is not None:
                future.set_result(outcome)
        how = describe_exit(self.popen.wait())
        with self._lock:
            self._ended = how
            pending, self._pending = self._pending, {}
        for future in pending.values():
            future.set_exception(AppProcessDied(self.run_id, how))
        level = logging.INFO if how == "exited with code 0" else logging.WARNING
        log.log(level, "run %d: ClientApp process %d %s", self.run_id, self.popen.pid, how)

    def close(self) -> None:
        """Ask the process to finish what it holds and exit (does not wait)."""
        self.closed = True
        with self._lock, contextlib.suppress(OSError, ValueError):
            assert self.popen.stdin is not None
            self.popen.stdin.close()

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()


class AppHost:
    """The live ClientApp process of each run this node worker has served."""

    def __init__(
        self, url: str, worker: str, cache_dir: Path, concurrency: int, grace: float
    ) -> None:
        self._start = (url, worker, cache_dir, concurrency, grace)
        self._lock = threading.Lock()
        self._procs: dict[int, AppProcess] = {}

    def process(self, run_id: int) -> AppProcess:
        """The run's process, started if it has none or its last one ended."""
        with self._lock:
            proc = self._procs.get(run_id)
            if proc is None or proc.ended:
                url, worker, cache_dir, concurrency, grace = self._start
                proc = AppProcess(url, run_id, worker, cache_dir, concurrency, grace)
                self._procs[run_id] = proc
            return proc

    def run_ids(self) -> list[int]:
        with self._lock:
            return sorted(self._procs)

    def retire(self, run_ids: list[int]) -> None:
        """Close the processes of runs that ended (they exit once idle)."""
        with self._lock:
            procs = [self._procs.pop(r) for r in run_ids if r in self._procs]
        for proc in procs:
            log.info("run %d ended: closing its ClientApp process", proc.run_id)
            proc.close()

    def close_all(self, timeout: float) -> None:
        """Close every process; kill those still alive after `timeout` seconds."""
        with self._lock:
            procs, self._procs = list(self._procs.values()), {}
        for proc in procs:
            proc.close()
        deadline = time.monotonic() + timeout
        for proc in procs:
            try:
                proc.popen.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.popen.wait()
