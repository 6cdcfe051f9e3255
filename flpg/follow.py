"""Following a run's log until it ends (`flpg log --follow`, `flpg run --stream`)."""

from __future__ import annotations

from collections.abc import Callable

from flpg.db import Connection, Listener, log_channel
from flpg.store import logs as store_logs
from flpg.store import runs as store_runs
from flpg.store.logs import LogLine
from flpg.store.runs import TERMINAL, Run


def render(line: LogLine) -> str:
    """A log line as the CLI prints it: stdout bare, other streams tagged."""
    return line.line if line.stream == "stdout" else f"[{line.stream}] {line.line}"


def follow(
    conn: Connection,
    url: str,
    run_id: int,
    emit: Callable[[LogLine], None],
    *,
    poll: float = 1.0,
    tick: Callable[[Run], None] | None = None,
) -> Run:
    """Emit the run's log lines as they are written; return the run once it ended
    and every line was emitted. `tick(run)` is called after every wake-up."""
    listener = Listener(url, [log_channel(run_id)], application_name="flpg-follow")
    last_id = 0
    try:
        while True:
            run = store_runs.get(conn, run_id)
            while True:
                lines = store_logs.tail(conn, run_id, last_id)
                for line in lines:
                    emit(line)
                    last_id = line.id
                if len(lines) < 1000:
                    break
            if tick is not None:
                tick(run)
            if run.status in TERMINAL:
                # The exec writes its last lines before recording the outcome.
                for line in store_logs.tail(conn, run_id, last_id):
                    emit(line)
                    last_id = line.id
                return run
            listener.wait(poll)
    finally:
        listener.close()
