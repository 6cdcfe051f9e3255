"""The node worker loop: wait (NOTIFY or poll) -> claim -> run the ClientApp -> reply.

Connections held: one for claims, one dedicated LISTEN connection, and a pool of
at most `concurrency` connections shared by the handler threads and the
heartbeat (so `concurrency + 2` in all).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from psycopg_pool import ConnectionPool

from flpg import bus
from flpg.appbundle import default_cache_dir
from flpg.db import (
    SESSION_OPTIONS,
    STOP_CHECK,
    TRANSIENT,
    Connection,
    Listener,
    Session,
    node_channel,
)
from flpg.errors import ConfigError, FlpgError
from flpg.lifecycle import worker_id
from flpg.message import Error, ErrorCode
from flpg.migrate import ensure_schema
from flpg.node.apphost import AppHost, AppProcessDied
from flpg.settings import Intervals
from flpg.store import messages as store_messages
from flpg.store import nodes as store_nodes
from flpg.store import runs as store_runs
from flpg.store.messages import MessageRow

log = logging.getLogger("flpg.node")


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
        self._inflight: set[int] = set()
        self._inflight_lock = threading.Lock()
        self._slot_freed = threading.Event()
        self._node_configs: dict[int, dict[str, Any]] = {}
        self._stopping = threading.Event()

    def run(self, stop: threading.Event) -> None:
        """Serve until `stop` is set; then finish in-flight messages (up to one lease),
        hand back the rest, and mark the nodes offline."""
        ensure_schema(self.url)  # an unreachable database at start is an error (exit 3)
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
            self.url, self.worker, self.cache_dir, self.concurrency, grace=self.intervals.lease
        )
        listener = Listener(
            self.url, [node_channel(i) for i in self.node_ids], application_name="flpg-node-listen"
        )
        pool = ConnectionPool(
            self.url,
            min_size=1,
            max_size=self.concurrency + 1,
            kwargs={
                "autocommit": True,
                "application_name": "flpg-node-work",
                "options": SESSION_OPTIONS,
            },
            check=ConnectionPool.check_connection,  # drop connections a restart broke
            open=True,
        )
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
        try:
            while not stop.is_set():
                try:
                    conn = session.conn
                    if time.monotonic() >= next_retire:
                        next_retire = time.monotonic() + self.intervals.heartbeat
                        host.retire(store_runs.ended(conn, host.run_ids()))
                    self._claim_and_dispatch(conn, listener, pool, host, stop)
                except TRANSIENT as exc:
                    # The database went away: keep in-flight handlers, retry with
                    # backoff. Claims whose outcome was lost lapse and are re-queued.
                    session.reset(exc)
        finally:
            log.info("stopping: finishing %d in-flight message(s)", len(self._inflight))
            deadline = time.monotonic() + self.intervals.lease
            while self._inflight and time.monotonic() < deadline:
                time.sleep(0.05)
            if self._inflight:
                log.warning(
                    "abandoning %d handler(s) still running after %.1f s; "
                    "their messages go back to the queue",
                    len(self._inflight),
                    self.intervals.lease,
                )
            self._stopping.set()  # handlers whose process is closed now hand back, not fail
            host.close_all(timeout=1.0)
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
            log.info("stopped")

    def _claim_and_dispatch(
        self,
        conn: Connection,
        listener: Listener,
        pool: ConnectionPool,
        host: AppHost,
        stop: threading.Event,
    ) -> None:
        """Claim up to the free slots and start a handler thread per message; wait for
        work (NOTIFY, poll) or a free slot when there is nothing to claim."""
        with self._inflight_lock:
            free = self.concurrency - len(self._inflight)
        if free <= 0:
            self._slot_freed.wait(min(self.intervals.poll, STOP_CHECK))
            self._slot_freed.clear()
            return
        claimed = store_messages.claim(
            conn,
            worker=self.worker,
            node_ids=self.node_ids,
            lease=self.intervals.lease,
            limit=free,
        )
        for row in claimed:
            with self._inflight_lock:
                self._inflight.add(row.id)
            # A daemon thread per message (at most `concurrency` at once): a handler
            # that never returns must not keep the process alive after stop (a
            # ThreadPoolExecutor's threads are joined at exit).
            threading.Thread(
                target=self._handle,
                args=(pool, host, row),
                name=f"flpg-handler-{row.id}",
                daemon=True,
            ).start()
        if len(claimed) < free:
            listener.wait(self.intervals.poll, stop)

    def _heartbeat(self, pool: ConnectionPool, stop: threading.Event) -> None:
        period = min(self.intervals.heartbeat, self.intervals.lease / 3)
        while not stop.wait(period):
            try:
                with pool.connection() as conn:
                    store_nodes.heartbeat(conn, self.node_ids)
                    with self._inflight_lock:
                        ids = sorted(self._inflight)
                    store_messages.extend_lease(
                        conn, worker=self.worker, ids=ids, lease=self.intervals.lease
                    )
            except Exception:
                log.exception("heartbeat failed; retrying")

    def _handle(self, pool: ConnectionPool, host: AppHost, row: MessageRow) -> None:
        """Run the message in its run's ClientApp process; answer for it if that dies."""
        assert row.dst_node_id is not None
        try:
            proc = host.process(row.run_id)
            future = proc.submit(row, self._node_configs.get(row.dst_node_id, {}))
            # A handler may run until the message expires (plus one sweep for the
            # link to answer it); past that its process is killed to free the slot.
            budget = row.created_at + row.ttl_seconds + self.intervals.sweep - time.time()
            hung = False
            try:
                try:
                    outcome = future.result(timeout=max(budget, 0.0))
                except FutureTimeout:
                    hung = True
                    log.warning(
                        "run %d: ClientApp still busy with message %d past its TTL of %.1f s; "
                        "killing the run's ClientApp process",
                        row.run_id,
                        row.id,
                        row.ttl_seconds,
                    )
                    proc.kill()
                    outcome = future.result(timeout=self.intervals.lease)
            except AppProcessDied as exc:
                if self._stopping.is_set():
                    return  # shutting down: the message goes back to the queue
                if proc.closed and not hung:
                    log.info(
                        "run %d: message %d was still being handled when the run ended",
                        row.run_id,
                        row.id,
                    )
                    return  # the run's messages were cancelled when it ended
                why = "ran past the message's TTL and was killed" if hung else exc.how
                reason = (
                    f"the ClientApp process of run {row.run_id} on node {row.dst_node_id} "
                    f"{why} while handling message {row.id}; the run's next message starts "
                    "a fresh one"
                )
                log.warning("run %d: message %d: %s", row.run_id, row.id, reason)
                with pool.connection() as conn:
                    try:
                        bus.error_reply(
                            conn,
                            self.worker,
                            row.id,
                            Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason),
                        )
                    except FlpgError as inner:
                        log.info(
                            "run %d: error reply for %d not written: %s", row.run_id, row.id, inner
                        )
                return
            if outcome.outcome == "replied":
                log.info(
                    "run %d: %s message %d for node %d done in %s",
                    row.run_id,
                    row.message_type,
                    row.id,
                    row.dst_node_id,
                    outcome.detail,
                )
            else:
                log.warning(
                    "run %d: message %d: %s: %s",
                    row.run_id,
                    row.id,
                    outcome.outcome,
                    outcome.detail,
                )
        except Exception:
            log.exception("run %d: message %d could not be handled", row.run_id, row.id)
        finally:
            with self._inflight_lock:
                self._inflight.discard(row.id)
            self._slot_freed.set()
