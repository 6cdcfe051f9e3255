"""Following a run's log until it ends (`flpg log --follow`, `flpg run --stream`).

A run's ServerApp records its own outcome, while its output still travels through
its exec (a pipe, then the exec's batching log writer) into `run_logs`. So a run can
be `finished` before its last lines are stored. The exec announces each launch with
the event `ServerApp attempt N started ...` and writes one more event after the
ServerApp's output, once it reaped the process and read its pipes to the end:
`ServerApp exited with code 0: finished`, `ServerApp was killed by SIGKILL: failed`,
`ServerApp terminated: exec worker shut down` (any event starting `ServerApp ` that
is not a launch). A follower therefore returns only when the run has ended and, if
an exec launched its current attempt, that attempt's end event was emitted; if the
event never comes (the exec died), it gives up EXIT_EVENT_WAIT s after the run ended.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from flpg.states import TERMINAL, LogStream, log_channel
from flpg.store import logs as store_logs
from flpg.store import runs as store_runs
from flpg.store.db import Connection, Listener
from flpg.store.logs import LogLine
from flpg.store.runs import Run

EXIT_EVENT_WAIT = 30.0
"""Seconds after a run ended that a follower waits for the exec's end event. Covers
the exec's reap (it polls every 0.2 s, then reads each pipe to its end, waiting up to
5 s per pipe) on a loaded machine; reached only when the exec died."""


def render(line: LogLine) -> str:
    """A log line as the CLI prints it: stdout bare, other streams tagged."""
    return line.line if line.stream == LogStream.STDOUT else f"[{line.stream}] {line.line}"


@dataclass
class _Attempts:
    """Which ServerApp launches and ends the emitted events announced."""

    started: int = 0
    """The attempt of the newest `ServerApp attempt N started` event."""
    ended_after_start: bool = False
    """Whether an end event followed it."""

    def see(self, line: LogLine) -> None:
        attempt = store_logs.launched_attempt(line)
        if attempt is not None:
            self.started, self.ended_after_start = attempt, False
        elif store_logs.is_end_event(line):
            self.ended_after_start = True

    def complete(self, run: Run) -> bool:
        """Whether every line of the ended `run`'s ServerApp has been emitted."""
        if run.exec_id is None:  # no exec launched this attempt: nothing more to come
            return True
        if self.started == run.attempt and self.ended_after_start:
            return True
        ended = run.finished_at
        return ended is not None and (datetime.now(UTC) - ended).total_seconds() > EXIT_EVENT_WAIT


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
    and every line of its ServerApp was emitted (see the module docstring).
    `tick(run)` is called after every wake-up."""
    listener = Listener(url, [log_channel(run_id)], application_name="flpg-follow")
    attempts = _Attempts()
    last_id = 0
    try:
        while True:
            run = store_runs.get(conn, run_id)
            while True:
                lines = store_logs.tail(conn, run_id, last_id)
                for line in lines:
                    emit(line)
                    attempts.see(line)
                    last_id = line.id
                if len(lines) < 1000:
                    break
            if tick is not None:
                tick(run)
            if run.status in TERMINAL and attempts.complete(run):
                return run
            listener.wait(poll)
    finally:
        listener.close()
