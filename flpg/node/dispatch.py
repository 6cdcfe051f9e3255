"""Which claimed messages a node worker hands to which run's ClientApp process, and
how many more it may claim. No I/O, no threads, no database: plain decisions over
the messages the worker holds.

A message the worker claimed is first *queued* (per run, in claim order), then
*held* once handed to its run's process (until answered, handed back or its process
ended), and *started* once the process says its handler runs.

Handover (`take`): while only one run has work, its process gets every queued
message at once (the process itself runs at most `concurrency` handlers); while
several runs have work, free slots go to them in turns, the run served least
recently first, one message each. Either way the sum over runs of min(messages held,
`concurrency`) stays within `concurrency`, so no more than that many handlers run
at once across runs. Messages whose TTL passed are dropped (the link answers them).

Capacity (`room`): the worker claims up to its `concurrency` handler slots, plus as
many messages as it recently answered in LOOKAHEAD seconds (nothing ahead before its
first answers, so slow handlers are not taken from the node's other workers), and
at least one per node id it serves (virtual nodes); at most MAX_AHEAD beyond its
slots.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from flpg.store.messages import MessageRow

LOOKAHEAD = 0.5
"""Seconds of work (at the recently measured pace) a worker claims beyond its free
handler slots."""
MAX_AHEAD = 1000
"""Messages a worker claims beyond its handler slots at most."""


@dataclass(frozen=True)
class Claims:
    """The ids of the messages a worker holds claims on."""

    queued: frozenset[int]
    held: frozenset[int]

    @property
    def all(self) -> list[int]:
        """Every id, sorted."""
        return sorted(self.queued | self.held)


class Dispatcher:
    """The messages of one node worker between their claim and their answer.

    Safe to call from several threads (each method holds one lock). `clock` gives
    the wall-clock time that messages' `created_at` uses (for TTLs); `timer` a
    monotonic time (for the pace of answers).
    """

    def __init__(
        self,
        concurrency: int,
        nodes: int = 1,
        *,
        clock: Callable[[], float] = time.time,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.concurrency = concurrency
        self.nodes = nodes
        """How many node ids the worker serves."""
        self._clock = clock
        self._timer = timer
        self._lock = threading.Lock()
        self._queued: dict[int, deque[MessageRow]] = {}
        """Run id -> its queued messages, in claim order (no empty queue kept)."""
        self._held: dict[int, MessageRow] = {}
        """Handed over, not answered yet, in the order handed over."""
        self._per_run: Counter[int] = Counter()
        """Run id -> how many of `_held` are its (no zero count kept)."""
        self._started: set[int] = set()
        """Those of `_held` whose handler started."""
        self._turns: dict[int, int] = {}
        """Run id -> when it was last served (a counter): the lowest goes first."""
        self._turn = 0
        self._pace: float | None = None
        """Recent seconds from a handler's start to its reply's commit (moving average)."""
        self._rate: float | None = None
        """Recent messages answered per second (moving average)."""
        self._last_done: float | None = None

    # ------------------------------------------------------------------ claims in

    def queue(self, rows: Iterable[MessageRow]) -> None:
        """Queue claimed messages behind those of their runs already queued."""
        with self._lock:
            for row in rows:
                self._queued.setdefault(row.run_id, deque()).append(row)

    def room(self) -> int:
        """How many more messages to claim now (<= 0: none); see the module doc."""
        with self._lock:
            holding = len(self._held) + sum(len(q) for q in self._queued.values())
            pace, rate = self._pace, self._rate or 0.0
        ahead = 0
        if pace is not None:
            rate = max(rate, self.concurrency / max(pace, 1e-4))
            ahead = int(LOOKAHEAD * rate)
        window = self.concurrency + min(MAX_AHEAD, ahead)
        window = max(window, min(self.nodes, self.concurrency + MAX_AHEAD))
        return window - holding

    def claims(self) -> Claims:
        """The messages whose leases the worker must keep extending."""
        with self._lock:
            queued = frozenset(row.id for q in self._queued.values() for row in q)
            return Claims(queued, frozenset(self._held))

    def unqueue(self, ids: Iterable[int]) -> None:
        """Forget queued messages whose claim was lost (expired, cancelled, re-queued);
        ids that are not queued are ignored."""
        lost = set(ids)
        if not lost:
            return
        with self._lock:
            for run_id, queue in list(self._queued.items()):
                kept = deque(row for row in queue if row.id not in lost)
                if kept:
                    self._queued[run_id] = kept
                else:
                    del self._queued[run_id]

    def end_runs(self, run_ids: Iterable[int]) -> None:
        """Forget the queued messages of runs that ended (their end cancelled them)."""
        with self._lock:
            for run_id in run_ids:
                self._queued.pop(run_id, None)
                self._turns.pop(run_id, None)

    def drain(self) -> int:
        """Forget every queued message (the worker stops and hands them back); how many."""
        with self._lock:
            count = sum(len(q) for q in self._queued.values())
            self._queued.clear()
            return count

    # ------------------------------------------------------------------ handover

    def take(self) -> dict[int, list[MessageRow]]:
        """The messages to hand over now: run id -> its messages in order, each now
        held. Empty if nothing is queued or no slot is free (see the module doc)."""
        now = self._clock()
        with self._lock:
            waiting = [run_id for run_id, q in self._queued.items() if q]
            if len(waiting) == 1 and set(self._per_run) <= set(waiting):
                batches = self._take_all(waiting[0], now)
            else:
                batches = self._take_turns(now)
            for run_id, rows in batches.items():
                for row in rows:
                    self._held[row.id] = row
                self._per_run[run_id] += len(rows)
            return batches

    def _take_all(self, run_id: int, now: float) -> dict[int, list[MessageRow]]:
        """Every live queued message of the only run with work."""
        rows = [r for r in self._queued.pop(run_id) if r.created_at + r.ttl_seconds > now]
        self._served(run_id)
        return {run_id: rows} if rows else {}

    def _take_turns(self, now: float) -> dict[int, list[MessageRow]]:
        """Free slots, one message a run in turns while several runs wait."""
        batches: dict[int, list[MessageRow]] = {}
        free = self.concurrency - sum(min(n, self.concurrency) for n in self._per_run.values())
        while free > 0 and self._queued:
            run_id = min(self._queued, key=lambda r: self._turns.get(r, 0))
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
            self._served(run_id)
        return batches

    def _served(self, run_id: int) -> None:
        self._turn += 1
        self._turns[run_id] = self._turn

    # ------------------------------------------------------------------ what became of them

    def started(self, ids: Iterable[int]) -> None:
        """The handlers of these messages started (ids not held are ignored)."""
        with self._lock:
            self._started.update(i for i in ids if i in self._held)

    def settle(self, rows: Iterable[MessageRow], seconds: Sequence[float] = ()) -> None:
        """Forget answered messages (those not held are ignored), freeing their slots.
        `seconds` are the handler times of replies just written (0: no handler ran):
        they set the pace `room` claims ahead by."""
        with self._lock:
            self._forget(rows)
            times = [s for s in seconds if s > 0]
            if not times:
                return
            sample = sum(times) / len(times)
            self._pace = sample if self._pace is None else 0.5 * self._pace + 0.5 * sample
            now = self._timer()
            if self._last_done is not None:
                rate = len(times) / max(now - self._last_done, 1e-3)
                self._rate = rate if self._rate is None else 0.7 * self._rate + 0.3 * rate
            self._last_done = now

    def release(self, rows: Iterable[MessageRow], *, requeue: bool) -> list[MessageRow]:
        """A process ended holding `rows`: forget them and return those whose handler
        had started. With `requeue`, the others go back to the front of their run's
        queue, in their order (for the run's next process)."""
        rows = list(rows)
        with self._lock:
            begun = [row for row in rows if row.id in self._started]
            waiting = [row for row in rows if row.id not in self._started]
            self._forget(rows)
            if requeue:
                for row in reversed(waiting):
                    self._queued.setdefault(row.run_id, deque()).appendleft(row)
            return begun

    def overdue(self, margin: float) -> list[MessageRow]:
        """Held messages whose handler started and whose TTL passed more than `margin`
        seconds ago. Messages not started do not count: a process skips them once
        their TTL passed."""
        now = self._clock()
        with self._lock:
            return [
                row
                for message_id in self._started
                if (row := self._held[message_id]).created_at + row.ttl_seconds + margin < now
            ]

    def _forget(self, rows: Iterable[MessageRow]) -> None:
        for row in rows:
            self._started.discard(row.id)
            if self._held.pop(row.id, None) is not None:
                self._per_run[row.run_id] -= 1
                if self._per_run[row.run_id] <= 0:
                    del self._per_run[row.run_id]

    @property
    def held(self) -> int:
        """How many messages are handed over and not answered yet."""
        with self._lock:
            return len(self._held)
