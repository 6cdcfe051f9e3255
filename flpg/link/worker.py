"""The link worker loop: every sweep period, run each sweep in its own transaction.

Sweeps are single statements whose WHERE clauses re-check state under row locks,
so several links may run at once without doing any work twice. Connections
held: one.
"""

from __future__ import annotations

import contextlib
import logging
import threading

import psycopg

from flpg.db import Connection, connect
from flpg.errors import DatabaseUnavailable
from flpg.message import ErrorCode
from flpg.migrate import ensure_schema
from flpg.settings import Intervals
from flpg.store import messages as store_messages
from flpg.store import nodes as store_nodes
from flpg.store import runs as store_runs

log = logging.getLogger("flpg.link")


class LinkWorker:
    """Marks silent nodes offline, re-queues lapsed leases, expires messages past
    their TTL (with an error reply) and fails runs whose ServerApp went silent."""

    def __init__(self, url: str, *, intervals: Intervals | None = None) -> None:
        self.url = url
        self.intervals = intervals or Intervals.from_env()

    def sweep_once(self) -> dict[str, int]:
        """Run every sweep once; returns how many rows each changed."""
        with connect(self.url, application_name="flpg-link") as conn:
            return self._sweep(conn)

    def _sweep(self, conn: Connection) -> dict[str, int]:
        offline = store_nodes.mark_silent_offline(conn, self.intervals.offline_after)
        for node_id, name in offline:
            log.info("node %s (id %d) stopped heart-beating: offline", name, node_id)
        requeued = store_messages.requeue_lapsed(conn)
        if requeued:
            log.info("re-queued %d message(s) whose lease ran out", requeued)
        expired = store_messages.expire(conn, ErrorCode.MESSAGE_UNAVAILABLE)
        if expired:
            log.info("expired %d message(s) past their TTL", expired)
        failed = store_runs.fail_silent(conn, self.intervals.offline_after)
        for run_id in failed:
            log.info("run %d failed: its ServerApp stopped heart-beating", run_id)
        return {
            "nodes_offline": len(offline),
            "requeued": requeued,
            "expired": expired,
            "runs_failed": len(failed),
        }

    def run(self, stop: threading.Event) -> None:
        """Sweep every `intervals.sweep` s until `stop` is set."""
        ensure_schema(self.url)
        conn = connect(self.url, application_name="flpg-link")
        log.info("link sweeping every %.1f s", self.intervals.sweep)
        try:
            while not stop.wait(self.intervals.sweep):
                try:
                    self._sweep(conn)
                except psycopg.errors.DeadlockDetected:
                    log.warning("a sweep met another link's sweep (deadlock); retrying")
                except (psycopg.OperationalError, DatabaseUnavailable) as exc:
                    log.warning("database unavailable (%s); reconnecting", exc)
                    conn.close()
                    stop.wait(self.intervals.sweep)
                    with contextlib.suppress(DatabaseUnavailable):
                        conn = connect(self.url, application_name="flpg-link")
        finally:
            conn.close()
            log.info("stopped")
