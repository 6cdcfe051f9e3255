"""The message handling of a ClientApp process (`flpg.node.appprocess`).

`Server` queues the batches of claimed messages the node worker writes on the
process's stdin, loads their payloads many at a time with one query (`MAX_GROUP`
messages or `GROUP_BYTES` at most), runs their handlers on `concurrency` threads
(never more at once), and writes the replies (or error replies) under the node
worker's claim, many at a time (`flpg.node.replies`). On the protocol pipe it reports
`Started` before a handler runs and `Done` for each write.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, Any

from flpg import bus
from flpg.app.message import Message
from flpg.node.protocol import Done, Outcome, Report, Settled, Started, decode_batch, encode_report
from flpg.node.replies import Answer, Written, app_error, describe, write_replies
from flpg.node.runapp import RunApp
from flpg.store.db import TRANSIENT, ConnectionPool
from flpg.store.messages import MessageRow

log = logging.getLogger("flpg.clientapp")

LINGER = 0.002
"""Seconds the writer waits for more handlers to finish before writing a batch, while
some still run: tiny messages then share one write instead of one each."""
MAX_BATCH = 256
"""Replies written in one go at most."""
MAX_GROUP = 256
"""Messages whose payloads are loaded with one query at most."""
GROUP_BYTES = 64 << 20
"""Payload bytes a group loads at most (one message at least): small messages load
hundreds at a time, big models one or a few."""


@dataclass(frozen=True)
class Skipped:
    """A message this process answers without writing anything."""

    row: MessageRow
    outcome: Outcome
    detail: str


@dataclass(frozen=True)
class Finished:
    """A message ready for the writer; `began` is when its handler started (monotonic)."""

    item: Answer | Skipped
    began: float | None


class Server:
    """Queues received messages, loads their payloads a group at a time, runs their
    handlers on `concurrency` threads, and writes the replies in batches."""

    def __init__(
        self, pool: ConnectionPool, app: RunApp, worker: str, out: IO[str], concurrency: int
    ) -> None:
        self.pool = pool
        self.app = app
        self.worker = worker
        self.concurrency = max(1, concurrency)
        self._out = out
        self._out_lock = threading.Lock()
        self._starts: list[int] = []
        """Messages whose handler starts, not yet announced."""
        self._starts_lock = threading.Lock()
        self._handlers = ThreadPoolExecutor(
            max_workers=self.concurrency, thread_name_prefix="clientapp-handler"
        )
        self._cond = threading.Condition()
        self._queue: deque[tuple[MessageRow, dict[str, Any]]] = deque()
        """Received, not taken for loading yet (with the node's config)."""
        self._handling = 0
        """Messages taken for loading whose handler has not finished yet."""
        self._finished: list[Finished] = []
        self._inflight = 0
        """Messages received and not answered yet."""
        self._bytes_per_message = -1
        """Payload bytes per message in the last group loaded (-1: none loaded yet)."""
        threading.Thread(target=self._loader, name="clientapp-loader", daemon=True).start()
        threading.Thread(target=self._writer, name="clientapp-writer", daemon=True).start()

    def serve(self, requests: IO[str], grace: float) -> None:
        """Queue the batches of each line until end of input; then answer the messages
        not started yet as released and wait up to `grace` s for the others."""
        for line in requests:
            batch = decode_batch(line)
            with self._cond:
                self._inflight += len(batch.messages)
                self._queue.extend((r, batch.node_config(r)) for r in batch.messages)
                self._cond.notify_all()
        with self._cond:
            dropped, self._queue = list(self._queue), deque()
            for row, _ in dropped:
                skipped = Skipped(
                    row, Outcome.RELEASED, "not started before the process was closed"
                )
                self._finished.append(Finished(skipped, None))
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._inflight == 0, timeout=grace)

    def _group_size(self) -> int:
        """Messages to load at once: many small ones, but about GROUP_BYTES at most
        (judged by the last group; the first is `concurrency` messages)."""
        if self._bytes_per_message < 0:
            return self.concurrency
        return max(1, min(MAX_GROUP, GROUP_BYTES // max(1, self._bytes_per_message)))

    def _loader(self) -> None:
        """Take queued messages a group at a time while a handler thread is free (or
        about to be), load their payloads with one query, hand them to handlers."""
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._queue) and self._handling < self.concurrency)
                group = [
                    self._queue.popleft() for _ in range(min(len(self._queue), self._group_size()))
                ]
                self._handling += len(group)
            untouched = {row.id: row for row, _ in group}
            try:
                self._start(group, untouched)
            except Exception as exc:  # a bug here must not leave messages unanswered
                log.exception("could not start %d message(s)", len(untouched))
                for row in untouched.values():
                    self._finish(Answer(row, error=app_error(describe(exc))), None, handled=True)

    def _start(
        self, group: list[tuple[MessageRow, dict[str, Any]]], untouched: dict[int, MessageRow]
    ) -> None:
        """Load the group and hand each message to a handler (or answer it); removes
        each message from `untouched` once passed on."""
        now = time.time()
        live: list[tuple[MessageRow, dict[str, Any]]] = []
        for row, config in group:
            if row.created_at + row.ttl_seconds <= now:
                detail = f"its TTL of {row.ttl_seconds:g} s passed before its handler started"
                del untouched[row.id]
                self._finish(Skipped(row, Outcome.EXPIRED, detail), None, handled=True)
            else:
                live.append((row, config))
        if not live:
            return
        if self.app.app is None:
            error = app_error(f"the run's ClientApp did not load: {self.app.load_error}")
            for row, _ in live:
                del untouched[row.id]
                self._finish(Answer(row, error=error), None, handled=True)
            return
        configs = {row.id: config for row, config in live}
        rows = [row for row, _ in live]
        for row in rows:
            del untouched[row.id]  # `_load` answers those it cannot load
        loaded = self._load(rows)
        for row, message in loaded:
            self._handlers.submit(self._handle, row, message, configs[row.id])
        if loaded:
            nbytes = sum(
                a.nbytes
                for _, message in loaded
                for record in message.content.array_records.values()
                for a in record.values()
            )
            self._bytes_per_message = nbytes // len(loaded)

    def _load(self, rows: list[MessageRow]) -> list[tuple[MessageRow, Message]]:
        """The rows' messages with their payloads (one query for all); a row that
        cannot be loaded is answered here (an error reply, or nothing if the database
        went away: its claim lapses and it is retried)."""
        try:
            with self.pool.connection() as conn:
                messages = list(zip(rows, bus.load(conn, rows), strict=True))
                if self.app.bases is not None:
                    self.app.bases.keep(conn, messages)
                return messages
        except TRANSIENT as exc:
            for row in rows:
                self._finish(Skipped(row, Outcome.LEASE_LOST, describe(exc)), None, handled=True)
            return []
        except Exception:
            pass  # some message cannot be loaded (e.g. a corrupt payload): one at a time
        loaded: list[tuple[MessageRow, Message]] = []
        for row in rows:
            try:
                with self.pool.connection() as conn:
                    loaded.append((row, bus.load(conn, [row])[0]))
            except TRANSIENT as exc:
                self._finish(Skipped(row, Outcome.LEASE_LOST, describe(exc)), None, handled=True)
            except Exception as exc:
                self._finish(Answer(row, error=app_error(describe(exc))), None, handled=True)
        return loaded

    def _handle(self, row: MessageRow, message: Message, node_config: dict[str, Any]) -> None:
        began = time.monotonic()
        assert row.dst_node_id is not None
        # Before any app code runs: should the process die now, the node worker
        # answers this message with an error, and hands unstarted ones to a new one.
        self._announce(row.id)
        bases = None if self.app.bases is None else self.app.bases.take(row.id)
        try:
            assert self.app.app is not None
            reply = self.app.app(message, self.app.context(row.dst_node_id, node_config))
            if reply.metadata.reply_to_message_id != str(row.id):
                raise TypeError(
                    "the handler's reply does not answer this message; "
                    "build it with Message(content, reply_to=msg)"
                )
            answer = Answer(row, reply=reply, bases=bases)
        except BaseException as exc:  # any escape from app code is the app's error
            answer = Answer(row, error=app_error(describe(exc)))
        self._finish(answer, began, handled=True)

    def _finish(self, item: Answer | Skipped, began: float | None, *, handled: bool) -> None:
        with self._cond:
            self._finished.append(Finished(item, began))
            if handled:
                self._handling -= 1
            self._cond.notify_all()

    def _writer(self) -> None:
        """Write finished messages in batches and answer each batch on one line."""
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._finished))
                deadline = time.monotonic() + LINGER
                while self._handling > 0 and len(self._finished) < MAX_BATCH:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                batch, self._finished = self._finished[:MAX_BATCH], self._finished[MAX_BATCH:]
            done = self._write([f.item for f in batch])
            now = time.monotonic()
            settled = [
                Settled(
                    w.message_id,
                    w.outcome,
                    w.detail or f"{now - (f.began or now):.3f} s",
                    round(now - f.began, 6) if f.began is not None else 0.0,
                )
                for w, f in zip(done, batch, strict=True)
            ]
            with self._out_lock:
                self._report(Done(settled))
            with self._cond:
                self._inflight -= len(batch)
                self._cond.notify_all()

    def _write(self, items: list[Answer | Skipped]) -> list[Written]:
        answers = [i for i in items if isinstance(i, Answer)]
        try:
            with self.pool.connection() as conn:
                written = write_replies(
                    conn, self.worker, self.app.run_id, answers, encoder=self.app.reply_encoder
                )
        except Exception as exc:  # the database went away: the claims lapse and are retried
            written = [Written(a.row.id, Outcome.LEASE_LOST, describe(exc)) for a in answers]
        by_id = {w.message_id: w for w in written}
        return [
            Written(i.row.id, i.outcome, i.detail) if isinstance(i, Skipped) else by_id[i.row.id]
            for i in items
        ]

    def _announce(self, message_id: int) -> None:
        """Tell the worker a handler starts; returns once that was written. Handlers
        starting together share one line."""
        with self._starts_lock:
            self._starts.append(message_id)
        with self._out_lock:
            with self._starts_lock:
                ids, self._starts = self._starts, []
            if ids:  # else a handler that held the lock before wrote ours too
                self._report(Started(ids))

    def _report(self, report: Report) -> None:
        """Write one protocol line (call with `_out_lock` held)."""
        try:
            self._out.write(encode_report(report) + "\n")
            self._out.flush()
        except (OSError, ValueError):  # the node worker is gone
            pass
