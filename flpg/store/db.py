"""Connections to the database: short transactions and a dedicated LISTEN connection.

Every connection is in autocommit mode; state changes run inside explicit
`with conn.transaction():` blocks, so no worker ever sits idle in a transaction.
"""

from __future__ import annotations

import contextlib
import logging
import re
import select
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import psycopg
import psycopg.conninfo
from psycopg import sql as pgsql
from psycopg_pool import ConnectionPool as ConnectionPool  # re-exported for the node

from flpg.errors import DatabaseUnavailable
from flpg.store.errors import credential_refused

Connection = psycopg.Connection[Any]
T = TypeVar("T")

log = logging.getLogger("flpg.store.db")

SESSION_OPTIONS = "-c idle_in_transaction_session_timeout=60s"
"""Set on every flpg connection: a process frozen inside a transaction (SIGSTOP, a
long pause) loses its session after 60 s, releasing the row locks the link's
sweeps would otherwise wait on for ever. flpg's own transactions never idle."""

HOT_OPTIONS = f"{SESSION_OPTIONS} -c plan_cache_mode=force_generic_plan"
"""Set on the connections of a round's critical path (node workers, ClientApp
processes, ServerApps), which also prepare every statement on its first use
(`prepare_threshold=0`): each hot statement is planned once per connection, not at
each of its first executions. The planning of a statement under row-level security
costs more than its execution in small rounds (benchmarks/RESULTS.md)."""

TRANSIENT = (psycopg.OperationalError, DatabaseUnavailable)
"""Errors that mean "the database went away": reconnect and try again."""

_PASSWORD_IN_URL = re.compile(r"(?P<head>://[^:/@]*:)[^@]*(?P<tail>@)")
_PASSWORD_PARAM = re.compile(r"(?P<head>password=)[^&\s]*", re.IGNORECASE)


def redact(url: str) -> str:
    """The URL with any password replaced by `***`."""
    url = _PASSWORD_IN_URL.sub(r"\g<head>***\g<tail>", url)
    return _PASSWORD_PARAM.sub(r"\g<head>***", url)


def url_problem(url: str) -> str | None:
    """Why libpq cannot parse `url` as a URL or connection string (one line), or
    None if it can. Nothing is connected."""
    try:
        psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error as exc:
        return str(exc).strip().splitlines()[-1] if str(exc).strip() else "malformed"
    return None


def connect_kwargs(application_name: str, *, hot: bool = False) -> dict[str, Any]:
    """The keyword arguments of every flpg connection (and connection pool); `hot`:
    one on a round's critical path (see HOT_OPTIONS)."""
    return {
        "autocommit": True,
        "application_name": application_name,
        "connect_timeout": 10,
        "options": HOT_OPTIONS if hot else SESSION_OPTIONS,
        "prepare_threshold": 0 if hot else 5,
    }


def connect(url: str, *, application_name: str = "flpg", hot: bool = False) -> Connection:
    """An autocommit connection; raises DatabaseUnavailable naming the (redacted) URL,
    or CredentialRefused naming the role when the server refused the login."""
    try:
        return psycopg.connect(url, **connect_kwargs(application_name, hot=hot))
    except psycopg.Error as exc:
        refused = credential_refused(exc, url)
        if refused is not None:
            raise refused from exc
        detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise DatabaseUnavailable(
            f"cannot connect to the database at {redact(url)}: {detail}"
        ) from exc


def hot_pool(url: str, application_name: str) -> ConnectionPool:
    """An open pool of up to two hot connections (see HOT_OPTIONS) for a node worker or
    a ClientApp process; each connection is checked before use, so one a database
    restart broke is replaced."""
    return ConnectionPool(
        url,
        min_size=1,
        max_size=2,
        kwargs=connect_kwargs(application_name, hot=True),
        check=ConnectionPool.check_connection,
        open=True,
    )


class Backoff:
    """Exponential delays between reconnection attempts: 0.1 s doubling up to `cap`."""

    def __init__(self, first: float = 0.1, cap: float = 5.0) -> None:
        self.first, self.cap = first, cap
        self._next = first

    def next(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, self.cap)
        return delay

    def reset(self) -> None:
        self._next = self.first


