"""The node worker loop: wait (NOTIFY, a freed slot or the poll) -> claim -> offer to
the dispatcher -> hand over; each run's ClientApp process writes the replies and
reports back, and the worker records what became of each message.

Claims: one statement per batch, fair across runs (`messages_claim`), as many as the
dispatcher has room for (`flpg.node.dispatch`), which also decides which run's
process gets which queued message and when. A process reports each handler's start
and writes replies in batches (`flpg.node.appprocess`, over `flpg.node.protocol`).
When it dies, the messages whose handler had started get an error reply and the
others go to the run's next process. A worker serving several node ids starts a
submitted run's process before its first message arrives (`PRESTART`). Every
claimed message keeps its lease (`flpg.node.heartbeat`) until it is answered,
handed back or expired.

Connections held: one for claims, one dedicated LISTEN connection and a pool of at
most 2 (heartbeat, error replies for a ClientApp process that died), so 4 in all;
each run's ClientApp process holds at most 2 more while it runs.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flpg.bundle.appdir import default_cache_dir
from flpg.bundle.appuser import AppUser
from flpg.errors import ConfigError, PermissionDenied
from flpg.lifecycle import worker_id
from flpg.node.apphost import AppHost, Launch
from flpg.node.dispatch import Dispatcher
from flpg.node.heartbeat import Heartbeat
from flpg.node.logins import RunLogins
from flpg.node.reports import Reports
from flpg.node.wakeup import Wakeup
from flpg.settings import Intervals
from flpg.store import messages as store_messages
from flpg.store import nodes as store_nodes
from flpg.store import runs as store_runs
from flpg.store.db import STOP_CHECK, TRANSIENT, Connection, ConnectionPool, Session, hot_pool
from flpg.store.migrate import ensure_schema

log = logging.getLogger("flpg.node")

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


def _nodes(names: list[str]) -> str:
    """`node 'a'`, `nodes 'a', 'b'`, or `3 nodes 'a-0' .. 'a-2'`."""
    if len(names) == 1:
        return f"node {names[0]!r}"
    if len(names) <= 3:
        return "nodes " + ", ".join(repr(n) for n in names)
    return f"{len(names)} nodes {names[0]!r} .. {names[-1]!r}"


@dataclass(frozen=True)
class Serving:
    """What a node worker holds while it serves (opened and closed by `run`)."""

    session: Session
    """The claims' connection."""
    wakeup: Wakeup
    pool: ConnectionPool
    """Heartbeat and error replies."""
    reports: Reports
    host: AppHost
    heartbeat: Heartbeat


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
        settings_given: bool = False,
        app_user: AppUser | None = None,
    ) -> None:
        """`settings_given`: the specs carry labels or node config the user gave,
        which a role enrolled for its nodes may not set (admin does, at enrolment).
        `app_user`: the OS user its ClientApp processes run as (`--app-user`)."""
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if not specs:
            raise ValueError("a node worker serves at least one node")
        self.url = url
        self.specs = specs
        self.settings_given = settings_given
        self.app_user = app_user
        self.concurrency = concurrency
        self.intervals = intervals or Intervals.from_env()
        self.cache_dir = cache_dir or default_cache_dir()
        self.worker = worker_id("node")
        self.dispatcher = Dispatcher(concurrency, len(specs))
        self.node_ids: list[int] = []
        self._node_configs: dict[int, dict[str, Any]] = {}
        self._next_retire = self._next_watch = 0.0

    def run(self, stop: threading.Event) -> None:
        """Serve until `stop` is set; then finish in-flight messages (up to one lease),
        hand back the rest, and mark the nodes offline."""
        ensure_schema(self.url)  # an unreachable database at start is an error (exit 3)
        s = self._open(stop)
        try:
            self._loop(s, stop)
        finally:
            self._shutdown(s)
            s.wakeup.close()
            s.pool.close()
            s.session.close()
            log.info("stopped")

    def _loop(self, s: Serving, stop: threading.Event) -> None:
        """Wait -> claim -> offer to the dispatcher -> hand over, until `stop`."""
        eager = True  # claim at once: there may be work queued from before
        last_claim = time.monotonic()
        self._next_retire = last_claim + self.intervals.heartbeat
        while not stop.is_set():
            try:
                self._tend(s)
                self._hand_over(s)
                room = self.dispatcher.room()
                if room > 0 and (eager or time.monotonic() - last_claim >= self.intervals.poll):
                    claimed = store_messages.claim(
                        s.session.conn,
                        worker=self.worker,
                        node_ids=self.node_ids,
                        lease=self.intervals.lease,
                        limit=room,
                    )
                    last_claim = time.monotonic()
                    self.dispatcher.queue(claimed)
                    self._hand_over(s)
                    eager = len(claimed) == room  # got all it asked for: there may be more
                    if eager:
                        continue  # claim again once there is room
                timeout = STOP_CHECK
                if room > 0:  # else only a freed slot (a wake-up) lets it claim
                    until_poll = last_claim + self.intervals.poll - time.monotonic()
                    timeout = min(timeout, max(0.0, until_poll))
                eager = s.wakeup.wait(timeout, stop) or eager
                self._prestart(s, s.wakeup.submitted())
            except TRANSIENT as exc:
                # The database went away: keep in-flight handlers, retry with
                # backoff. Claims whose outcome was lost lapse and are re-queued.
                s.session.reset(exc)
                eager = True

    def _open(self, stop: threading.Event) -> Serving:
        """Register the nodes, open the connections, start the heartbeat."""
        session = Session(self.url, application_name="flpg-node", stop=stop, hot=True)
        try:
            self._register(session.conn)
        except BaseException:
            session.close()
            raise
        # Virtual nodes: start a run's process on its submission.
        wakeup = Wakeup(self.url, self.node_ids, submissions=len(self.node_ids) > 1)
        pool = hot_pool(self.url, "flpg-node-work")
        reports = Reports(self.dispatcher, self.worker, pool.connection, wakeup.wake)
        launch = Launch(
            self.url,
            self.worker,
            self.cache_dir,
            self.concurrency,
            grace=self.intervals.lease,
            on_started=reports.started,
            on_done=reports.done,
            on_exit=reports.exited,
            logins=RunLogins(self.url, self.node_ids),
            app_user=self.app_user,
        )
        heartbeat = Heartbeat(
            pool.connection,
            worker=self.worker,
            node_ids=self.node_ids,
            dispatcher=self.dispatcher,
            intervals=self.intervals,
        )
        heartbeat.start()
        return Serving(session, wakeup, pool, reports, AppHost(launch), heartbeat)

    def _register(self, conn: Connection) -> None:
        """Attach to the node ids enrolled for the connection's role (an enrolled
        node: admin set their labels and config); else register (or re-attach to)
        every node id served, in one commit."""
        enrolled = store_nodes.enrolled(conn)
        if enrolled:
            registered = self._attach(conn, [name for _, name in enrolled])
        else:
            with conn.transaction():
                registered = [
                    store_nodes.register(
                        conn, name=s.name, node_config=s.node_config, labels=s.labels
                    )
                    for s in self.specs
                ]
        self.node_ids = [n.id for n in registered]
        self._node_configs = {n.id: dict(n.node_config) for n in registered}
        if len(registered) <= 4:
            names = "node " + ", ".join(f"{n.name} (id {n.id})" for n in registered)
        else:
            first, last = registered[0], registered[-1]
            names = (
                f"{len(registered)} nodes {first.name} .. {last.name} (ids {first.id} .. {last.id})"
            )
        log.info("serving %s as %s, concurrency %d", names, self.worker, self.concurrency)

    def _attach(self, conn: Connection, enrolled: list[str]) -> list[store_nodes.Node]:
        """Mark the role's enrolled node ids online, once the names served are the
        ones enrolled (PermissionDenied otherwise) and no labels or node config were
        given (ConfigError)."""
        role = conn.info.user
        if self.settings_given:
            raise ConfigError(
                "labels and node config of an enrolled node are set by admin at enrolment "
                f"(`flpg node enroll --label/--node-config`); role {role} is enrolled, so "
                "remove --label and --node-config"
            )
        served = [s.name for s in self.specs]
        if sorted(served) != sorted(enrolled):
            shown = repr(served[0]) if len(served) == 1 else _nodes(served)
            raise PermissionDenied(f"role {role} is enrolled for {_nodes(enrolled)}, not {shown}")
        return store_nodes.attach(conn)

    def _tend(self, s: Serving) -> None:
        """Every heartbeat interval, close the processes of runs that ended (and
        forget their queued messages: the run's end cancelled them); every STOP_CHECK,
        kill a process whose handler runs past its message's TTL plus one sweep (for
        the link to answer it), which frees its slots."""
        now = time.monotonic()
        if now >= self._next_retire:
            self._next_retire = now + self.intervals.heartbeat
            ended = store_runs.ended(s.session.conn, s.host.run_ids())
            if ended:
                self.dispatcher.end_runs(ended)
                s.host.retire(ended)
        if now >= self._next_watch:
            self._next_watch = now + STOP_CHECK
            overdue = self.dispatcher.overdue(self.intervals.sweep)
            if overdue:
                s.host.kill_overdue(overdue)

    def _hand_over(self, s: Serving) -> None:
        """Hand what the dispatcher says to the runs' processes, one protocol line per
        run; a run whose process cannot start gets error replies."""
        for run_id, rows in self.dispatcher.take().items():
            try:
                proc = s.host.process(run_id)
                if not proc.submit(rows, self._node_configs):
                    proc = s.host.process(run_id)  # it ended just now: a fresh one
                    if not proc.submit(rows, self._node_configs):
                        raise RuntimeError(f"its process {proc.how_ended} at once")
            except Exception as exc:
                log.exception("run %d: could not start its ClientApp process", run_id)
                reason = f"the ClientApp process of run {run_id} could not be started: {exc}"
                s.reports.answer_errors(run_id, [(row, reason) for row in rows])

    def _prestart(self, s: Serving, submitted: list[int]) -> None:
        """Start the ClientApp processes of newly submitted runs that select some of
        this worker's node ids before their first message arrives, so that the
        process starts while the run's ServerApp does (at most PRESTART of them may
        wait for a first message at a time)."""
        if not submitted or s.host.waiting() >= PRESTART:
            return
        for run_id in store_runs.starting_on_nodes(s.session.conn, submitted, self.node_ids):
            if s.host.waiting() >= PRESTART:
                break
            if not s.host.has(run_id):
                log.info("run %d: starting its ClientApp process ahead of its messages", run_id)
                try:
                    s.host.process(run_id)
                except TRANSIENT:
                    raise
                except Exception as exc:  # e.g. the run ended meanwhile: its role is refused
                    log.warning(
                        "run %d: its ClientApp process did not start ahead (%s)", run_id, exc
                    )

    def _shutdown(self, s: Serving) -> None:
        """Let processes finish what they started (up to one lease), hand every other
        claim back and take the nodes offline."""
        waiting = self.dispatcher.drain()  # not handed to a process: handed back below
        log.info(
            "stopping: finishing %d in-flight message(s)%s",
            self.dispatcher.held,
            f", handing back {waiting} not started" if waiting else "",
        )
        # Processes answer what they have not started as released and finish the
        # rest; whatever they still hold when they end goes back to the queue.
        s.reports.stopping.set()
        killed = s.host.close_all(timeout=self.intervals.lease)
        if killed:
            log.warning(
                "abandoned the handlers of %d ClientApp process(es) still running after "
                "%.1f s; their messages go back to the queue",
                killed,
                self.intervals.lease,
            )
        s.heartbeat.stop()
        try:
            released = store_messages.release(s.session.conn, worker=self.worker)
            if released:
                log.info("handed %d claimed message(s) back to the queue", released)
            store_nodes.set_offline(s.session.conn, self.node_ids)
        except TRANSIENT as exc:
            log.warning(
                "could not hand back claims or go offline (%s); the link will once "
                "leases and heartbeats lapse",
                exc,
            )
