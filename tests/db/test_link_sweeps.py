"""The link's sweeps, one `sweep_once` at a time and two links at once.

No test waits for a lease, TTL or heartbeat to run out: rows are aged in SQL (see
`_age`), and the liveness limit is far above any pause a loaded machine causes, so a
slow test never sees a node or run judged silent that it did not age itself."""

from __future__ import annotations

import threading
from collections import Counter

import pytest

from flpg import bus
from flpg.app.message import ErrorCode, error_code_to_stored
from flpg.errors import LeaseLost
from flpg.link.worker import LinkWorker
from flpg.settings import Intervals
from flpg.states import run_channel
from flpg.store import messages as store_messages
from flpg.store import runs as store_runs
from flpg.store.db import Connection, Listener, connect
from tests.db import _replies as reply_path

from .conftest import Federation, create_run, instruction, register, scalar

SHORT = Intervals(heartbeat=0.1, offline_after=30.0, lease=0.2, poll=0.2, sweep=0.1)


def _age(conn: Connection, ids: list[int]) -> None:
    """Messages `ids` past their TTL, and past their lease where they hold one."""
    conn.execute(
        "UPDATE messages SET deadline = now() - interval '1 s',"
        " lease_until = CASE WHEN lease_until IS NOT NULL THEN now() - interval '1 s' END"
        " WHERE id = ANY(%s)",
        [ids],
    )


def _link(url: str) -> LinkWorker:
    return LinkWorker(url, intervals=SHORT)


def _set_running(conn: Connection, run_id: int, heartbeat_age_s: float) -> None:
    conn.execute(
        "UPDATE runs SET status = 'running', exec_id = 'exec-1', started_at = now(),"
        " serverapp_pid = 4242, heartbeat_at = now() - make_interval(secs => %s) WHERE id = %s",
        (heartbeat_age_s, run_id),
    )


def _silence(conn: Connection, node_ids: list[int]) -> None:
    """Online nodes whose workers stopped heart-beating an hour ago; every other node
    looks alive for the next hour (however slowly the test runs)."""
    conn.execute(
        "UPDATE nodes SET"
        " status = CASE WHEN id = ANY(%(ids)s) THEN 'online' ELSE status END,"
        " last_seen_at = now() + CASE WHEN id = ANY(%(ids)s)"
        " THEN interval '-1 hour' ELSE interval '1 hour' END",
        {"ids": node_ids},
    )


def test_sweep_marks_silent_nodes_offline(conn: Connection, fed: Federation) -> None:
    silent, alive = fed.selected[0], fed.selected[1]
    _silence(conn, [silent])
    result = _link(fed.url).sweep_once()
    assert result["nodes_offline"] == 1
    status = dict(conn.execute("SELECT id, status::text FROM nodes").fetchall())
    assert status[silent] == "offline"
    assert status[alive] == "online"
    assert _link(fed.url).sweep_once()["nodes_offline"] == 0


def test_sweep_requeues_lapsed_leases(conn: Connection, fed: Federation) -> None:
    node = fed.selected[0]
    lapsed, held = bus.send(conn, fed.run_id, [instruction(node), instruction(node)])
    store_messages.claim(conn, worker="dead", node_ids=[node], lease=60, limit=1)
    store_messages.claim(conn, worker="alive", node_ids=[node], lease=60, limit=1)
    conn.execute("UPDATE messages SET lease_until = now() - interval '1 s' WHERE id = %s", [lapsed])
    assert _link(fed.url).sweep_once()["requeued"] == 1
    rows = {
        r[0]: r[1:]
        for r in conn.execute(
            "SELECT id, state::text, claimed_by, lease_until IS NULL FROM messages"
        )
    }
    assert rows[lapsed] == ("queued", None, True)
    assert rows[held] == ("claimed", "alive", False)
    (again,) = store_messages.claim(conn, worker="new", node_ids=[node], lease=60, limit=5)
    assert (again.id, again.attempts) == (lapsed, 2)


