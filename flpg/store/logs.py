"""Run logs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from flpg.db import Connection
from flpg.store._exec import many, rows, run


@dataclass(frozen=True)
class LogLine:
    id: int
    ts: datetime
    stream: str
    line: str


def append(conn: Connection, run_id: int, lines: Sequence[tuple[str, str]]) -> None:
    """Append `(stream, line)` pairs in one transaction and wake followers."""
    if not lines:
        return
    with conn.transaction():
        many(
            conn,
            "log_insert",
            [{"run_id": run_id, "stream": s, "line": line} for s, line in lines],
        )
        run(conn, "log_notify", {"run_id": run_id})


def tail(conn: Connection, run_id: int, after_id: int = 0, limit: int = 1000) -> list[LogLine]:
    """Log lines of a run with id > `after_id`, oldest first."""
    return [
        LogLine(**r)
        for r in rows(conn, "log_tail", {"run_id": run_id, "after_id": after_id, "limit": limit})
    ]
