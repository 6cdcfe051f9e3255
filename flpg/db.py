"""Connections to the database: short transactions and a dedicated LISTEN connection.

Every connection is in autocommit mode; state changes run inside explicit
`with conn.transaction():` blocks, so no worker ever sits idle in a transaction.
"""

from __future__ import annotations

import re
import select
import time
from collections.abc import Iterable
from typing import Any

import psycopg
from psycopg import sql as pgsql

from flpg.errors import DatabaseUnavailable

Connection = psycopg.Connection[Any]

_PASSWORD_IN_URL = re.compile(r"(?P<head>://[^:/@]*:)[^@]*(?P<tail>@)")
_PASSWORD_PARAM = re.compile(r"(?P<head>password=)[^&\s]*", re.IGNORECASE)


def redact(url: str) -> str:
    """The URL with any password replaced by `***`."""
    url = _PASSWORD_IN_URL.sub(r"\g<head>***\g<tail>", url)
    return _PASSWORD_PARAM.sub(r"\g<head>***", url)


def connect(url: str, *, application_name: str = "flpg") -> Connection:
    """An autocommit connection; raises DatabaseUnavailable naming the (redacted) URL."""
    try:
        return psycopg.connect(
            url, autocommit=True, application_name=application_name, connect_timeout=10
        )
    except psycopg.Error as exc:
        detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise DatabaseUnavailable(
            f"cannot connect to the database at {redact(url)}: {detail}"
        ) from exc


def node_channel(node_id: int) -> str:
    """The channel that wakes the workers of one node."""
    return f"flpg_node_{node_id}"


def run_channel(run_id: int) -> str:
    """The channel that wakes a run's ServerApp when replies arrive."""
    return f"flpg_run_{run_id}"


def log_channel(run_id: int) -> str:
    """The channel that wakes `flpg log --follow` when a run logs."""
    return f"flpg_log_{run_id}"


EXEC_CHANNEL = "flpg_exec"
"""Wakes exec workers: a run was submitted or a stop was requested."""


class Listener:
    """A dedicated (never pooled) connection that LISTENs on channels.

    NOTIFY is a hint: callers must also poll, and `wait` may return early or empty.
    """

    def __init__(self, url: str, channels: Iterable[str], *, application_name: str) -> None:
        self.url = url
        self.channels: list[str] = []
        self.conn = connect(url, application_name=application_name)
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

    def wait(self, timeout: float) -> list[psycopg.Notify]:
        """Block up to `timeout` s for notifications; return all that arrived."""
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
