"""How a node worker's dispatcher hands claimed messages to its runs' ClientApp
processes (`flpg.node.dispatch`, through its public methods only): batches, the
concurrency limit across runs, turns between runs, expiry, what a dead process
leaves, and how far ahead the worker claims."""

from __future__ import annotations

import pytest

from flpg.node.dispatch import MAX_AHEAD, Claims, Dispatcher
from flpg.store.messages import MessageRow

T0 = 1_000_000.0


class Clock:
    """A settable clock for TTLs (wall time) and for the pace of answers."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def row(message_id: int, run_id: int, ttl: float = 60.0, created_at: float = T0) -> MessageRow:
    return MessageRow(message_id, run_id, None, 1, None, "1", "train", ttl, created_at, {}, {})


def rows(run_id: int, ids: range | list[int]) -> list[MessageRow]:
    return [row(i, run_id) for i in ids]


def dispatcher(concurrency: int, nodes: int = 1) -> tuple[Dispatcher, Clock]:
    clock = Clock()
    return Dispatcher(concurrency, nodes, clock=clock, timer=clock), clock


def taken(d: Dispatcher) -> dict[int, list[int]]:
    """What `take` hands over, as message ids per run."""
    return {run_id: [r.id for r in got] for run_id, got in d.take().items()}


def answer(d: Dispatcher, run_id: int, ids: list[int], seconds: float = 0.1) -> None:
    d.settle(rows(run_id, ids), [seconds] * len(ids))


# ---------------------------------------------------------------------- handover


def test_the_only_run_with_work_gets_every_queued_message_in_one_batch() -> None:
    d, _ = dispatcher(concurrency=2)
    d.queue(rows(7, range(1, 11)))
    assert taken(d) == {7: list(range(1, 11))}  # its process runs 2 at a time
    assert taken(d) == {}
    assert d.held == 10


def test_runs_share_the_slots_in_turns_and_never_exceed_them() -> None:
    d, _ = dispatcher(concurrency=2)
    d.queue(rows(1, range(1, 6)) + rows(2, range(6, 9)))
    assert taken(d) == {1: [1], 2: [6]}  # one each
    assert taken(d) == {}  # no slot free
    answer(d, 2, [6])
    assert taken(d) == {1: [2]}  # run 1 waited longest
    answer(d, 1, [1])
    assert taken(d) == {2: [7]}


def test_three_runs_take_turns_least_recently_served_first() -> None:
    d, _ = dispatcher(concurrency=1)
    d.queue(rows(1, [1, 2]) + rows(2, [3, 4]) + rows(3, [5, 6]))
    order = []
    for _ in range(6):
        [(run_id, [message_id])] = taken(d).items()
        order.append(message_id)
        answer(d, run_id, [message_id])
    assert order == [1, 3, 5, 2, 4, 6]


def test_a_run_never_served_goes_before_runs_served_already() -> None:
    d, _ = dispatcher(concurrency=1)
    d.queue(rows(1, [1, 2, 3]) + rows(2, [4, 5]))
    assert taken(d) == {1: [1]}
    answer(d, 1, [1])
    assert taken(d) == {2: [4]}
    d.queue(rows(3, [6]))
    answer(d, 2, [4])
    assert taken(d) == {3: [6]}  # new: before run 1, which waited since its first turn
    answer(d, 3, [6])
    assert taken(d) == {1: [2]}


def test_a_run_arriving_while_another_holds_a_backlog_waits_for_a_free_slot() -> None:
    d, _ = dispatcher(concurrency=2)
    d.queue(rows(1, range(1, 6)))
    assert taken(d) == {1: [1, 2, 3, 4, 5]}  # alone: all of it
    d.queue(rows(2, [9]))
    assert taken(d) == {}  # run 1's process may be running 2 handlers
    answer(d, 1, [1, 2, 3], 0.01)
    assert taken(d) == {}  # 2 left there: still possibly 2 running
    answer(d, 1, [4], 0.01)
    assert taken(d) == {2: [9]}


def test_a_run_with_work_while_another_run_holds_messages_gets_free_slots_only() -> None:
    d, _ = dispatcher(concurrency=3)
    d.queue(rows(1, [1]))
    assert taken(d) == {1: [1]}
    d.queue(rows(2, range(10, 15)))
    assert taken(d) == {2: [10, 11]}  # not all: run 1 still holds a message
    answer(d, 1, [1])
    assert taken(d) == {2: [12, 13, 14]}  # alone again: the rest at once


def test_more_held_than_slots_by_one_run_counts_as_its_slots_only() -> None:
    d, _ = dispatcher(concurrency=2)
    d.queue(rows(1, range(1, 6)))
    assert taken(d) == {1: [1, 2, 3, 4, 5]}
    d.queue(rows(2, [6]) + rows(3, [7]))
    assert taken(d) == {}
    answer(d, 1, [1, 2, 3])  # 2 held: still both slots
    assert taken(d) == {}
    answer(d, 1, [4])  # 1 held: one slot free
    assert sum(len(v) for v in taken(d).values()) == 1


def test_expired_queued_messages_are_not_handed_out() -> None:
    d, clock = dispatcher(concurrency=4)
    d.queue([row(1, 1, ttl=5.0), row(2, 1)])
    clock.now = T0 + 5.0  # message 1's TTL is over
    assert taken(d) == {1: [2]}
    assert d.claims() == Claims(frozenset(), frozenset({2}))  # 1 is not held


def test_expired_messages_are_skipped_while_runs_take_turns() -> None:
    d, clock = dispatcher(concurrency=1)
    d.queue([row(1, 1, ttl=1.0), row(2, 1), *rows(2, [3])])
    clock.now = T0 + 2.0
    assert taken(d) == {1: [2]}
    assert d.claims().queued == {3}


def test_a_run_whose_queued_messages_all_expired_gets_nothing() -> None:
    d, clock = dispatcher(concurrency=2)
    d.queue([row(1, 1, ttl=1.0), row(2, 1, ttl=1.0)])
    clock.now = T0 + 1.0
    assert taken(d) == {}
    assert d.claims() == Claims(frozenset(), frozenset())
    assert d.room() == 2


# ---------------------------------------------------------------------- capacity


def test_claims_ahead_only_after_answers_and_by_their_pace() -> None:
    d, _ = dispatcher(concurrency=2)
    assert d.room() == 2  # nothing known yet: only the free slots
    d.queue(rows(1, [1, 2]))
    assert d.room() == 0  # queued messages count
    taken(d)
    assert d.room() == 0  # held ones too
    answer(d, 1, [1, 2], 0.01)  # fast: about 200 a second
    assert d.room() == 2 + int(0.5 * 2 / 0.01)
    slow, _ = dispatcher(concurrency=2)
    slow.queue(rows(1, [1, 2]))
    taken(slow)
    answer(slow, 1, [1, 2], 10.0)  # slow handlers: nothing ahead
    assert slow.room() == 2


def test_the_measured_rate_of_answers_raises_how_far_ahead_it_claims() -> None:
    d, clock = dispatcher(concurrency=1)
    d.queue(rows(1, range(1, 101)))
    taken(d)
    answer(d, 1, [1], 1.0)  # 1 s a handler: 1 a second by pace alone
    assert d.room() == 1 - 99
    clock.now += 0.1
    answer(d, 1, list(range(2, 52)), 1.0)  # 50 answers in 0.1 s: 500 a second
    assert d.room() == 1 + int(0.5 * 500) - 49


def test_answers_without_a_handler_time_do_not_set_the_pace() -> None:
    d, _ = dispatcher(concurrency=2)
    d.queue(rows(1, [1, 2]))
    taken(d)
    d.settle(rows(1, [1, 2]), [0.0, 0.0])  # expired or released: no handler ran
    assert d.room() == 2


def test_never_more_than_max_ahead_beyond_the_slots() -> None:
    d, _ = dispatcher(concurrency=2)
    d.queue(rows(1, [1, 2]))
    taken(d)
    answer(d, 1, [1, 2], 1e-9)
    assert d.room() == 2 + MAX_AHEAD


def test_a_worker_for_many_node_ids_claims_one_per_node_at_once() -> None:
    d, _ = dispatcher(concurrency=8, nodes=100)
    assert d.room() == 100
    many, _ = dispatcher(concurrency=8, nodes=5000)
    assert many.room() == 8 + MAX_AHEAD


def test_a_concurrency_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="concurrency"):
        Dispatcher(0)


# ---------------------------------------------------------------------- what became of them


def test_settling_messages_not_held_changes_nothing() -> None:
    d, _ = dispatcher(concurrency=2)
    d.queue(rows(1, [1, 2, 3]))
    taken(d)
    d.settle(rows(1, [1]))
    d.settle(rows(1, [1, 99]))  # twice, and one never held
    assert d.claims().held == {2, 3}
    d.queue(rows(2, [4]))
    assert taken(d) == {}  # run 1 still holds 2: both slots


def test_the_watchdog_counts_only_messages_whose_handler_started() -> None:
    """A message queued in a process behind running handlers is skipped there once
    expired, so its TTL alone does not get the process killed; a running one does."""
    d, clock = dispatcher(concurrency=1)
    d.queue([row(1, 1), row(2, 1, ttl=0.05)])
    assert taken(d) == {1: [1, 2]}
    d.started([1])
    clock.now = T0 + 0.1 + 1.0
    assert d.overdue(margin=1.0) == []
    answer(d, 1, [1])
    d.started([2])
    assert d.overdue(margin=10.0) == []  # within the margin
    assert [r.id for r in d.overdue(margin=1.0)] == [2]


def test_started_ignores_messages_not_held() -> None:
    d, clock = dispatcher(concurrency=1)
    d.queue([row(1, 1, ttl=1.0)])
    d.started([1, 2])  # 1 is only queued
    taken(d)
    clock.now = T0 + 10.0
    assert d.overdue(margin=0.0) == []


def test_a_process_that_dies_fails_its_started_messages_and_requeues_the_others() -> None:
    d, _ = dispatcher(concurrency=2)
    d.queue(rows(1, range(1, 6)))
    taken(d)
    d.started([1, 2])
    answer(d, 1, [1])
    begun = d.release(rows(1, [2, 3, 4, 5]), requeue=True)
    # Message 2's handler ran: the worker answers it with an error; 3..5 wait for
    # the run's next process, in their order.
    assert [r.id for r in begun] == [2]
    assert d.held == 0 and d.overdue(margin=-1e9) == []
    assert taken(d) == {1: [3, 4, 5]}


def test_requeued_messages_go_before_those_claimed_after_them() -> None:
    d, _ = dispatcher(concurrency=2)
    d.queue(rows(1, [1, 2]))
    taken(d)
    d.queue(rows(1, [3]))
    d.release(rows(1, [1, 2]), requeue=True)
    assert taken(d) == {1: [1, 2, 3]}


def test_a_closed_or_stopping_process_leaves_nothing_queued() -> None:
    d, _ = dispatcher(concurrency=2)
    d.queue(rows(1, [1, 2, 3]))
    taken(d)
    d.started([1])
    assert [r.id for r in d.release(rows(1, [1, 2, 3]), requeue=False)] == [1]
    assert d.claims() == Claims(frozenset(), frozenset())
    assert d.room() == 2


# ---------------------------------------------------------------------- claims kept and dropped


def test_claims_name_queued_and_held_messages() -> None:
    d, _ = dispatcher(concurrency=1)
    d.queue(rows(1, [5]) + rows(2, [3, 4]))
    taken(d)
    claims = d.claims()
    assert claims.queued | claims.held == {3, 4, 5} and len(claims.held) == 1
    assert claims.all == [3, 4, 5]


def test_unqueue_drops_lost_queued_claims_only() -> None:
    d, _ = dispatcher(concurrency=1)
    d.queue(rows(1, [1, 2, 3]) + rows(2, [4]))
    assert taken(d) == {1: [1]}
    d.unqueue([1, 2, 4, 99])  # 1 is held: not dropped
    assert d.claims() == Claims(frozenset({3}), frozenset({1}))
    answer(d, 1, [1])
    assert taken(d) == {1: [3]}


def test_an_ended_runs_queued_messages_are_forgotten() -> None:
    d, _ = dispatcher(concurrency=1)
    d.queue(rows(1, [1, 2]) + rows(2, [3]))
    assert taken(d) == {1: [1]}
    d.end_runs([1, 7])
    assert d.claims() == Claims(frozenset({3}), frozenset({1}))  # held: answered later
    answer(d, 1, [1])
    assert taken(d) == {2: [3]}


def test_drain_forgets_every_queued_message_and_counts_them() -> None:
    d, _ = dispatcher(concurrency=1)
    d.queue(rows(1, [1, 2]) + rows(2, [3]))
    taken(d)
    assert d.drain() == 2
    assert d.claims() == Claims(frozenset(), frozenset({1}))
    assert d.drain() == 0
