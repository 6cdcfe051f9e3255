"""A node worker's heartbeat: on its own thread, it marks the worker's node ids alive
and extends the lease of every message the worker holds a claim on, so that a claim
lasts as long as the worker does, however long its handler runs."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager

from flpg.node.dispatch import Dispatcher
from flpg.settings import Intervals
from flpg.store import messages as store_messages
from flpg.store import nodes as store_nodes
from flpg.store.db import Connection

log = logging.getLogger("flpg.node")


class Heartbeat:
    """Beats every `min(heartbeat, lease / 3)` seconds from `start` until `stop`;
    a failed beat is logged and retried at the next one."""

    def __init__(
        self,
        connection: Callable[[], AbstractContextManager[Connection]],
        *,
        worker: str,
        node_ids: list[int],
        dispatcher: Dispatcher,
        intervals: Intervals,
    ) -> None:
        self._connection = connection
        self._worker = worker
        self._node_ids = node_ids
        self._dispatcher = dispatcher
        self._lease = intervals.lease
        self._period = min(intervals.heartbeat, intervals.lease / 3)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="node-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Beat no more (does not wait for a beat under way)."""
        self._stop.set()

    def beat(self) -> None:
        """Mark the nodes alive and extend the leases of the worker's claims; queued
        messages whose claim is no longer the worker's (expired, cancelled or
        re-queued meanwhile) are forgotten: not the worker's to start."""
        with self._connection() as conn:
            store_nodes.heartbeat(conn, self._node_ids)
            claims = self._dispatcher.claims()
            kept = store_messages.extend_lease(
                conn, worker=self._worker, ids=claims.all, lease=self._lease
            )
            self._dispatcher.unqueue(claims.queued - set(kept))

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            try:
                self.beat()
            except Exception:
                if self._stop.is_set():  # the worker stopped during the beat (its pool closed)
                    return
                log.exception("heartbeat failed; retrying")
