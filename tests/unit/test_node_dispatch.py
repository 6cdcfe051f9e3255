"""How a node worker hands claimed messages to its runs' ClientApp processes (no
database, fake processes): batches, the concurrency limit across runs, turns
between runs, expiry, and how far ahead it claims."""

from __future__ import annotations

import time
from typing import Any, cast

from flpg.node.apphost import AppHost, AppProcess, Outcome
from flpg.node.worker import MAX_AHEAD, NodeSpec, NodeWorker
from flpg.settings import Intervals
from flpg.store.messages import MessageRow


class FakeProcess:
    """Records the batches it is handed."""

    def __init__(self, run_id: int) -> None:
        self.run_id = run_id
        self.batches: list[list[int]] = []
        self.ended = False
        self.how_ended = ""
        self.overdue: set[int] = set()
        self.closed = False

    def submit(self, rows: list[MessageRow], node_configs: dict[int, dict[str, Any]]) -> bool:
        self.batches.append([r.id for r in rows])
        return True

    def kill(self, overdue: Any = ()) -> None:
        self.overdue.update(overdue)


class FakeHost:
    def __init__(self) -> None:
        self.procs: dict[int, FakeProcess] = {}

    def process(self, run_id: int) -> FakeProcess:
        return self.procs.setdefault(run_id, FakeProcess(run_id))

    def handed(self, run_id: int) -> list[int]:
        return (
            [i for batch in self.procs[run_id].batches for i in batch]
            if run_id in self.procs
            else []
        )


def row(message_id: int, run_id: int, node_id: int = 1, ttl: float = 60.0) -> MessageRow:
    return MessageRow(
        message_id, run_id, None, node_id, None, "1", "train", ttl, time.time(), {}, {}
    )


def worker(concurrency: int, nodes: int = 1, sweep: float = 1.0) -> tuple[NodeWorker, FakeHost]:
    w = NodeWorker(
        "postgresql://unused",
        [NodeSpec(f"n{i}") for i in range(nodes)],
        concurrency=concurrency,
        intervals=Intervals(sweep=sweep),
    )
    w.node_ids = list(range(1, nodes + 1))
    return w, FakeHost()


def dispatch(w: NodeWorker, host: FakeHost) -> None:
    w._dispatch(cast(AppHost, host))


def answer(w: NodeWorker, host: FakeHost, run_id: int, ids: list[int], seconds: float) -> None:
    proc = host.procs[run_id]
    rows = [row(i, run_id) for i in ids]
    w._on_done(cast(AppProcess, proc), [(r, Outcome("replied", "", seconds)) for r in rows])


def test_the_only_run_with_work_gets_every_queued_message_in_one_batch() -> None:
    w, host = worker(concurrency=2)
    w._enqueue([row(i, run_id=7) for i in range(1, 11)])
    dispatch(w, host)
    assert host.procs[7].batches == [list(range(1, 11))]  # its process runs 2 at a time


def test_runs_share_the_slots_in_turns_and_never_exceed_them() -> None:
    w, host = worker(concurrency=2)
    w._enqueue([row(i, run_id=1) for i in range(1, 6)] + [row(i, run_id=2) for i in range(6, 9)])
    dispatch(w, host)
    assert (host.handed(1), host.handed(2)) == ([1], [6])  # one each
    dispatch(w, host)
    assert (host.handed(1), host.handed(2)) == ([1], [6])  # no slot free
    answer(w, host, 2, [6], 0.1)
    dispatch(w, host)
    assert (host.handed(1), host.handed(2)) == ([1, 2], [6])  # run 1 waited longest
    answer(w, host, 1, [1], 0.1)
    dispatch(w, host)
    assert (host.handed(1), host.handed(2)) == ([1, 2], [6, 7])


def test_a_run_arriving_while_another_holds_a_backlog_waits_for_a_free_slot() -> None:
    w, host = worker(concurrency=2)
    w._enqueue([row(i, run_id=1) for i in range(1, 6)])
    dispatch(w, host)
    assert host.handed(1) == [1, 2, 3, 4, 5]  # alone: all of it
    w._enqueue([row(9, run_id=2)])
    dispatch(w, host)
    assert host.handed(2) == []  # run 1's process may be running 2 handlers
    answer(w, host, 1, [1, 2, 3], 0.01)
    dispatch(w, host)
    assert host.handed(2) == []  # 2 left there: still possibly 2 running
    answer(w, host, 1, [4], 0.01)
    dispatch(w, host)
    assert host.handed(2) == [9]


def test_expired_queued_messages_are_not_handed_out() -> None:
    w, host = worker(concurrency=4)
    w._enqueue([row(1, run_id=1, ttl=1e-9), row(2, run_id=1)])
    dispatch(w, host)
    assert host.handed(1) == [2]


def test_claims_ahead_only_after_answers_and_by_their_pace() -> None:
    w, host = worker(concurrency=2)
    assert w._room() == 2  # nothing known yet: only the free slots
    w._enqueue([row(1, run_id=1), row(2, run_id=1)])
    dispatch(w, host)
    assert w._room() == 0
    answer(w, host, 1, [1, 2], 0.01)  # fast: about 200 a second
    assert 2 + 50 <= w._room() <= 2 + MAX_AHEAD
    slow, host = worker(concurrency=2)
    slow._enqueue([row(1, run_id=1), row(2, run_id=1)])
    dispatch(slow, host)
    answer(slow, host, 1, [1, 2], 10.0)  # slow handlers: nothing ahead
    assert slow._room() == 2


def test_a_worker_for_many_node_ids_claims_one_per_node_at_once() -> None:
    w, _ = worker(concurrency=8, nodes=100)
    assert w._room() == 100


def test_the_watchdog_kills_only_for_messages_whose_handler_started() -> None:
    """A message queued in a process behind running handlers is skipped there once
    expired, so its TTL alone does not get the process killed; a running one does."""
    w, host = worker(concurrency=1, sweep=1e-6)
    w._enqueue([row(1, run_id=1), row(2, run_id=1, ttl=0.05)])
    dispatch(w, host)
    assert host.handed(1) == [1, 2]
    proc = cast(AppProcess, host.procs[1])
    w._on_started(proc, [1])
    time.sleep(0.1)
    w._watch()
    assert host.procs[1].overdue == set()
    answer(w, host, 1, [1], 0.1)
    w._on_started(proc, [2])
    w._next_watch = 0.0
    w._watch()
    assert host.procs[1].overdue == {2}


def test_a_process_that_dies_fails_its_started_messages_and_requeues_the_others() -> None:
    w, host = worker(concurrency=2)
    w._enqueue([row(i, run_id=1) for i in range(1, 6)])
    dispatch(w, host)
    proc = cast(AppProcess, host.procs[1])
    w._on_started(proc, [1, 2])
    answer(w, host, 1, [1], 0.1)
    w._on_exit(proc, "exited with code 3", [row(i, run_id=1) for i in (2, 3, 4, 5)])
    # Message 2's handler ran: it gets an error reply (no database here); 3..5 wait
    # for the run's next process, in their order.
    assert w._held == {} and w._unsettled == {} and w._begun == set()
    assert [r.id for r in w._queued[1]] == [3, 4, 5]
    host.procs.clear()
    dispatch(w, host)
    assert host.handed(1) == [3, 4, 5]