def test_sweep_expires_messages_with_one_error_reply(conn: Connection, fed: Federation) -> None:
    node = fed.selected[0]
    (mid,) = bus.send(conn, fed.run_id, [instruction(node)])
    _age(conn, [mid])
    assert _link(fed.url).sweep_once()["expired"] == 1
    assert _link(fed.url).sweep_once()["expired"] == 0
    replies = conn.execute(
        "SELECT src_node_id, error_code, state::text FROM messages WHERE reply_to = %s", (mid,)
    ).fetchall()
    assert replies == [(node, error_code_to_stored(ErrorCode.MESSAGE_UNAVAILABLE), "queued")]
    assert scalar(conn, "SELECT state::text FROM messages WHERE id = %s", (mid,)) == "expired"


def test_sweep_fails_a_run_whose_serverapp_went_silent(conn: Connection, fed: Federation) -> None:
    # A second, healthy run on the same nodes must be left alone.
    healthy = create_run(conn, fed.selected)
    _set_running(conn, fed.run_id, heartbeat_age_s=3600)
    _set_running(conn, healthy, heartbeat_age_s=0)
    node = fed.selected[0]
    answered, claimed, queued = bus.send(conn, fed.run_id, [instruction(node) for _ in range(3)])
    got = store_messages.claim(conn, worker="w", node_ids=[node], lease=60, limit=2)
    assert [m.id for m in got] == [answered, claimed]
    reply_path.reply_new(conn, worker="w", new=store_messages.NewReply(answered, {}, {}, []))
    (other_msg,) = bus.send(conn, healthy, [instruction(node)])
    n_rows = scalar(conn, "SELECT count(*) FROM messages")

    result = _link(fed.url).sweep_once()
    assert result["runs_failed"] == 1

    run = store_runs.get(conn, fed.run_id)
    assert run.status == "failed"
    assert run.reason is not None and "heart-beating" in run.reason
    assert run.finished_at is not None and run.serverapp_pid is None
    states = dict(
        conn.execute(
            "SELECT id, state::text FROM messages WHERE reply_to IS NULL AND run_id = %s",
            (fed.run_id,),
        ).fetchall()
    )
    assert states == {queued: "cancelled", claimed: "cancelled", answered: "done"}
    assert scalar(conn, "SELECT count(*) FROM messages") == n_rows  # rows are kept
    # The claimed message's worker can no longer reply.
    assert scalar(
        conn,
        "SELECT lease_until IS NULL AND finished_at IS NOT NULL FROM messages WHERE id = %s",
        (claimed,),
    )

    assert store_runs.get(conn, healthy).status == "running"
    assert scalar(conn, "SELECT state::text FROM messages WHERE id = %s", (other_msg,)) == "queued"
    assert _link(fed.url).sweep_once()["runs_failed"] == 0


def test_sweep_answers_the_undelivered_messages_of_a_node_that_went_offline(
    conn: Connection, fed: Federation
) -> None:
    """The sweep that marks a node offline expires its queued and claimed instructions
    with a NODE_UNAVAILABLE reply each (not at their TTL); answered ones, other nodes'
    and those of a node a worker took offline itself (handed back for a restart) stay."""
    silent, alive, stopped = fed.selected
    answered, claimed, queued = bus.send(conn, fed.run_id, [instruction(silent) for _ in range(3)])
    got = store_messages.claim(conn, worker="frozen", node_ids=[silent], lease=60, limit=2)
    assert [m.id for m in got] == [answered, claimed]
    reply_path.reply_new(conn, worker="frozen", new=store_messages.NewReply(answered, {}, {}, []))
    (alive_msg,) = bus.send(conn, fed.run_id, [instruction(alive)])
    (handed_back,) = bus.send(conn, fed.run_id, [instruction(stopped)])
    conn.execute("UPDATE nodes SET status = 'offline' WHERE id = %s", (stopped,))
    _silence(conn, [silent])
    listener = Listener(fed.url, [run_channel(fed.run_id)], application_name="flpg-test-listen")
    try:
        result = _link(fed.url).sweep_once()
        woken = listener.wait(5)
    finally:
        listener.close()
    assert result["nodes_offline"] == 1
    assert result["node_unavailable"] == 2
    assert (result["expired"], result["requeued"]) == (0, 0)
    assert woken, "the run was not notified of its error replies"

    rows = conn.execute(
        "SELECT i.id, i.state::text, i.lease_until IS NULL AND i.finished_at IS NOT NULL,"
        " r.src_node_id, r.error_code, r.error_reason, r.state::text"
        " FROM messages i LEFT JOIN messages r ON r.reply_to = i.id"
        " WHERE i.reply_to IS NULL ORDER BY i.id"
    ).fetchall()
    outcome = {r[0]: r[1:] for r in rows}
    for mid in (claimed, queued):
        state, final, src, code, reason, reply_state = outcome[mid]
        assert (state, final, src, code, reply_state) == (
            "expired",
            True,
            silent,
            error_code_to_stored(ErrorCode.NODE_UNAVAILABLE),
            "queued",
        )
        assert reason.startswith(
            f"message {mid} not delivered: node {silent} (node-0) went offline"
        )
        assert "last heartbeat 3600" in reason
    assert outcome[answered][:1] + outcome[answered][2:4] == ("done", silent, None)
    assert outcome[alive_msg][0] == "queued" and outcome[alive_msg][3] is None
    assert outcome[handed_back][0] == "queued" and outcome[handed_back][3] is None

    # The frozen worker, thawed, can no longer answer; the ServerApp gets the errors.
    with pytest.raises(LeaseLost):
        reply_path.reply_new(
            conn, worker="frozen", new=store_messages.NewReply(claimed, {}, {}, [])
        )
    pulled = store_messages.pull_replies(conn, fed.run_id, [claimed, queued])
    offline = error_code_to_stored(ErrorCode.NODE_UNAVAILABLE)  # rows keep flpg's numbering
    assert sorted((m.reply_to, m.error_code) for m in pulled) == [
        (claimed, offline),
        (queued, offline),
    ]
    again = _link(fed.url).sweep_once()
    assert (again["nodes_offline"], again["node_unavailable"]) == (0, 0)


