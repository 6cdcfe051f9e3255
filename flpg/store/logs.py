"""Run logs: the ServerApp's output and events, line by line."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import psycopg

from flpg.errors import NotFound
from flpg.states import LogStream
from flpg.store._exec import many, rows, run
from flpg.store.db import Connection
from flpg.store.text import LINE_LIMIT, storable


@dataclass(frozen=True)
class LogLine:
    id: int
    ts: datetime
    stream: str
    line: str


LAUNCH_EVENT = "ServerApp attempt "
"""The start of the event an exec logs when it launched a ServerApp attempt."""
END_EVENT = "ServerApp "
"""The start of the event an exec logs after a reaped ServerApp's last output line
(any event starting so that is not a launch). `flpg.cli.follow` relies on both."""


def launch_event(attempt: int, exec_id: str, pid: int) -> str:
    """The event line: exec `exec_id` launched `attempt` as process `pid`."""
    return f"{LAUNCH_EVENT}{attempt} started by {exec_id} (pid {pid})"


def end_event(how: str) -> str:
    """The event line after a ServerApp's last output: `ServerApp <how>`."""
    return f"{END_EVENT}{how}"


def launched_attempt(line: LogLine) -> int | None:
    """The attempt a launch event names; None for any other line."""
    if line.stream != LogStream.EVENT or not line.line.startswith(LAUNCH_EVENT):
        return None
    number = line.line[len(LAUNCH_EVENT) :].split(" ", 1)[0]
    return int(number) if number.isdigit() else None


def is_end_event(line: LogLine) -> bool:
    """Whether `line` is an exec's end event (see END_EVENT)."""
    return (
        line.stream == LogStream.EVENT
        and line.line.startswith(END_EVENT)
        and launched_attempt(line) is None
    )


def append(conn: Connection, run_id: int, lines: Sequence[tuple[str, str]]) -> None:
    """Append `(stream, line)` pairs in one transaction and wake followers.

    Each line is stored as `storable(line, LINE_LIMIT)` (app output may hold NUL or
    be of any length), so no line's content can fail the statement. Raises NotFound
    (and writes nothing) if the run does not exist (any more).
    """
    if not lines:
        return
    try:
        with conn.transaction():
            many(
                conn,
                "run_logs_insert",
                [
                    {"run_id": run_id, "stream": s, "line": storable(line, LINE_LIMIT)}
                    for s, line in lines
                ],
            )
            run(conn, "run_logs_notify", {"run_id": run_id})
    except psycopg.errors.ForeignKeyViolation as exc:
        raise NotFound(f"run {run_id} does not exist (any more)") from exc


def tail(conn: Connection, run_id: int, after_id: int = 0, limit: int = 1000) -> list[LogLine]:
    """Log lines of a run with id > `after_id`, oldest first."""
    return [
        LogLine(**r)
        for r in rows(
            conn, "run_logs_tail", {"run_id": run_id, "after_id": after_id, "limit": limit}
        )
    ]
