"""One run's ClientApp on one node worker, in its own process.

`python -m flpg.node.appprocess --run RUN --worker WORKER --cache-dir DIR`, started
by a node worker with `FLPG_DATABASE_URL` set. The ClientApp is imported once and
kept for the run's lifetime; each node id it serves has its own Context, whose
`state` persists across the run's rounds (and lives only in this process).

Protocol (one JSON object per line): the node worker writes requests
`{"message": {MessageRow fields}, "node_config": {...}}` on stdin; this process
loads the message, calls the ClientApp, writes the reply (or an error reply) to the
database under the node worker's claim, and answers on its protocol pipe with
`{"id": MESSAGE_ID, "outcome": "replied" | "error" | "lease-lost", "detail": "..."}`.
The protocol pipe is the original stdout; the ClientApp's own prints go to stderr.
End of stdin means: finish what is in flight (up to `--grace` seconds) and exit.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from psycopg_pool import ConnectionPool

from flpg import bus
from flpg.appbundle import BundleCache, load_component, parse_pyproject
from flpg.clientapp import ClientApp
from flpg.context import Context
from flpg.db import SESSION_OPTIONS, TRANSIENT, Connection, connect
from flpg.errors import FlpgError, LeaseLost
from flpg.message import Error, ErrorCode
from flpg.records import RecordDict
from flpg.settings import DATABASE_URL_ENV
from flpg.store import apps as store_apps
from flpg.store import runs as store_runs
from flpg.store.messages import MessageRow

log = logging.getLogger("flpg.clientapp")


class RunApp:
    """The run's ClientApp (or the reason it could not be loaded) and its Contexts."""

    def __init__(self, conn: Connection, run_id: int, cache_dir: Path) -> None:
        self.run_id = run_id
        self.app: ClientApp | None = None
        self.load_error: str | None = None
        self._contexts: dict[int, Context] = {}
        self._lock = threading.Lock()
        run = store_runs.get(conn, run_id)
        self.run_config = dict(run.run_config)
        try:
            root = BundleCache(cache_dir).path(
                run.app_hash, lambda: store_apps.get(conn, run.app_hash)[1]
            )
            spec = parse_pyproject((root / "pyproject.toml").read_text(), f"app {run.app_name}")
            self.app = load_component(root, spec.clientapp, ClientApp)
        except FlpgError as exc:
            self.load_error = str(exc)

    def context(self, node_id: int, node_config: dict[str, Any]) -> Context:
        """This node's Context for the run (created on first use, then kept)."""
        with self._lock:
            if node_id not in self._contexts:
                self._contexts[node_id] = Context(
                    run_id=self.run_id,
                    node_id=node_id,
                    node_config=dict(node_config),
                    state=RecordDict(),
                    run_config=dict(self.run_config),
                )
            return self._contexts[node_id]


class Server:
    """Reads requests, handles each on its own thread, writes one answer per request."""

    def __init__(self, pool: ConnectionPool, app: RunApp, worker: str, out: IO[str]) -> None:
        self.pool = pool
        self.app = app
        self.worker = worker
        self._out = out
        self._out_lock = threading.Lock()
        self._inflight = 0
        self._idle = threading.Condition()

    def serve(self, requests: IO[str], grace: float) -> None:
        for line in requests:
            request = json.loads(line)
            with self._idle:
                self._inflight += 1
            threading.Thread(
                target=self._handle,
                args=(request,),
                name=f"clientapp-{request['message']['id']}",
                daemon=True,
            ).start()
        with self._idle:
            self._idle.wait_for(lambda: self._inflight == 0, timeout=grace)

    def _answer(self, message_id: int, outcome: str, detail: str = "") -> None:
        line = json.dumps({"id": message_id, "outcome": outcome, "detail": detail})
        with self._out_lock:
            try:
                self._out.write(line + "\n")
                self._out.flush()
            except (OSError, ValueError):  # the node worker is gone
                pass

    def _handle(self, request: dict[str, Any]) -> None:
        row = MessageRow(**request["message"])
        message_id = row.id
        try:
            outcome, detail = self._run(row, request["node_config"])
        except Exception as exc:  # the database is gone: the lease will lapse
            outcome, detail = "lease-lost", f"{type(exc).__name__}: {exc}"
        self._answer(message_id, outcome, detail)
        with self._idle:
            self._inflight -= 1
            self._idle.notify_all()

    def _run(self, row: MessageRow, node_config: dict[str, Any]) -> tuple[str, str]:
        started = time.monotonic()
        message_id = row.id
        assert row.dst_node_id is not None
        with self.pool.connection() as conn:
            try:
                if self.app.app is None:
                    raise FlpgError(f"the run's ClientApp did not load: {self.app.load_error}")
                message = bus.load(conn, [row])[0]
                reply = self.app.app(message, self.app.context(row.dst_node_id, node_config))
                if reply.metadata.reply_to_message_id != message_id:
                    raise TypeError(
                        "the handler's reply does not answer this message; "
                        "build it with Message(content, reply_to=msg)"
                    )
                bus.reply(conn, self.worker, message_id, row.run_id, reply)
            except LeaseLost as exc:
                return "lease-lost", str(exc)
            except TRANSIENT:
                raise  # not the app's fault: the claim lapses and the message is retried
            except Exception as exc:
                reason = str(exc) if isinstance(exc, FlpgError) else f"{type(exc).__name__}: {exc}"
                try:
                    bus.error_reply(
                        conn,
                        self.worker,
                        message_id,
                        Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason),
                    )
                except LeaseLost as inner:
                    return "lease-lost", str(inner)
                return "error", reason
        return "replied", f"{time.monotonic() - started:.3f} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flpg.node.appprocess")
    parser.add_argument("--run", type=int, required=True)
    parser.add_argument("--worker", required=True)
    parser.add_argument("--cache-dir", type=Path, required=True)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--grace", type=float, default=30.0)
    args = parser.parse_args(argv)

    # The protocol owns the original stdout; anything the app prints goes to stderr.
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s %(name)s[%(process)d] run {args.run} %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    url = os.environ[DATABASE_URL_ENV]
    with connect(url, application_name=f"flpg-clientapp-{args.run}") as conn:
        app = RunApp(conn, args.run, args.cache_dir)
    if app.load_error:
        log.warning("ClientApp did not load: %s", app.load_error)
    pool = ConnectionPool(
        url,
        min_size=1,
        max_size=max(1, args.concurrency),
        kwargs={
            "autocommit": True,
            "application_name": f"flpg-clientapp-{args.run}",
            "options": SESSION_OPTIONS,
        },
        check=ConnectionPool.check_connection,
        open=True,
    )
    try:
        Server(pool, app, args.worker, out).serve(sys.stdin, args.grace)
    finally:
        pool.close()
    return 0


if __name__ == "__main__":
    # Daemon handler threads may still run after the grace period: leave without
    # joining them (their claims lapse and the link re-queues or expires them).
    code = main()
    sys.stderr.flush()
    os._exit(code)