def test_a_node_that_beats_again_first_keeps_its_messages(
    conn: Connection, fed: Federation
) -> None:
    """The statement re-checks that each node is still offline: messages of a node
    whose worker came back between the two steps are left to it."""
    node = fed.selected[0]
    (mid,) = bus.send(conn, fed.run_id, [instruction(node)])
    assert store_messages.fail_offline(conn, [node], ErrorCode.NODE_UNAVAILABLE) == 0
    assert scalar(conn, "SELECT state::text FROM messages WHERE id = %s", (mid,)) == "queued"
    conn.execute("UPDATE nodes SET status = 'offline' WHERE id = %s", (node,))
    assert store_messages.fail_offline(conn, [], ErrorCode.NODE_UNAVAILABLE) == 0
    assert store_messages.fail_offline(conn, [node], ErrorCode.NODE_UNAVAILABLE) == 1
    assert store_messages.fail_offline(conn, [node], ErrorCode.NODE_UNAVAILABLE) == 0
    assert scalar(conn, "SELECT count(*) FROM messages WHERE reply_to = %s", (mid,)) == 1


def _sweep_concurrently(url: str, n_links: int = 2) -> list[dict[str, int]]:
    """Run one sweep in each of `n_links` links, released at the same moment."""
    barrier = threading.Barrier(n_links)
    results: list[dict[str, int]] = []
    failures: list[BaseException] = []

    def sweep() -> None:
        try:
            link = _link(url)
            with connect(url, application_name="flpg-link") as c:
                barrier.wait(10)
                # The loop body of LinkWorker.run, so both sweeps start together
                # (sweep_once would add a connect to the race).
                results.append(link._sweep(c))
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=sweep) for _ in range(n_links)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert failures == []
    assert len(results) == n_links
    return results


