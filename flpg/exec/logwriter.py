"""Streams ServerApp output into `run_logs`, batched, from a background thread.

App output is untrusted, so every step is bounded and nothing in it can cost
another line:
- Pipes are read in pieces of at most READ_SIZE bytes (never a whole line at once).
  Lines end at `\\n`, `\\r\\n` or `\\r` (as in text mode). A line keeps at most its first
  KEEP_BYTES bytes while it is read, and is stored as at most LINE_LIMIT characters,
  ending then with a note of its full size (`[... line of 52428800 bytes cut]`).
  Bytes that are not UTF-8 become U+FFFD; NUL is stored as `\\x00` (`storable`).
- At most about QUEUE_COST bytes of output wait to be written (a line costs its
  characters plus LINE_COST, so a flood of short lines is bounded too); past that the
  reader threads wait, and so does the app writing to its pipe. Events (the exec's own
  lines) never wait.
- A batch is written one run at a time; if the database refuses a run's lines for a
  reason other than its absence, they are written again one line at a time, so a
  line that still fails loses only itself.

While the database is away the writer retries (lines queue up meanwhile, within the
bound); at close it gives up on what it cannot write and says so.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import threading
from collections import deque
from collections.abc import Iterator
from typing import IO

from flpg.errors import NotFound
from flpg.states import LogStream
from flpg.store import logs as store_logs
from flpg.store.db import TRANSIENT, Connection, Session
from flpg.store.text import LINE_LIMIT

log = logging.getLogger("flpg.exec")

READ_SIZE = 64 << 10
"""Bytes read from a pipe at once, at most."""
KEEP_BYTES = 4 * LINE_LIMIT
"""Bytes of one line kept while it is read (enough for LINE_LIMIT characters)."""
QUEUE_COST = 32 << 20
"""Cost of the lines waiting to be written, at most (readers wait past it)."""
LINE_COST = 100
"""What one queued line costs beyond its characters (its tuple and str objects)."""
BATCH = 500
"""Lines written in one go, at most."""
_FLUSH_EVERY = 0.1
_LINE_END = re.compile(rb"\r\n|\r|\n")


def _text(kept: bytes, size: int) -> str:
    """A line's stored text from its first `kept` bytes (of `size` in all)."""
    text = kept.decode("utf-8", "replace")
    if size <= len(kept) and len(text) <= LINE_LIMIT:
        return text
    note = f" [... line of {size} bytes cut]"
    return text[: LINE_LIMIT - len(note)] + note


def read_lines(pipe: IO[bytes]) -> Iterator[str]:
    """The lines of `pipe` until end of file, each at most LINE_LIMIT characters;
    memory stays bounded whatever the pipe holds. Does not close it."""
    fd = pipe.fileno()
    kept = bytearray()
    size = 0
    after_cr = False  # a `\r` ended the last piece: a `\n` starting the next is its pair
    while chunk := os.read(fd, READ_SIZE):
        start = 1 if after_cr and chunk.startswith(b"\n") else 0
        after_cr = False
        for end in _LINE_END.finditer(chunk, start):
            piece = chunk[start : end.start()]
            kept += piece[: max(0, KEEP_BYTES - len(kept))]
            yield _text(bytes(kept), size + len(piece))
            kept.clear()
            size = 0
            start = end.end()
            after_cr = end.group() == b"\r" and start == len(chunk)
        piece = chunk[start:]
        kept += piece[: max(0, KEEP_BYTES - len(kept))]
        size += len(piece)
    if size:
        yield _text(bytes(kept), size)


def _cost(line: str) -> int:
    return len(line) + LINE_COST


def _append(conn: Connection, *, run_id: int, lines: list[tuple[LogStream, str]]) -> None:
    store_logs.append(conn, run_id, lines)


