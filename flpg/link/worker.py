"""The link worker loop: every sweep period, run each sweep in its own transaction.

Sweeps are single statements whose WHERE clauses re-check state under row locks,
so several links may run at once without doing any work twice. Connections
held: one.
"""

from __future__ import annotations

import logging
import threading
import time

from flpg.app.message import ErrorCode
from flpg.errors import Deadlock, LockTimeout
from flpg.settings import Intervals
from flpg.store import messages as store_messages
from flpg.store import nodes as store_nodes
from flpg.store import payloads as store_payloads
from flpg.store import recovery as store_recovery
from flpg.store import runroles as store_runroles
from flpg.store import runs as store_runs
from flpg.store import schema as store_schema
from flpg.store import session as store_session
from flpg.store.db import TRANSIENT, Connection, Session, connect
from flpg.store.migrate import ensure_schema

log = logging.getLogger("flpg.link")

LOCK_TIMEOUT = 2.0
"""Seconds a sweep waits on a row lock before it gives up until the next sweep."""

STARTUP = 30.0
"""Seconds a launched ServerApp has to send its first heartbeat (start-up on a busy
machine: interpreter, imports, bundle) before the link fails its run."""

LAUNCH = 30.0
"""Seconds an exec has from claiming a run to recording its ServerApp started (a
process start: normally milliseconds) before the link takes the run back."""


class LinkWorker:
    """Marks silent nodes offline (answering their undelivered messages with an error
    reply), re-queues lapsed leases, expires messages past their TTL (with an error
    reply), fails runs whose ServerApp went silent, takes back runs whose exec never
    launched them, and analyzes coordination tables whose statistics are young."""

    def __init__(self, url: str, *, intervals: Intervals | None = None) -> None:
        self.url = url
        self.intervals = intervals or Intervals.from_env()

    def sweep_once(self) -> dict[str, int]:
        """Run every sweep once; returns how many rows each changed."""
        with connect(self.url, application_name="flpg-link") as conn:
            return self._sweep(conn)

    def _sweep(self, conn: Connection, *, judge_liveness: bool = True) -> dict[str, int]:
        """One pass of every sweep. Without `judge_liveness` (right after the link
        connected: heartbeats may be missing because the database was away, not the
        workers), nodes are not marked offline, silent runs are not failed and
        unlaunched runs are not taken back."""
        recovered = store_recovery.recover(conn)
        if recovered is not None:
            log.warning(
                "PostgreSQL lost its round-transient payloads in a crash: %d array(s) lost,"
                " %d run(s) restarted from their checkpoints",
                recovered.lost_arrays,
                len(recovered.runs),
            )
            for run_id, _, reason in recovered.runs:
                log.info("run %d: %s", run_id, reason)
        offline: list[tuple[int, str]] = []
        unavailable = 0
        failed: list[int] = []
        taken: list[store_runs.TakenBack] = []
        if judge_liveness:
            # One transaction: a node marked offline has its undelivered messages
            # answered (ErrorCode.NODE_UNAVAILABLE) at that moment, not at their TTL;
            # if the link dies in between, neither happened and the next sweep does both.
            with conn.transaction():
                offline = store_nodes.mark_silent_offline(conn, self.intervals.offline_after)
                unavailable = store_messages.fail_offline(
                    conn, [node_id for node_id, _ in offline], ErrorCode.NODE_UNAVAILABLE
                )
        for node_id, name in offline:
            log.info("node %s (id %d) stopped heart-beating: offline", name, node_id)
        if unavailable:
            log.info(
                "answered %d undelivered message(s) of offline node(s) with an error",
                unavailable,
            )
        requeued = store_messages.requeue_lapsed(conn)
        if requeued:
            log.info("re-queued %d message(s) whose lease ran out", requeued)
        expired = store_messages.expire(conn, ErrorCode.MESSAGE_UNAVAILABLE)
        if expired:
            log.info("expired %d message(s) past their TTL", expired)
        collected, collected_bytes = store_payloads.collect(
            conn, grace=self.intervals.payload_grace
        )
        if collected:
            log.info(
                "collected %d payload(s) no live message or checkpoint needs (%.1f MB)",
                collected,
                collected_bytes / 1e6,
            )
        roles = store_runroles.collect(conn)
        if roles:
            log.info("dropped %d database role(s) of ended runs", roles)
        analyzed = store_schema.refresh_statistics(conn)
        if analyzed:
            log.debug("analyzed %s (their statistics were young)", ", ".join(analyzed))
        if judge_liveness:
            failed = store_runs.fail_silent(
                conn, self.intervals.offline_after, max(self.intervals.offline_after, STARTUP)
            )
            # Also a liveness judgement: an exec cut off by the database's own outage
            # could not record its launches either.
            taken = store_runs.take_back_unlaunched(conn, LAUNCH)
        for run_id in failed:
            log.info("run %d failed: its ServerApp stopped heart-beating", run_id)
        for t in taken:
            log.info("run %d: %s", t.run_id, t.reason)
        return {
            "nodes_offline": len(offline),
            "node_unavailable": unavailable,
            "requeued": requeued,
            "expired": expired,
            "runs_failed": len(failed),
            "runs_taken_back": len(taken),
            "payloads_collected": collected,
            "run_roles_dropped": roles,
            "tables_analyzed": len(analyzed),
            "runs_recovered": 0 if recovered is None else len(recovered.runs),
        }

    def run(self, stop: threading.Event) -> None:
        """Sweep every `intervals.sweep` s until `stop` is set."""
        ensure_schema(self.url)  # an unreachable database at start is an error (exit 3)
        session = Session(self.url, application_name="flpg-link", stop=stop)
        connected: Connection | None = None
        connected_at = time.monotonic()
        log.info("link sweeping every %.1f s", self.intervals.sweep)
        try:
            while not stop.wait(self.intervals.sweep):
                try:
                    conn = session.conn
                    if conn is not connected:
                        # A sweep waits at most this long on a row a stuck session
                        # locks, then gives up until the next period.
                        store_session.set_lock_timeout(conn, LOCK_TIMEOUT)
                        connected, connected_at = conn, time.monotonic()
                    settled = time.monotonic() - connected_at >= self.intervals.offline_after
                    with store_session.lock_conflicts():
                        self._sweep(conn, judge_liveness=settled)
                except Deadlock:
                    log.warning("a sweep met another link's sweep (deadlock); retrying")
                except LockTimeout:
                    log.warning(
                        "a sweep waited %.0f s on a lock another session holds; retrying",
                        LOCK_TIMEOUT,
                    )
                except TRANSIENT as exc:
                    session.reset(exc)
        finally:
            session.close()
            log.info("stopped")
