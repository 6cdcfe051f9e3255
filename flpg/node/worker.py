"""The node worker loop: wait (NOTIFY or poll) -> claim -> hand to the run's ClientApp.

Claims: one statement per batch, fair across runs (`messages_claim`), into a local
queue. A batch fills the worker's room: its `concurrency` handler slots, plus as many
messages as it recently answered in `LOOKAHEAD` seconds (none ahead before its first
answers, so slow handlers are not taken from the node's other workers), and at least
one per node id it serves (virtual nodes); at most `MAX_AHEAD` beyond its slots.

Handover: while only one run has work, its process gets every claimed message in one
protocol line (it loads payloads a group at a time and runs at most `concurrency`
handlers); while several runs have work, free slots go to them in turns. Either way
no more than `concurrency` handlers run at once across runs. A process reports each
handler's start and writes replies in batches (`flpg.node.appprocess`). When it dies,
the messages whose handler had started get an error reply and the others go to the
run's next process. A worker serving several node ids starts a submitted run's
process before its first message arrives (`PRESTART`). Every claimed message keeps
its lease (the heartbeat extends it) until it is answered, handed back or expired.

Connections held: one for claims, one dedicated LISTEN connection and a pool of at
most 2 (heartbeat, error replies for a ClientApp process that died), so 4 in all;
each run's ClientApp process holds at most 2 more while it runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from psycopg_pool import ConnectionPool

from flpg.bundle.appdir import default_cache_dir
from flpg.errors import ConfigError
from flpg.lifecycle import worker_id
from flpg.node.apphost import AppHost, AppProcess, Outcome
from flpg.node.replies import Answer, app_error, write_replies
from flpg.settings import Intervals
from flpg.store import messages as store_messages
from flpg.store import nodes as store_nodes
from flpg.store import runs as store_runs
from flpg.store.db import (
    EXEC_CHANNEL,
    SESSION_OPTIONS,
    STOP_CHECK,
    TRANSIENT,
    Connection,
    Listener,
    Session,
    node_channel,
)
from flpg.store.messages import MessageRow
from flpg.store.migrate import ensure_schema

log = logging.getLogger("flpg.node")

LOOKAHEAD = 0.5
"""Seconds of work (at the recently measured pace) a worker claims beyond its free
handler slots."""
MAX_AHEAD = 1000
"""Messages a worker claims beyond its handler slots at most."""
PRESTART = 2
"""ClientApp processes a worker serving several node ids starts for submitted runs
ahead of their first message, at most, at a time."""


@dataclass(frozen=True)
class NodeSpec:
    """One node id this worker serves."""

    name: str
    node_config: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, Any] = field(default_factory=dict)


def virtual_specs(base: NodeSpec, count: int) -> list[NodeSpec]:
    """`count` node ids named `<name>-<i>`, each with `partition-id = i` and
    `num-partitions = count` on top of `base`'s node config (which may override
    neither) and `base`'s labels."""
    for key in ("partition-id", "num-partitions"):
        if key in base.node_config:
            raise ConfigError(
                f"--node-config sets {key!r}, which --virtual assigns to each node; remove it"
            )
    return [
        NodeSpec(
            name=f"{base.name}-{i}",
            node_config={**base.node_config, "partition-id": i, "num-partitions": count},
            labels=dict(base.labels),
        )
        for i in range(count)
    ]


