"""The dashboard's live updates: one LISTEN connection for the whole server, fanned out
to every browser as server-sent events.

The hub's thread LISTENs on the channels flpg already NOTIFYs (`flpg_exec`: a run was
submitted or a stop requested; `flpg_log_R`: run R logged, which it does when it starts,
after every round and when it ends; `flpg_run_R`: a reply of run R arrived;
`flpg_node_N`: node N got work) for every run that has not ended (or ended a moment
ago) and every node, and turns each batch of notifications into events:

- `runs`: the runs list changed;
- `run` (data: the run id): the run's page changed (status, rounds, messages);
- `log` (data: the run id): the run has new log lines;
- `nodes`: the nodes page changed.

NOTIFY is a hint, so the hub also polls slowly (every `poll` s, one fingerprint query)
for what flpg does not notify (a node going offline, a claim) and for what a lost
connection missed. Events carry ids only; the browser then fetches the JSON of the part
that changed. Browsers never reach the database: the server holds one LISTEN
connection and borrows a reader connection for each poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from flpg.errors import FlpgError
from flpg.states import EXEC_CHANNEL, log_channel, node_channel, run_channel
from flpg.store import ui as queries
from flpg.store.db import TRANSIENT, Backoff, Listener
from flpg.store.ui import Reader, WatchState

log = logging.getLogger("flpg.ui")

Event = tuple[str, str]
"""`(name, data)` of one server-sent event."""

RECENT = 120.0
"""Seconds an ended run stays watched: its exec writes its last log lines after it ended."""
MAX_NODES = 1000
"""Node channels the hub LISTENs on at most (beyond, the poll sees their changes)."""
QUEUE_SIZE = 256
"""Events waiting for one browser at most; a browser that lags misses hints, not data
(each event only says what to fetch again)."""


@dataclass(eq=False)
class Subscription:
    """One browser's stream: its event loop and the queue its response reads."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Event | None] = field(
        default_factory=lambda: asyncio.Queue(maxsize=QUEUE_SIZE)
    )

    def offer(self, events: Iterable[Event | None]) -> None:
        """Queue events (in the subscriber's loop); drop what does not fit."""
        for event in events:
            with contextlib.suppress(asyncio.QueueFull):
                self.queue.put_nowait(event)


def events_of(channel: str, payload: str, watched: set[int]) -> set[Event]:
    """The events one notification means (runs named only if the hub watches them,
    i.e. this role may see them)."""
    if channel == EXEC_CHANNEL:
        return {("runs", "")}
    kind, _, number = channel.removeprefix("flpg_").partition("_")
    if not number.isdigit():
        return set()
    ident = int(number)
    if kind == "log" and ident in watched:
        return {("runs", ""), ("run", number), ("log", number)}
    if kind == "run" and ident in watched:
        return {("run", number), ("nodes", "")}
    if kind == "node":
        found: set[Event] = {("nodes", "")}
        if payload.isdigit() and int(payload) in watched:
            found.add(("run", payload))
        return found
    return set()


def changes(before: WatchState | None, after: WatchState) -> set[Event]:
    """The events that the difference between two polls means."""
    if before is None:
        return set()
    found: set[Event] = set()
    if before.runs_print != after.runs_print:
        found.add(("runs", ""))
    if before.nodes_print != after.nodes_print:
        found.add(("nodes", ""))
    for run_id, now in after.run_prints.items():
        then = before.run_prints.get(run_id)
        if then != now:
            found |= {("run", str(run_id)), ("runs", "")}
            if then is None or then["log_id"] != now["log_id"]:
                found.add(("log", str(run_id)))
    return found


class Hub:
    """The server's one LISTEN connection and the browsers it fans out to.

    `start()` runs the listening thread; `subscribe(loop)` gives a browser its queue
    of events (None at the end: the hub stopped); `stop()` ends the thread and every
    stream. Holds one LISTEN connection, and borrows one of `reader`'s for each poll.
    """

    def __init__(self, url: str, reader: Reader, *, poll: float) -> None:
        self.url = url
        self.reader = reader
        self.poll = poll
        self._stop = threading.Event()
        self._subs: set[Subscription] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._main, name="flpg-ui-hub", daemon=True)
        self._state: WatchState | None = None
        self._watched: set[int] = set()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._publish([None])

    def subscribe(self, loop: asyncio.AbstractEventLoop) -> Subscription:
        sub = Subscription(loop)
        with self._lock:
            self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            self._subs.discard(sub)

    def _publish(self, events: Iterable[Event | None]) -> None:
        batch = sorted(events, key=lambda e: ("~", "") if e is None else e)
        if not batch:
            return
        with self._lock:
            subs = list(self._subs)
        for sub in subs:
            with contextlib.suppress(RuntimeError):  # its loop closed: it is going away
                sub.loop.call_soon_threadsafe(sub.offer, batch)

    def _main(self) -> None:
        backoff = Backoff()
        while not self._stop.is_set():
            try:
                listener = Listener(self.url, [EXEC_CHANNEL], application_name="flpg-ui-listen")
            except FlpgError as exc:
                log.warning("flpg ui: cannot LISTEN (%s); retrying", exc)
                self._stop.wait(backoff.next())
                continue
            backoff.reset()
            try:
                self._listen(listener)
            except Exception:  # never a silent, dead hub: log it and listen again
                log.exception("flpg ui: the event hub failed; listening again")
                self._stop.wait(backoff.next())
            finally:
                listener.close()

    def _listen(self, listener: Listener) -> None:
        next_poll = 0.0
        while not self._stop.is_set():
            if time.monotonic() >= next_poll:
                self._refresh(listener)
                next_poll = time.monotonic() + self.poll
            got = listener.wait(max(next_poll - time.monotonic(), 0.0), self._stop)
            if any(n.channel == EXEC_CHANNEL for n in got):
                # A new run: LISTEN on its channels before telling the browsers about it.
                self._refresh(listener)
                next_poll = time.monotonic() + self.poll
            events: set[Event] = set()
            for notify in got:
                events |= events_of(notify.channel, notify.payload, self._watched)
            self._publish(events)

    def _refresh(self, listener: Listener) -> None:
        """Poll the fingerprints, publish what changed, LISTEN on the runs and nodes
        there are now. A database that is down is tried again at the next poll."""
        try:
            with self.reader.connection() as conn:
                state = queries.watch_state(conn, recent=RECENT, max_nodes=MAX_NODES)
        except FlpgError as exc:
            log.warning("flpg ui: poll failed (%s)", exc)
            return
        self._publish(changes(self._state, state))
        self._state, self._watched = state, set(state.run_ids)
        wanted = {EXEC_CHANNEL}
        wanted.update(ch for r in state.run_ids for ch in (log_channel(r), run_channel(r)))
        wanted.update(node_channel(n) for n in state.node_ids)
        try:
            for channel in [c for c in listener.channels if c not in wanted]:
                listener.unlisten(channel)
            listener.listen(sorted(wanted - set(listener.channels)))
        except TRANSIENT as exc:  # the connection broke: wait() reconnects
            log.warning("flpg ui: LISTEN failed (%s)", exc)
