"""What the dashboard reads, as JSON-ready dicts: one function per page part, each one
named query of `sql/ui.sql` (or a store function) on a read-only connection.

`Reader` holds at most `size` connections (opened on demand, reused, dropped after a
lost connection); every one of them is read-only for the server (`ui_session_read_only`),
so no endpoint can write whatever it asks. Database errors come out as FlpgError
(DatabaseUnavailable while the database is down; NotFound for a run this role cannot
see).
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from flpg.errors import FlpgError, NotFound
from flpg.store import logs as store_logs
from flpg.store._exec import one, rows, run
from flpg.store.db import Connection, connect
from flpg.store.errors import translated

RUNS_LIMIT = 500
"""Runs the runs list shows at most (the newest)."""
MESSAGES_LIMIT = 200
"""Instructions a run's page lists at most (the newest)."""
LOG_PAGE = 1000
"""Log lines one request returns at most; the page asks again from the last id."""


class Reader:
    """A small pool of read-only connections to one database (at most `size` open)."""

    def __init__(self, url: str, *, size: int = 4, application_name: str = "flpg-ui") -> None:
        self.url = url
        self.application_name = application_name
        self._idle: queue.LifoQueue[Connection] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(size)

    @contextlib.contextmanager
    def connection(self) -> Iterator[Connection]:
        """A read-only connection for the block; database errors raised in it become
        FlpgError, and a connection that failed is closed instead of reused."""
        with self._slots, translated(self.url):
            conn = self._take()
            try:
                yield conn
            finally:
                if conn.closed or conn.broken:
                    conn.close()
                else:
                    self._idle.put(conn)

    def _take(self) -> Connection:
        while True:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                break
            if not (conn.closed or conn.broken):
                return conn
        conn = connect(self.url, application_name=self.application_name)
        run(conn, "ui_session_read_only")
        return conn

    def close(self) -> None:
        """Close the idle connections (those in use close when their block ends)."""
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return


@dataclass(frozen=True)
class RunFilter:
    """The runs list's filters; None (or empty) means any."""

    status: str | None = None
    user: str | None = None
    app: str | None = None
    q: str | None = None

    def params(self) -> dict[str, Any]:
        return {
            "status": self.status or None,
            "user": self.user or None,
            "app": self.app or None,
            "q": (self.q or "").strip() or None,
            "limit": RUNS_LIMIT,
        }


def runs(conn: Connection, filters: RunFilter) -> dict[str, Any]:
    """`{runs: [...], users: [...], apps: [...]}`: the filtered runs, newest first, and
    the users and apps there are to filter by."""
    found = rows(conn, "ui_runs_list", filters.params())
    options = one(conn, "ui_runs_filters") or {"users": [], "apps": []}
    return {"runs": found, "users": options["users"], "apps": options["apps"]}


def run_summary(conn: Connection, run_id: int) -> dict[str, Any]:
    """The run with its checkpoint; NotFound if there is no such run this role may see."""
    found = one(conn, "ui_run_get", {"run_id": run_id})
    if found is None:
        raise NotFound(f"run {run_id} does not exist (or this role may not see it)")
    return found


def run_detail(conn: Connection, run_id: int) -> dict[str, Any]:
    """`run_summary` with the run's `accounting` (see there)."""
    found = run_summary(conn, run_id)
    found["accounting"] = accounting(conn, run_id)
    return found


def accounting(conn: Connection, run_id: int) -> dict[str, Any] | None:
    """`{run: {...} | None, nodes: [...]}` from the run_accounting and node_accounting
    views, whatever their columns; None when neither exists or may be read."""
    views = one(conn, "ui_accounting_views") or {}
    if not views.get("run_view") and not views.get("node_view"):
        return None
    out: dict[str, Any] = {"run": None, "nodes": []}
    try:
        if views.get("run_view"):
            row = one(conn, "ui_run_accounting", {"run_id": run_id})
            out["run"] = None if row is None else row["row"]
        if views.get("node_view"):
            out["nodes"] = [r["row"] for r in rows(conn, "ui_node_accounting", {"run_id": run_id})]
    except FlpgError as exc:  # a view of another shape (no run_id): say so, show the rest
        out["error"] = str(exc)
    return out


def rounds(conn: Connection, run_id: int) -> list[dict[str, Any]]:
    """The run's `{round, phase, metrics, num_replies, num_failures, recorded_at}`."""
    return rows(conn, "ui_run_rounds", {"run_id": run_id})


def selection(conn: Connection, run_id: int) -> dict[str, Any]:
    """`{nodes: [...], messages: [...]}`: the selected nodes with their message counts
    and mean latencies, and the run's newest instructions with theirs."""
    return {
        "nodes": rows(conn, "ui_run_nodes", {"run_id": run_id}),
        "messages": rows(conn, "ui_run_messages", {"run_id": run_id, "limit": MESSAGES_LIMIT}),
    }


def log(conn: Connection, run_id: int, after_id: int) -> dict[str, Any]:
    """`{lines: [{id, ts, stream, line}], more}`: log lines after `after_id`, oldest
    first, at most LOG_PAGE (`more` when there may be others)."""
    found = store_logs.tail(conn, run_id, after_id, LOG_PAGE)
    return {
        "lines": [
            {"id": x.id, "ts": x.ts.timestamp(), "stream": str(x.stream), "line": x.line}
            for x in found
        ],
        "more": len(found) == LOG_PAGE,
    }


def nodes(conn: Connection) -> list[dict[str, Any]]:
    """Every node (removed ones left out) with what it serves now."""
    return rows(conn, "ui_nodes_list")


@dataclass(frozen=True)
class WatchState:
    """What the event hub LISTENs for and the fingerprints its safety-net poll compares."""

    run_ids: list[int]
    node_ids: list[int]
    runs_print: tuple[Any, ...]
    nodes_print: str
    run_prints: dict[int, dict[str, Any]]


def watch_state(conn: Connection, *, recent: float, max_nodes: int) -> WatchState:
    """The runs and nodes to listen on, with the fingerprints of the runs list, the
    nodes and each watched run."""
    found = one(conn, "ui_watch_state", {"recent": recent, "max_nodes": max_nodes})
    assert found is not None
    run_ids = [int(i) for i in found["run_ids"]]
    per_run = rows(conn, "ui_watch_run", {"run_ids": run_ids}) if run_ids else []
    return WatchState(
        run_ids=run_ids,
        node_ids=[int(i) for i in found["node_ids"]],
        runs_print=(found["runs_digest"], found["runs_max_id"]),
        nodes_print=str(found["nodes_digest"]),
        run_prints={int(r["run_id"]): r for r in per_run},
    )
