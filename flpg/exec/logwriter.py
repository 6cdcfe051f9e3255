"""Streams ServerApp output into `run_logs`, batched, from a background thread.

While the database is away the writer retries (lines queue up meanwhile); at
close it gives up on what it cannot write and says so.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
from typing import IO

from flpg.db import Connection, Session
from flpg.store import logs as store_logs

log = logging.getLogger("flpg.exec")

_FLUSH_EVERY = 0.1


def _append(conn: Connection, *, run_id: int, lines: list[tuple[str, str]]) -> None:
    store_logs.append(conn, run_id, lines)


class LogWriter:
    """Collects `(run_id, stream, line)` from reader threads and writes them in batches."""

    def __init__(self, url: str) -> None:
        self._session = Session(url, application_name="flpg-exec-logs", stop=threading.Event())
        self._queue: queue.Queue[tuple[int, str, str] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="flpg-logwriter", daemon=True)
        self._thread.start()

    def put(self, run_id: int, stream: str, line: str) -> None:
        """Queue one line of a run's output."""
        self._queue.put((run_id, stream, line))

    def follow(self, run_id: int, stream: str, pipe: IO[str], last: list[str]) -> threading.Thread:
        """Start a thread copying `pipe` line by line; `last[0]` keeps the last line read."""

        def copy() -> None:
            for raw in pipe:
                line = raw.rstrip("\n")
                last[0] = line
                self.put(run_id, stream, line)
            pipe.close()

        thread = threading.Thread(target=copy, name=f"flpg-log-{run_id}-{stream}", daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        """Write everything queued (if the database is there), then stop."""
        self._queue.put(None)
        self._thread.join(timeout=5.0)
        if self._thread.is_alive():  # stuck retrying an unreachable database
            self._session.stop.set()
            self._thread.join()

    def flushed(self) -> None:
        """Block until every line queued so far is written."""
        self._queue.join()

    def _loop(self) -> None:
        try:
            done = False
            while not done:
                batch: dict[int, list[tuple[str, str]]] = {}
                taken = 0
                item = self._queue.get()
                taken += 1
                while True:
                    if item is None:
                        done = True
                    else:
                        batch.setdefault(item[0], []).append((item[1], item[2]))
                    try:
                        item = self._queue.get(timeout=_FLUSH_EVERY if not done else 0.0)
                        taken += 1
                    except queue.Empty:
                        break
                    if sum(len(v) for v in batch.values()) >= 500:
                        if item is None:
                            done = True
                        else:
                            batch.setdefault(item[0], []).append((item[1], item[2]))
                        break
                for run_id, lines in batch.items():
                    try:
                        self._session.call(functools.partial(_append, run_id=run_id, lines=lines))
                    except Exception:
                        log.exception(
                            "could not store %d log line(s) of run %d", len(lines), run_id
                        )
                for _ in range(taken):
                    self._queue.task_done()
        finally:
            self._session.close()