def test_two_links_sweeping_concurrently_never_double_reply(
    conn: Connection, fed: Federation
) -> None:
    more = [register(conn, f"extra-{i}") for i in range(5)]
    nodes = fed.selected + more
    run_id = create_run(conn, nodes)
    # Work for the other sweeps too: a silent node and a run whose ServerApp went silent.
    _silence(conn, [more[0]])
    _set_running(conn, fed.run_id, heartbeat_age_s=3600)
    (stale_msg,) = bus.send(conn, fed.run_id, [instruction(fed.selected[0])])

    total = 0
    totals: Counter[str] = Counter()
    for _ in range(3):
        ids = bus.send(conn, run_id, [instruction(nodes[i % len(nodes)]) for i in range(150)])
        # Many of them held by a worker that died, whose leases ran out too.
        store_messages.claim(conn, worker="dead", node_ids=more, lease=60, limit=75)
        total += len(ids)
        _age(conn, ids)
        results = _sweep_concurrently(fed.url)
        # Past their TTL: expired, not requeued; in the first round the silent node's
        # messages expire as soon as it is marked offline, the others at their TTL.
        assert sum(r["expired"] + r["node_unavailable"] for r in results) == len(ids)
        assert sum(r["requeued"] for r in results) == 0
        for r in results:
            totals.update(r)

    assert totals["nodes_offline"] == 1
    assert totals["runs_failed"] == 1
    counts = conn.execute(
        "SELECT i.id, count(r.id) FROM messages i LEFT JOIN messages r ON r.reply_to = i.id"
        " WHERE i.reply_to IS NULL AND i.run_id = %s GROUP BY i.id",
        (run_id,),
    ).fetchall()
    assert len(counts) == total
    assert {n for _, n in counts} == {1}
    states = conn.execute(
        "SELECT state::text, count(*) FROM messages WHERE run_id = %s AND reply_to IS NULL"
        " GROUP BY 1",
        (run_id,),
    ).fetchall()
    assert states == [("expired", total)]
    assert scalar(conn, "SELECT state::text FROM messages WHERE id = %s", (stale_msg,)) == (
        "cancelled"
    )


