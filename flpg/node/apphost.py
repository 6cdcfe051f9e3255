"""The ClientApp processes of a node worker: one per run, started on the run's first
message and kept between rounds until the run ends.

A run's app code runs in its own OS process (`flpg.node.appprocess`), so one run's
ClientApp cannot touch another run's memory, modules or context state, and a crash
(segfault, `os._exit`, OOM kill) takes down only that run's process. Messages it
held get an error reply; the run's next message starts a fresh process (with fresh
context state). A handler that outlives its message's TTL gets its process killed,
so a hanging ClientApp frees the worker's slot instead of holding it for ever.

Messages go to a process in batches, one protocol line each, and come back as one
line per batch of replies written (see `flpg.node.appprocess`); the node worker
learns of them through callbacks on the process's reader thread.

App code is tenant code: the process gets only an allowlisted environment
(`flpg.bundle.process.app_environment`); its protocol pipe is read as bytes in lines of
at most PROTOCOL_LINE_LIMIT bytes, and a line that is not a protocol answer (binary,
cut, garbage the app wrote there) is logged and skipped; any exit code or signal is
named (`flpg.bundle.process.describe_exit`); when the process ends, whatever it left in
its process group is killed, so no leftover holds its pipes open.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from flpg.bundle.process import app_environment, describe_exit
from flpg.settings import DATABASE_URL_ENV
from flpg.store.messages import MessageRow

log = logging.getLogger("flpg.node")


@dataclass(frozen=True)
class Outcome:
    """What the ClientApp process did with one message."""

    outcome: str
    """"replied", "error" (an error reply was written), "lease-lost" or "expired"
    (nothing was written)."""
    detail: str
    seconds: float = 0.0
    """From the message's arrival in the process to its reply's commit."""


OnStarted = Callable[["AppProcess", list[int]], None]
"""Called (on the process's reader thread) with messages whose handlers started."""
OnDone = Callable[["AppProcess", list[tuple[MessageRow, Outcome]]], None]
"""Called (on the process's reader thread) with the messages one answer line settled."""
OnExit = Callable[["AppProcess", str, list[MessageRow]], None]
"""Called once the process ended, with how (`describe_exit`) and the messages it held."""


PROTOCOL_LINE_LIMIT = 4 << 20
"""Bytes of one answer line read from a ClientApp process, at most (an honest line
answers at most 256 messages, each with a detail of about REASON_LIMIT characters
at most: well under 1 MiB)."""


def encode_batch(rows: list[MessageRow], node_configs: dict[int, dict[str, Any]]) -> str:
    """One protocol line starting `rows` (see `flpg.node.appprocess`)."""
    configs = {str(r.dst_node_id): node_configs.get(r.dst_node_id or 0, {}) for r in rows}
    return json.dumps({"messages": [_row_fields(r) for r in rows], "node_configs": configs})


def _row_fields(row: MessageRow) -> dict[str, Any]:
    return {f.name: getattr(row, f.name) for f in fields(row)}


class AppProcess:
    """One run's ClientApp process: hand it batches of claimed messages; `on_done` and
    `on_exit` report what became of them."""

    def __init__(
        self,
        url: str,
        run_id: int,
        worker: str,
        cache_dir: Path,
        concurrency: int,
        grace: float,
        on_started: OnStarted,
        on_done: OnDone,
        on_exit: OnExit,
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
            env=app_environment({DATABASE_URL_ENV: url}),
            # Its own session: a signal meant for the node worker (Ctrl-C, SIGTERM to
            # the group) must not kill the run's app mid-message; the worker decides.
            # If the worker dies, the process sees end of input and exits.
            start_new_session=True,
        )
        self._on_started = on_started
        self._on_done = on_done
        self._on_exit = on_exit
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
        line than PROTOCOL_LINE_LIMIT bytes is skipped (read in bounded pieces)."""
        out = self.popen.stdout
        assert out is not None
        while line := out.readline(PROTOCOL_LINE_LIMIT):
            if line.endswith(b"\n"):
                yield line
                continue
            skipped = len(line)
            while (more := out.readline(PROTOCOL_LINE_LIMIT)) and not more.endswith(b"\n"):
                skipped += len(more)
            if more or skipped > PROTOCOL_LINE_LIMIT:  # not the process's last words
                log.warning("run %d: skipped a line of %d+ bytes", self.run_id, skipped)
            else:
                yield line

    def _wait(self) -> None:
        """Once the process ended, kill what it left in its group (and holding its
        pipes), so its end of output comes."""
        self.popen.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)

    def _read(self) -> None:
        for line in self._answers():
            try:
                answer = json.loads(line)
                started = [int(i) for i in answer.get("started", [])]
                done = [
                    (
                        int(a["id"]),
                        Outcome(str(a["outcome"]), str(a["detail"]), float(a["seconds"])),
                    )
                    for a in answer.get("done", [])
                ]
            except (ValueError, KeyError, TypeError, AttributeError):
                log.warning("run %d: ClientApp process sent %r", self.run_id, line[:200])
                continue
            settled: list[tuple[MessageRow, Outcome]] = []
            with self._lock:  # only messages this process holds (app code could lie)
                started = [i for i in started if i in self._pending]
                for message_id, outcome in done:
                    row = self._pending.pop(message_id, None)
                    if row is not None:
                        settled.append((row, outcome))
            if started:
                self._on_started(self, started)
            if settled:
                self._on_done(self, settled)
        how = describe_exit(self.popen.wait())
        with self._lock:
            self._ended = how
            held, self._pending = list(self._pending.values()), {}
            self._lines.put(None)  # ends the writer thread
        level = logging.INFO if how == "exited with code 0" else logging.WARNING
        log.log(level, "run %d: ClientApp process %d %s", self.run_id, self.popen.pid, how)
        self._on_exit(self, how, held)

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

    def __init__(
        self,
        url: str,
        worker: str,
        cache_dir: Path,
        concurrency: int,
        grace: float,
        on_started: OnStarted,
        on_done: OnDone,
        on_exit: OnExit,
    ) -> None:
        self._start = (url, worker, cache_dir, concurrency, grace)
        self._on_started = on_started
        self._on_done = on_done
        self._on_exit = on_exit
        self._lock = threading.Lock()
        self._procs: dict[int, AppProcess] = {}
        self._retired: list[AppProcess] = []
        """Closed processes that may still be finishing their last messages."""

    def process(self, run_id: int) -> AppProcess:
        """The run's process, started if it has none or its last one ended."""
        with self._lock:
            proc = self._procs.get(run_id)
            if proc is None or proc.ended:
                url, worker, cache_dir, concurrency, grace = self._start
                proc = AppProcess(
                    url,
                    run_id,
                    worker,
                    cache_dir,
                    concurrency,
                    grace,
                    self._on_started,
                    self._on_done,
                    self._on_exit,
                )
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

    def retire(self, run_ids: list[int]) -> None:
        """Close the processes of runs that ended (they exit once idle)."""
        with self._lock:
            procs = [self._procs.pop(r) for r in run_ids if r in self._procs]
            self._retired = [p for p in self._retired if p.popen.poll() is None] + procs
        for proc in procs:
            log.info("run %d ended: closing its ClientApp process", proc.run_id)
            proc.close()

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
        return killed