class NodeWorker:
    """Serves one or more node ids: claims their messages and writes the replies."""

    def __init__(
        self,
        url: str,
        specs: list[NodeSpec],
        *,
        concurrency: int = 4,
        intervals: Intervals | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if not specs:
            raise ValueError("a node worker serves at least one node")
        self.url = url
        self.specs = specs
        self.concurrency = concurrency
        self.intervals = intervals or Intervals.from_env()
        self.cache_dir = cache_dir or default_cache_dir()
        self.worker = worker_id("node")
        self.node_ids: list[int] = []
        self._node_configs: dict[int, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._queued: dict[int, deque[MessageRow]] = {}
        """Claimed messages not started yet, per run, each in claim order."""
        self._turns: dict[int, float] = {}
        """Run id -> when it last had messages handed over (fair turns between runs)."""
        self._held: dict[int, tuple[MessageRow, AppProcess | None]] = {}
        """Messages handed to a ClientApp process and not answered yet, in the order
        they were handed over: (row, its process once submitted)."""
        self._unsettled: dict[int, int] = {}
        """Run id -> how many of `_held` are its."""
        self._begun: set[int] = set()
        """Those of `_held` whose handler started (the process said so)."""
        self._pace: float | None = None
        """Recent seconds from a handler's start to its reply's commit (moving average)."""
        self._rate: float | None = None
        """Recent messages answered per second (moving average)."""
        self._last_done: float | None = None
        self._next_watch = 0.0
        self._wake_r = self._wake_w = -1
        """A pipe that wakes the main loop (open while `run` runs)."""
        self._stopping = threading.Event()
        self._pool: ConnectionPool | None = None
        self._submitted: set[int] = set()
        """Runs submitted (exec channel) whose ClientApp process may be started early."""

    # ------------------------------------------------------------------ main loop

    def run(self, stop: threading.Event) -> None:
        """Serve until `stop` is set; then finish in-flight messages (up to one lease),
        hand back the rest, and mark the nodes offline."""
        ensure_schema(self.url)  # an unreachable database at start is an error (exit 3)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        session = Session(self.url, application_name="flpg-node", stop=stop)
        with session.conn.transaction():  # one commit, however many node ids
            registered = [
                store_nodes.register(
                    session.conn, name=s.name, node_config=s.node_config, labels=s.labels
                )
                for s in self.specs
            ]
        self.node_ids = [n.id for n in registered]
        self._node_configs = {n.id: dict(n.node_config) for n in registered}
        host = AppHost(
            self.url,
            self.worker,
            self.cache_dir,
            self.concurrency,
            grace=self.intervals.lease,
            on_started=self._on_started,
            on_done=self._on_done,
            on_exit=self._on_exit,
        )
        channels = [node_channel(i) for i in self.node_ids]
        if len(self.node_ids) > 1:  # virtual nodes: start a run's process on its submission
            channels.append(EXEC_CHANNEL)
        listener = Listener(self.url, channels, application_name="flpg-node-listen")
        pool = ConnectionPool(
            self.url,
            min_size=1,
            max_size=2,
            kwargs={
                "autocommit": True,
                "application_name": "flpg-node-work",
                "options": SESSION_OPTIONS,
            },
            check=ConnectionPool.check_connection,  # drop connections a restart broke
            open=True,
        )
        self._pool = pool
        if len(registered) <= 4:
            names = "node " + ", ".join(f"{n.name} (id {n.id})" for n in registered)
        else:
            first, last = registered[0], registered[-1]
            names = (
                f"{len(registered)} nodes {first.name} .. {last.name} (ids {first.id} .. {last.id})"
            )
        log.info("serving %s as %s, concurrency %d", names, self.worker, self.concurrency)
        beat_stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(pool, beat_stop), daemon=True)
        beat.start()
        next_retire = time.monotonic() + self.intervals.heartbeat
        wanted = True  # claim at once: there may be work queued from before
        full = False  # the last claim got all it asked for: there may be more
        last_claim = time.monotonic()
        try:
            while not stop.is_set():
                try:
                    conn = session.conn
                    if time.monotonic() >= next_retire:
                        next_retire = time.monotonic() + self.intervals.heartbeat
                        self._retire(host, store_runs.ended(conn, host.run_ids()))
                    self._watch()
                    self._dispatch(host)
                    room = self._room()
                    due = time.monotonic() - last_claim >= self.intervals.poll
                    if room > 0 and (wanted or full or due):
                        wanted = False
                        claimed = store_messages.claim(
                            conn,
                            worker=self.worker,
                            node_ids=self.node_ids,
                            lease=self.intervals.lease,
                            limit=room,
                        )
                        last_claim = time.monotonic()
                        full = len(claimed) == room
                        self._enqueue(claimed)
                        self._dispatch(host)
                        if full:
                            continue  # more may be queued: claim again once there is room
                    timeout = STOP_CHECK
                    if room > 0:  # else only a freed slot (a wake-up) lets it claim
                        until_poll = last_claim + self.intervals.poll - time.monotonic()
                        timeout = min(timeout, max(0.0, until_poll))
                    wanted = self._wait(listener, timeout, stop) or wanted
                    if self._submitted:
                        self._prestart(conn, host)
                except TRANSIENT as exc:
                    # The database went away: keep in-flight handlers, retry with
                    # backoff. Claims whose outcome was lost lapse and are re-queued.
                    session.reset(exc)
                    wanted = True
        finally:
            with self._lock:
                waiting = sum(len(q) for q in self._queued.values())
                self._queued.clear()  # not handed to a process: handed back below
            log.info(
                "stopping: finishing %d in-flight message(s)%s",
                len(self._held),
                f", handing back {waiting} not started" if waiting else "",
            )
            # Processes answer what they have not started as released and finish the
            # rest; whatever they still hold when they end goes back to the queue.
            self._stopping.set()
            killed = host.close_all(timeout=self.intervals.lease)
            if killed:
                log.warning(
                    "abandoned the handlers of %d ClientApp process(es) still running after "
                    "%.1f s; their messages go back to the queue",
                    killed,
                    self.intervals.lease,
                )
            beat_stop.set()
            try:
                released = store_messages.release(session.conn, worker=self.worker)
                if released:
                    log.info("handed %d claimed message(s) back to the queue", released)
                store_nodes.set_offline(session.conn, self.node_ids)
            except TRANSIENT as exc:
                log.warning(
                    "could not hand back claims or go offline (%s); the link will once "
                    "leases and heartbeats lapse",
                    exc,
                )
            listener.close()
            pool.close()
            session.close()
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_r = self._wake_w = -1
            log.info("stopped")

    def _room(self) -> int:
        """How many more messages to claim, minus what the worker holds: its handler
        slots plus as many as it recently answered in LOOKAHEAD seconds (at least
        `concurrency` per handler time; nothing before its first answers), and at
        least one per node id it serves (each virtual node takes a message at a time),
        at most MAX_AHEAD beyond its slots."""
        with self._lock:
            held = len(self._held) + sum(len(q) for q in self._queued.values())
            pace = self._pace
            rate = self._rate or 0.0
        ahead = 0
        if pace is not None:
            rate = max(rate, self.concurrency / max(pace, 1e-4))
            ahead = int(LOOKAHEAD * rate)
        window = self.concurrency + min(MAX_AHEAD, ahead)
        window = max(window, min(len(self.node_ids), self.concurrency + MAX_AHEAD))
        return window - held

    def _wait(self, listener: Listener, timeout: float, stop: threading.Event) -> bool:
        """Wait up to `timeout` s for a NOTIFY or a wake-up from a ClientApp process;
        True if a node's NOTIFY (or a reconnect of the LISTEN connection) came. Run
        submissions (the exec channel) are collected in `_submitted`."""
        if listener.conn.closed or listener.conn.broken:
            listener.wait(timeout, stop)  # reconnects
            return True
        try:
            ready, _, _ = select.select([listener.fileno(), self._wake_r], [], [], timeout)
        except (OSError, ValueError):
            return True
        if self._wake_r in ready:
            with contextlib.suppress(BlockingIOError):
                while os.read(self._wake_r, 4096):
                    pass
        if listener.fileno() in ready:
            notes = listener.wait(0.0)  # drains
            for note in notes:
                if note.channel == EXEC_CHANNEL:
                    with contextlib.suppress(ValueError):
                        self._submitted.add(int(note.payload))
            # A node's notification, or a reconnect (nothing drained): claim either way.
            return not notes or any(n.channel != EXEC_CHANNEL for n in notes)
        return False

    def _prestart(self, conn: Connection, host: AppHost) -> None:
        """Start the ClientApp processes of newly submitted runs that select some of
        this worker's node ids before their first message arrives, so that the
        process starts while the run's ServerApp does (at most PRESTART of them may
        wait for a first message at a time)."""
        submitted, self._submitted = sorted(self._submitted), set()
        if not submitted or host.waiting() >= PRESTART:
            return
        for run_id in store_runs.starting_on_nodes(conn, submitted, self.node_ids):
            if host.waiting() >= PRESTART:
                break
            if not host.has(run_id):
                log.info("run %d: starting its ClientApp process ahead of its messages", run_id)
                host.process(run_id)

    def _wake(self) -> None:
        if self._wake_w < 0:
            return  # not running
        with contextlib.suppress(OSError):  # full: already woken; closed: stopped
            os.write(self._wake_w, b"x")

    # ------------------------------------------------------------------ dispatch

    def _enqueue(self, rows: list[MessageRow]) -> None:
        with self._lock:
            for row in rows:
                self._queued.setdefault(row.run_id, deque()).append(row)

    def _dispatch(self, host: AppHost) -> None:
        """Hand queued messages to their runs' processes, one protocol line per run.

        Each process runs at most `concurrency` handlers, and the worker keeps the
        sum over runs of min(messages a process holds, concurrency) within
        `concurrency`, so no more than that many handlers run at once across runs.
        While only one run has work, its process gets every queued message (it loads
        them in groups and runs them through its handler threads); otherwise free
        slots go to runs in turns, the run started least recently first.
        """
        now = time.time()
        batches: dict[int, list[MessageRow]] = {}
        with self._lock:
            waiting = [r for r, q in self._queued.items() if q]
            busy = [r for r, n in self._unsettled.items() if n > 0]
            if len(waiting) == 1 and set(busy) <= set(waiting):
                run_id = waiting[0]
                rows = [r for r in self._queued.pop(run_id) if r.created_at + r.ttl_seconds > now]
                if rows:
                    batches[run_id] = rows
                self._turns[run_id] = time.monotonic()
            else:
                used = sum(min(n, self.concurrency) for n in self._unsettled.values())
                free = self.concurrency - used
                while free > 0 and self._queued:
                    run_id = min(self._queued, key=lambda r: self._turns.get(r, 0.0))
                    queue = self._queued[run_id]
                    while free > 0 and queue:
                        row = queue.popleft()
                        if row.created_at + row.ttl_seconds <= now:
                            continue  # expired: the link answers it
                        batches.setdefault(run_id, []).append(row)
                        free -= 1
                        if len(self._queued) > 1:
                            break  # one each, in turns, while several runs wait
                    if not queue:
                        del self._queued[run_id]
                    self._turns[run_id] = time.monotonic()
            for run_id, rows in batches.items():
                for row in rows:
                    self._held[row.id] = (row, None)
                self._unsettled[run_id] = self._unsettled.get(run_id, 0) + len(rows)
        for run_id, rows in batches.items():
            try:
                proc = host.process(run_id)
                if not proc.submit(rows, self._node_configs):
                    proc = host.process(run_id)  # it ended just now: a fresh one
                    if not proc.submit(rows, self._node_configs):
                        raise RuntimeError(f"its process {proc.how_ended} at once")
            except Exception as exc:
                log.exception("run %d: could not start its ClientApp process", run_id)
                reason = f"the ClientApp process of run {run_id} could not be started: {exc}"
                self._answer_errors(run_id, [(row, reason) for row in rows])
                continue
            with self._lock:
                for row in rows:
                    if row.id in self._held:
                        self._held[row.id] = (row, proc)

    def _settle(self, rows: list[MessageRow]) -> None:
        """Forget answered messages (call with the lock held)."""
        for row in rows:
            self._begun.discard(row.id)
            if self._held.pop(row.id, None) is not None:
                left = self._unsettled.get(row.run_id, 0) - 1
                if left > 0:
                    self._unsettled[row.run_id] = left
                else:
                    self._unsettled.pop(row.run_id, None)

    def _retire(self, host: AppHost, ended: list[int]) -> None:
        """Close the processes of ended runs and forget their queued messages (the
        run's end cancelled them)."""
        if not ended:
            return
        with self._lock:
            for run_id in ended:
                self._queued.pop(run_id, None)
                self._turns.pop(run_id, None)
        host.retire(ended)

    def _watch(self) -> None:
        """Kill a process whose handler runs past its message's TTL (plus one sweep
        for the link to answer it), which frees its slots. Messages still queued in
        a process do not count: it skips them once their TTL passed."""
        if time.monotonic() < self._next_watch:
            return
        self._next_watch = time.monotonic() + STOP_CHECK
        now = time.time()
        overdue: dict[AppProcess, list[int]] = {}
        with self._lock:
            for message_id in self._begun:
                row, proc = self._held[message_id]
                if (
                    proc is not None
                    and row.created_at + row.ttl_seconds + self.intervals.sweep < now
                ):
                    overdue.setdefault(proc, []).append(row.id)
        for proc, ids in overdue.items():
            if proc.ended:
                continue
            log.warning(
                "run %d: ClientApp still busy with message(s) %s past their TTL; "
                "killing the run's ClientApp process",
                proc.run_id,
                ", ".join(map(str, sorted(ids))),
            )
            proc.kill(ids)

    # ------------------------------------------------------------------ callbacks

    def _on_done(self, proc: AppProcess, settled: list[tuple[MessageRow, Outcome]]) -> None:
        """A process answered messages (on its reader thread): free their slots."""
        with self._lock:
            self._settle([row for row, _ in settled])
            times = [o.seconds for _, o in settled if o.seconds > 0]
            if times:
                sample = sum(times) / len(times)
                self._pace = sample if self._pace is None else 0.5 * self._pace + 0.5 * sample
                now = time.monotonic()
                if self._last_done is not None:
                    rate = len(times) / max(now - self._last_done, 1e-3)
                    self._rate = rate if self._rate is None else 0.7 * self._rate + 0.3 * rate
                self._last_done = now
        self._wake()
        replied = [(row, o) for row, o in settled if o.outcome == "replied"]
        if len(replied) == 1:
            row, outcome = replied[0]
            log.info(
                "run %d: %s message %d for node %d done in %s",
                row.run_id,
                row.message_type,
                row.id,
                row.dst_node_id,
                outcome.detail,
            )
        elif replied:
            log.info(
                "run %d: %d messages done in %.3f s at most (ids %d .. %d)",
                proc.run_id,
                len(replied),
                max(o.seconds for _, o in replied),
                min(row.id for row, _ in replied),
                max(row.id for row, _ in replied),
            )
        released = [row.id for row, o in settled if o.outcome == "released"]
        if released:
            log.info(
                "run %d: %d message(s) not started before its ClientApp process was closed",
                proc.run_id,
                len(released),
            )
        for row, outcome in settled:
            if outcome.outcome not in ("replied", "released"):
                log.warning(
                    "run %d: message %d: %s: %s",
                    row.run_id,
                    row.id,
                    outcome.outcome,
                    outcome.detail,
                )

    def _on_started(self, proc: AppProcess, ids: list[int]) -> None:
        """A process started handlers (on its reader thread)."""
        with self._lock:
            self._begun.update(i for i in ids if i in self._held)

    def _on_exit(self, proc: AppProcess, how: str, rows: list[MessageRow]) -> None:
        """A process ended holding `rows` (on its reader thread). Unless the worker is
        stopping (they go back to the queue) or the run ended (they were cancelled),
        each message whose handler had started gets an error reply, and the others
        are queued again here for the run's next process."""
        with self._lock:
            begun = [row for row in rows if row.id in self._begun]
            waiting = [row for row in rows if row.id not in self._begun]
            self._settle(rows)
            if waiting and not self._stopping.is_set() and not proc.closed:
                queue = self._queued.setdefault(proc.run_id, deque())
                queue.extendleft(reversed(waiting))
        failed: list[tuple[MessageRow, str]] = []
        for row in begun:
            if self._stopping.is_set():
                continue  # shutting down: the message goes back to the queue
            overdue = row.id in proc.overdue
            if proc.closed and not overdue:
                log.info(
                    "run %d: message %d was still being handled when the run ended",
                    row.run_id,
                    row.id,
                )
                continue  # the run's messages were cancelled when it ended
            why = "ran past the message's TTL and was killed" if overdue else how
            reason = (
                f"the ClientApp process of run {row.run_id} on node {row.dst_node_id} "
                f"{why} while handling message {row.id}; the run's next message starts "
                "a fresh one"
            )
            log.warning("run %d: message %d: %s", row.run_id, row.id, reason)
            failed.append((row, reason))
        self._answer_errors(proc.run_id, failed)
        self._wake()

    def _answer_errors(self, run_id: int, failed: list[tuple[MessageRow, str]]) -> None:
        """Write error replies (code 1) for messages of one run that this worker holds;
        then forget them."""
        try:
            if failed and self._pool is not None:
                answers = [Answer(row, error=app_error(reason)) for row, reason in failed]
                with self._pool.connection() as conn:
                    for written in write_replies(conn, self.worker, run_id, answers):
                        if written.outcome == "lease-lost":
                            log.info(
                                "run %d: error reply for %d not written: %s",
                                run_id,
                                written.message_id,
                                written.detail,
                            )
        except Exception:
            log.exception("run %d: could not write error replies", run_id)
        finally:
            with self._lock:
                self._settle([row for row, _ in failed])
            self._wake()

    # ------------------------------------------------------------------ heartbeat

    def _heartbeat(self, pool: ConnectionPool, stop: threading.Event) -> None:
        period = min(self.intervals.heartbeat, self.intervals.lease / 3)
        while not stop.wait(period):
            try:
                with pool.connection() as conn:
                    store_nodes.heartbeat(conn, self.node_ids)
                    with self._lock:
                        queued = {row.id for q in self._queued.values() for row in q}
                        ids = sorted(queued | set(self._held))
                    kept = set(
                        store_messages.extend_lease(
                            conn, worker=self.worker, ids=ids, lease=self.intervals.lease
                        )
                    )
                    lost = queued - kept
                    if lost:  # expired, cancelled or re-queued meanwhile: not ours to start
                        with self._lock:
                            for run_id, queue in list(self._queued.items()):
                                self._queued[run_id] = deque(r for r in queue if r.id not in lost)
                                if not self._queued[run_id]:
                                    del self._queued[run_id]
            except Exception:
                log.exception("heartbeat failed; retrying")