class LogWriter:
    """Collects `(run_id, stream, line)` from reader threads and writes them in batches."""

    def __init__(self, url: str) -> None:
        self._session = Session(url, application_name="flpg-exec-logs", stop=threading.Event())
        self._cond = threading.Condition()
        self._queue: deque[tuple[int, LogStream, str]] = deque()
        self._queued = 0
        """Cost of the queued lines (`_cost`)."""
        self._writing = 0
        """Lines taken by the writer and not written (or given up) yet."""
        self._closing = False
        self._thread = threading.Thread(target=self._loop, name="flpg-logwriter", daemon=True)
        self._thread.start()

    def put(self, run_id: int, stream: LogStream, line: str) -> None:
        """Queue one line of a run's output (never waits)."""
        with self._cond:
            self._queue.append((run_id, stream, line))
            self._queued += _cost(line)
            self._cond.notify_all()

    def _put_when_room(self, run_id: int, stream: LogStream, line: str) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._queued < QUEUE_COST or self._closing)
        self.put(run_id, stream, line)

    def follow(
        self, run_id: int, stream: LogStream, pipe: IO[bytes], last: list[str]
    ) -> threading.Thread:
        """Start a thread copying `pipe` line by line (see `read_lines`) and closing
        it at its end; `last[0]` keeps the last line read."""

        def copy() -> None:
            try:
                for line in read_lines(pipe):
                    last[0] = line
                    self._put_when_room(run_id, stream, line)
            except Exception:  # a broken pipe costs this run's output, not the exec
                log.exception("run %d: could not read the ServerApp's %s", run_id, stream)
            finally:
                pipe.close()

        thread = threading.Thread(target=copy, name=f"flpg-log-{run_id}-{stream}", daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        """Write everything queued (if the database is there), then stop."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout=5.0)
        if self._thread.is_alive():  # stuck retrying an unreachable database
            self._session.stop.set()
            self._thread.join()

    def flushed(self) -> None:
        """Block until every line queued so far is written (or given up)."""
        with self._cond:
            self._cond.wait_for(lambda: not self._queue and not self._writing)

    def _loop(self) -> None:
        try:
            while True:
                with self._cond:
                    self._cond.wait_for(lambda: bool(self._queue) or self._closing)
                    if not self._queue:
                        return  # closing, and everything was written
                    if len(self._queue) < BATCH and not self._closing:
                        self._cond.wait(_FLUSH_EVERY)  # let more lines join the batch
                    batch = [self._queue.popleft() for _ in range(min(BATCH, len(self._queue)))]
                    self._queued -= sum(_cost(line) for _, _, line in batch)
                    self._writing = len(batch)
                    self._cond.notify_all()
                try:
                    self._write(batch)
                finally:
                    with self._cond:
                        self._writing = 0
                        self._cond.notify_all()
        finally:
            self._session.close()

    def _write(self, batch: list[tuple[int, LogStream, str]]) -> None:
        """Write a batch one run at a time, in order."""
        by_run: dict[int, list[tuple[LogStream, str]]] = {}
        for run_id, stream, line in batch:
            by_run.setdefault(run_id, []).append((stream, line))
        for run_id, lines in by_run.items():
            try:
                self._session.call(functools.partial(_append, run_id=run_id, lines=lines))
            except (*TRANSIENT, NotFound) as exc:  # closing, database away; run deleted
                log.warning(
                    "could not store %d log line(s) of run %d (%s)", len(lines), run_id, exc
                )
            except Exception as exc:
                log.warning(
                    "run %d: %d log line(s) refused together (%s); storing them one by one",
                    run_id,
                    len(lines),
                    exc,
                )
                self._write_one_by_one(run_id, lines)

    def _write_one_by_one(self, run_id: int, lines: list[tuple[LogStream, str]]) -> None:
        lost: list[Exception] = []
        for line in lines:
            try:
                self._session.call(functools.partial(_append, run_id=run_id, lines=[line]))
            except Exception as exc:
                lost.append(exc)
        if lost:
            log.warning(
                "could not store %d log line(s) of run %d (%s)", len(lost), run_id, lost[-1]
            )
