"""The database roles a node worker's ClientApp processes connect as: one per run
this worker serves, bound to the run and to this worker's node ids it selected
(`flpg.store.runroles`), made when the run's first process starts and dropped when
the worker retires the run or stops. A ClientApp never holds the node's credential.

Thread-safe; one connection of its own, opened when first needed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from functools import partial
from typing import TypeVar

from flpg.errors import FlpgError
from flpg.store import runroles as store_runroles
from flpg.store.db import TRANSIENT, Connection, connect
from flpg.store.runroles import RunLogin

log = logging.getLogger("flpg.node")

T = TypeVar("T")


class RunLogins:
    """Run id -> the connection URL of its ClientApp processes on this worker."""

    def __init__(self, url: str, node_ids: list[int]) -> None:
        self._url = url
        self._node_ids = list(node_ids)
        self._lock = threading.Lock()
        self._conn: Connection | None = None
        self._logins: dict[int, RunLogin] = {}

    def url(self, run_id: int) -> str:
        """The URL run `run_id`'s processes connect with (its role made if new).
        Raises the store's error when the run ended or selects none of the node ids."""
        with self._lock:
            login = self._logins.get(run_id)
            if login is None:
                login = self._call(
                    lambda c: store_runroles.clientapp_login(c, run_id, self._node_ids)
                )
                self._logins[run_id] = login
            return login.url(self._url)

    def drop(self, run_ids: list[int]) -> None:
        """Drop the roles of runs that ended here; failures are logged (the link
        collects what is left once the run ended)."""
        with self._lock:
            for run_id in run_ids:
                login = self._logins.pop(run_id, None)
                if login is None:
                    continue
                try:
                    self._call(partial(store_runroles.drop, role=login.role))
                except (FlpgError, *TRANSIENT) as exc:
                    log.warning("run %d: could not drop role %s (%s)", run_id, login.role, exc)

    def close(self) -> None:
        """Drop every role still held and close the connection."""
        self.drop(list(self._logins))
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _call(self, fn: Callable[[Connection], T]) -> T:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self._url, application_name="flpg-node-logins")
        try:
            return fn(self._conn)
        except TRANSIENT:
            self._conn.close()
            self._conn = None
            raise