def test_replies_racing_the_expiry_sweep_give_one_answer_each(
    conn: Connection, fed: Federation
) -> None:
    """A worker answers while the link expires the same messages: every instruction
    ends with exactly one reply, real or error, and a dropped reply is a LeaseLost.

    The phases are fixed, not timed: the worker answers the first quarter before any
    TTL runs out; then the test ages every TTL and the link starts expiring while the
    worker answers the next quarter (the race); the worker answers the rest only after
    the link's first expiry pass, so some replies are surely dropped."""
    node = fed.selected[0]
    ids = bus.send(conn, fed.run_id, [instruction(node) for _ in range(200)])
    store_messages.claim(conn, worker="w", node_ids=[node], lease=60, limit=200)
    answered: list[int] = []
    lost: list[int] = []
    racing = threading.Event()  # the first quarter is answered
    expired_once = threading.Event()  # the link finished one pass after the ageing
    stop = threading.Event()
    failures: list[BaseException] = []

    def worker() -> None:
        try:
            with connect(fed.url) as c:
                for i, mid in enumerate(ids):
                    if i == len(ids) // 4:
                        racing.set()
                    if i == len(ids) // 2:
                        expired_once.wait(30)
                    try:
                        reply_path.reply_new(
                            c,
                            worker="w",
                            new=store_messages.NewReply(mid, {"m": {"ok": 1}}, {}, []),
                        )
                        answered.append(mid)
                    except LeaseLost:
                        lost.append(mid)
        except BaseException as exc:
            failures.append(exc)

    def link() -> None:
        try:
            with connect(fed.url) as c:
                racing.wait(30)
                _age(c, ids)
                while not stop.is_set():
                    store_messages.expire(c, ErrorCode.MESSAGE_UNAVAILABLE)
                    expired_once.set()
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=worker), threading.Thread(target=link)]
    for t in threads:
        t.start()
    threads[0].join(60)
    stop.set()
    threads[1].join(60)
    assert failures == []
    assert set(ids[: len(ids) // 4]) <= set(answered)
    assert set(ids[len(ids) // 2 :]) <= set(lost)
    assert sorted(answered + lost) == sorted(ids)

    rows = conn.execute(
        "SELECT i.id, i.state::text, count(r.id), min(r.error_code)"
        " FROM messages i LEFT JOIN messages r ON r.reply_to = i.id"
        " WHERE i.reply_to IS NULL GROUP BY i.id, i.state"
    ).fetchall()
    outcome = {mid: (state, n, code) for mid, state, n, code in rows}
    assert {outcome[mid] for mid in answered} == {("done", 1, None)}
    expired = error_code_to_stored(ErrorCode.MESSAGE_UNAVAILABLE)
    assert {outcome[mid] for mid in lost} == {("expired", 1, expired)}


def test_two_links_marking_nodes_offline_concurrently_never_double_reply(
    conn: Connection, fed: Federation
) -> None:
    """Two links sweep while six nodes fall silent at once, three times over, with many
    queued and claimed messages, and the thawed worker that claimed some of them
    replies at the same moment: each node is marked offline once and each instruction
    ends with exactly one reply, the worker's (done) or a NODE_UNAVAILABLE (expired)."""
    nodes = [register(conn, f"flaky-{i}") for i in range(6)]
    run_id = create_run(conn, nodes)
    total = 0
    answered: list[int] = []
    for _ in range(3):
        ids = bus.send(conn, run_id, [instruction(nodes[i % len(nodes)]) for i in range(150)])
        held = store_messages.claim(conn, worker="thawed", node_ids=nodes[:3], lease=60, limit=40)
        total += len(ids)
        _silence(conn, nodes)
        failures: list[BaseException] = []

        def thawed(
            held: list[store_messages.MessageRow] = held,
            failures: list[BaseException] = failures,
        ) -> None:
            try:
                with connect(fed.url) as c:
                    for m in held:
                        try:
                            reply_path.reply_new(
                                c, worker="thawed", new=store_messages.NewReply(m.id, {}, {}, [])
                            )
                            answered.append(m.id)
                        except LeaseLost:
                            pass
            except BaseException as exc:
                failures.append(exc)

        worker = threading.Thread(target=thawed)
        worker.start()
        results = _sweep_concurrently(fed.url)
        worker.join(30)
        assert failures == []
        assert sum(r["nodes_offline"] for r in results) == len(nodes)
        replied_now = len([m for m in held if m.id in set(answered)])
        assert sum(r["node_unavailable"] for r in results) == len(ids) - replied_now
        assert sum(r["expired"] + r["requeued"] for r in results) == 0

    rows = conn.execute(
        "SELECT i.id, i.state::text, count(r.id), min(r.error_code)"
        " FROM messages i LEFT JOIN messages r ON r.reply_to = i.id"
        " WHERE i.reply_to IS NULL AND i.run_id = %s GROUP BY i.id, i.state",
        (run_id,),
    ).fetchall()
    assert len(rows) == total
    outcome = {mid: (state, n, code) for mid, state, n, code in rows}
    assert {outcome[mid] for mid in answered} <= {("done", 1, None)}
    assert {v for mid, v in outcome.items() if mid not in set(answered)} == {
        ("expired", 1, error_code_to_stored(ErrorCode.NODE_UNAVAILABLE))
    }


def test_a_link_that_just_connected_does_not_judge_liveness(
    conn: Connection, fed: Federation
) -> None:
    """Right after (re)connecting, e.g. when the database comes back, every heartbeat
    looks old; the link waits one offline period before marking nodes offline or
    failing silent runs, while leases and TTLs are still enforced."""
    conn.execute("UPDATE nodes SET last_seen_at = now() - interval '1 hour'")
    _set_running(conn, fed.run_id, heartbeat_age_s=3600)
    link = _link(fed.url)
    result = link._sweep(conn, judge_liveness=False)
    assert (result["nodes_offline"], result["runs_failed"]) == (0, 0)
    assert scalar(conn, "SELECT count(*) FROM nodes WHERE status = 'offline'") == 0
    assert store_runs.get(conn, fed.run_id).status == "running"
    result = link._sweep(conn, judge_liveness=True)
    assert result["nodes_offline"] == 4 and result["runs_failed"] == 1


def test_a_serverapp_that_never_beat_gets_a_startup_grace(
    conn: Connection, fed: Federation
) -> None:
    """Launched but not yet beating (interpreter, imports): failed only after the
    start-up grace, with a reason that says so."""
    _set_running(conn, fed.run_id, heartbeat_age_s=0)
    conn.execute("UPDATE runs SET heartbeat_at = NULL WHERE id = %s", [fed.run_id])
    assert _link(fed.url).sweep_once()["runs_failed"] == 0
    conn.execute(
        "UPDATE runs SET started_at = now() - interval '1 hour' WHERE id = %s", [fed.run_id]
    )
    assert _link(fed.url).sweep_once()["runs_failed"] == 1
    run = store_runs.get(conn, fed.run_id)
    assert (run.status, run.reason) == (
        "failed",
        "ServerApp never heart-beat in the 30 s after its launch",
    )