class Session:
    """A worker's own connection that survives the database going away.

    `conn` connects on first use (and after `reset`); `call(fn)` runs `fn(conn)`
    and, on a transient error, reconnects with backoff and runs it again, until it
    succeeds or `stop` is set (then the last error is raised). Use `call` only for
    operations that are safe to repeat.
    """

    def __init__(
        self,
        url: str,
        *,
        application_name: str,
        stop: threading.Event | None = None,
        hot: bool = False,
    ) -> None:
        self.url = url
        self.application_name = application_name
        self.hot = hot
        self.stop = stop or threading.Event()
        self._conn: Connection | None = None
        self._backoff = Backoff()

    @property
    def conn(self) -> Connection:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.url, application_name=self.application_name, hot=self.hot)
        return self._conn

    def reset(self, exc: BaseException) -> None:
        """Drop the connection after `exc`; wait the next backoff delay (or until stop)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        delay = self._backoff.next()
        log.warning(
            "%s: database unavailable (%s); retrying in %.1f s",
            self.application_name,
            _one_line(exc),
            delay,
        )
        self.stop.wait(delay)

    def call(self, fn: Callable[[Connection], T]) -> T:
        while True:
            try:
                result = fn(self.conn)
            except TRANSIENT as exc:
                if self.stop.is_set():
                    raise
                self.reset(exc)
                continue
            self._backoff.reset()
            return result

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1] if text else type(exc).__name__


STOP_CHECK = 0.25
"""Seconds between looks at a worker's stop event while it waits for NOTIFY."""


class Listener:
    """A dedicated (never pooled) connection that LISTENs on channels.

    NOTIFY is a hint: callers must also poll, and `wait` may return early or empty.
    If the database goes away, `wait` reconnects and LISTENs again (with backoff);
    notifications sent meanwhile are lost, which the callers' polling covers.
    """

    def __init__(self, url: str, channels: Iterable[str], *, application_name: str) -> None:
        self.url = url
        self.application_name = application_name
        self.channels: list[str] = []
        self.conn = connect(url, application_name=application_name)
        self._backoff = Backoff()
        self.listen(channels)

    def listen(self, channels: Iterable[str]) -> None:
        """Start listening on more channels."""
        for channel in channels:
            if channel in self.channels:
                continue
            self.conn.execute(pgsql.SQL("LISTEN {}").format(pgsql.Identifier(channel)))
            self.channels.append(channel)

    def unlisten(self, channel: str) -> None:
        """Stop listening on one channel."""
        if channel in self.channels:
            self.conn.execute(pgsql.SQL("UNLISTEN {}").format(pgsql.Identifier(channel)))
            self.channels.remove(channel)

    def wait(self, timeout: float, stop: threading.Event | None = None) -> list[psycopg.Notify]:
        """Block up to `timeout` s for notifications; return all that arrived. With
        `stop`, return within a quarter second of it being set (a worker told to stop
        must not sit out its whole poll interval).

        After a lost connection it returns empty once reconnected (the caller's
        state may have changed unseen), or after `timeout` if it could not reconnect.
        """
        if self.conn.closed or self.conn.broken:
            return self._reconnect(timeout)
        try:
            if stop is None:
                return self._wait(timeout)
            deadline = time.monotonic() + max(timeout, 0.0)
            while not stop.is_set():
                remaining = deadline - time.monotonic()
                got = self._wait(min(remaining, STOP_CHECK))
                if got or remaining <= STOP_CHECK:
                    return got
            return []
        except psycopg.OperationalError as exc:
            log.warning("%s: LISTEN connection lost (%s)", self.application_name, _one_line(exc))
            return self._reconnect(timeout)

    def _reconnect(self, timeout: float) -> list[psycopg.Notify]:
        deadline = time.monotonic() + max(timeout, 0.0)
        channels, self.channels = self.channels, []
        with contextlib.suppress(psycopg.Error):
            self.conn.close()
        while True:
            try:
                self.conn = connect(self.url, application_name=self.application_name)
                self.listen(channels)
                self._backoff.reset()
                log.info("%s: reconnected and listening again", self.application_name)
                return []
            except TRANSIENT:
                self.channels = []
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.channels = channels  # the next wait tries again
                    return []
                time.sleep(min(self._backoff.next(), remaining))

    def _wait(self, timeout: float) -> list[psycopg.Notify]:
        got: list[psycopg.Notify] = []
        deadline = time.monotonic() + max(timeout, 0.0)
        for notify in self.conn.notifies(timeout=max(timeout, 0.0), stop_after=1):
            got.append(notify)
        # Drain whatever else is already buffered, without blocking.
        while True:
            more = list(self.conn.notifies(timeout=0.0, stop_after=64))
            got.extend(more)
            if len(more) < 64 or time.monotonic() > deadline + 1.0:
                break
        return got

    def fileno(self) -> int:
        """The socket, for callers that `select` on several sources."""
        return self.conn.fileno()

    def readable(self, timeout: float) -> bool:
        """Whether the socket has data within `timeout` s."""
        ready, _, _ = select.select([self.conn.fileno()], [], [], timeout)
        return bool(ready)

    def close(self) -> None:
        """Close the connection (notifications still queued are dropped)."""
        self.conn.close()
