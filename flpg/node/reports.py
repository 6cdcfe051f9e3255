"""What a node worker records when its runs' ClientApp processes report (on their
reader threads): answered messages free their slots and are logged; the messages a
dead process had started get an error reply, the others go back to the dispatcher's
queue for the run's next process."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager

from flpg.node.apphost import AppProcess
from flpg.node.dispatch import Dispatcher
from flpg.node.protocol import Outcome, Settled
from flpg.node.replies import Answer, app_error, write_replies
from flpg.store.db import Connection
from flpg.store.messages import MessageRow

log = logging.getLogger("flpg.node")


class Reports:
    """The callbacks a node worker's processes report to (`apphost.Launch`)."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        worker: str,
        connection: Callable[[], AbstractContextManager[Connection]],
        wake: Callable[[], None],
    ) -> None:
        self._dispatcher = dispatcher
        self._worker = worker
        self._connection = connection
        self._wake = wake
        self.stopping = threading.Event()
        """Set when the worker stops: what processes still hold goes back to the queue."""

    def started(self, proc: AppProcess, ids: list[int]) -> None:
        """A process started handlers."""
        self._dispatcher.started(ids)

    def done(self, proc: AppProcess, settled: list[tuple[MessageRow, Settled]]) -> None:
        """A process answered messages: free their slots."""
        self._dispatcher.settle([row for row, _ in settled], [s.seconds for _, s in settled])
        self._wake()
        log_settled(proc.run_id, settled)

    def exited(self, proc: AppProcess, how: str, rows: list[MessageRow]) -> None:
        """A process ended holding `rows`. Unless the worker is stopping (they go back
        to the queue) or the run ended (they were cancelled), each message whose
        handler had started gets an error reply, and the others are queued again for
        the run's next process."""
        stopping = self.stopping.is_set()
        begun = self._dispatcher.release(rows, requeue=not stopping and not proc.closed)
        if stopping:
            begun = []  # shutting down: the messages go back to the queue
        failed: list[tuple[MessageRow, str]] = []
        for row in begun:
            overdue = row.id in proc.overdue
            if proc.closed and not overdue:
                log.info(
                    "run %d: message %d was still being handled when the run ended",
                    row.run_id,
                    row.id,
                )
                continue  # the run's messages were cancelled when it ended
            why = "ran past the message's TTL and was killed" if overdue else how
            reason = (
                f"the ClientApp process of run {row.run_id} on node {row.dst_node_id} "
                f"{why} while handling message {row.id}; the run's next message starts "
                "a fresh one"
            )
            log.warning("run %d: message %d: %s", row.run_id, row.id, reason)
            failed.append((row, reason))
        self.answer_errors(proc.run_id, failed)
        self._wake()

    def answer_errors(self, run_id: int, failed: list[tuple[MessageRow, str]]) -> None:
        """Write error replies (code 1) for messages of one run that the worker holds;
        then forget them. Never raises (a failure is logged; the claims lapse)."""
        try:
            if failed:
                answers = [Answer(row, error=app_error(reason)) for row, reason in failed]
                with self._connection() as conn:
                    for written in write_replies(conn, self._worker, run_id, answers):
                        if written.outcome == Outcome.LEASE_LOST:
                            log.info(
                                "run %d: error reply for %d not written: %s",
                                run_id,
                                written.message_id,
                                written.detail,
                            )
        except Exception:
            if self.stopping.is_set():  # e.g. its pool closed meanwhile: the claims lapse
                log.info("run %d: error replies not written while stopping", run_id)
            else:
                log.exception("run %d: could not write error replies", run_id)
        finally:
            self._dispatcher.settle(row for row, _ in failed)
            self._wake()


def log_settled(run_id: int, settled: list[tuple[MessageRow, Settled]]) -> None:
    """Log what a process did with messages: replies at info (one line for many),
    released ones in one line, anything else as a warning each."""
    replied = [(row, s) for row, s in settled if s.outcome == Outcome.REPLIED]
    if len(replied) == 1:
        row, done = replied[0]
        log.info(
            "run %d: %s message %d for node %d done in %s",
            row.run_id,
            row.message_type,
            row.id,
            row.dst_node_id,
            done.detail,
        )
    elif replied:
        log.info(
            "run %d: %d messages done in %.3f s at most (ids %d .. %d)",
            run_id,
            len(replied),
            max(s.seconds for _, s in replied),
            min(row.id for row, _ in replied),
            max(row.id for row, _ in replied),
        )
    released = [row.id for row, s in settled if s.outcome == Outcome.RELEASED]
    if released:
        log.info(
            "run %d: %d message(s) not started before its ClientApp process was closed",
            run_id,
            len(released),
        )
    for row, s in settled:
        if s.outcome not in (Outcome.REPLIED, Outcome.RELEASED):
            log.warning("run %d: message %d: %s: %s", row.run_id, row.id, s.outcome, s.detail)
