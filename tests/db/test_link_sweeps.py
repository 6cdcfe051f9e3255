"""The link's sweeps, one `sweep_once` at a time and two links at once."""

from __future__ import annotations

import threading
import time
from collections import Counter

from flpg import bus
from flpg.db import Connection, connect
from flpg.errors import LeaseLost
from flpg.link.worker import LinkWorker
from flpg.message import ErrorCode
from flpg.settings import Intervals
from flpg.store import messages as store_messages
from flpg.store import runs as store_runs

from .conftest import Federation, create_run, instruction, register, scalar

SHORT = Intervals(heartbeat=0.1, offline_after=1.0, lease=0.2, poll=0.2, sweep=0.1)


def _link(url: str) -> LinkWorker:
    return LinkWorker(url, intervals=SHORT)


def _set_running(conn: Connection, run_id: int, heartbeat_age_s: float) -> None:
    conn.execute(
        "UPDATE runs SET status = 'running', exec_id = 'exec-1', started_at = now(),"
        " serverapp_pid = 4242, heartbeat_at = now() - make_interval(secs => %s) WHERE id = %s",
        (heartbeat_age_s, run_id),
    )


def test_sweep_marks_silent_nodes_offline(conn: Connection, fed: Federation) -> None:
    silent, alive = fed.selected[0], fed.selected[1]
    conn.execute(
        "UPDATE nodes SET last_seen_at = now() - interval '1 hour' WHERE id = %s", (silent,)
    )
    result = _link(fed.url).sweep_once()
    assert result["nodes_offline"] == 1
    status = dict(conn.execute("SELECT id, status::text FROM nodes").fetchall())
    assert status[silent] == "offline"
    assert status[alive] == "online"
    assert _link(fed.url).sweep_once()["nodes_offline"] == 0


def test_sweep_requeues_lapsed_leases(conn: Connection, fed: Federation) -> None:
    node = fed.selected[0]
    lapsed, held = bus.send(conn, fed.run_id, [instruction(node), instruction(node)])
    store_messages.claim(conn, worker="dead", node_ids=[node], lease=0.1, limit=1)
    store_messages.claim(conn, worker="alive", node_ids=[node], lease=60, limit=1)
    time.sleep(0.2)
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
    (mid,) = bus.send(conn, fed.run_id, [instruction(node, ttl=0.1)])
    time.sleep(0.2)
    assert _link(fed.url).sweep_once()["expired"] == 1
    assert _link(fed.url).sweep_once()["expired"] == 0
    replies = conn.execute(
        "SELECT src_node_id, error_code, state::text FROM messages WHERE reply_to = %s", (mid,)
    ).fetchall()
    assert replies == [(node, ErrorCode.MESSAGE_UNAVAILABLE, "queued")]
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
    store_messages.reply(conn, worker="w", new=store_messages.NewReply(answered, {}, {}, []))
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
    conn.execute(
        "UPDATE nodes SET last_seen_at = now() - interval '1 hour' WHERE id = %s", (more[0],)
    )
    _set_running(conn, fed.run_id, heartbeat_age_s=3600)
    (stale_msg,) = bus.send(conn, fed.run_id, [instruction(fed.selected[0])])

    total = 0
    totals: Counter[str] = Counter()
    for _ in range(3):
        ids = bus.send(
            conn, run_id, [instruction(nodes[i % len(nodes)], ttl=0.1) for i in range(150)]
        )
        # Many of them held by a worker that died, whose leases ran out too.
        store_messages.claim(conn, worker="dead", node_ids=more, lease=0.05, limit=75)
        total += len(ids)
        time.sleep(0.15)
        results = _sweep_concurrently(fed.url)
        assert sum(r["expired"] for r in results) == len(ids)
        assert sum(r["requeued"] for r in results) == 0  # past their TTL: expire, not requeue
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
    ends with exactly one reply, real or error, and a dropped reply is a LeaseLost."""
    node = fed.selected[0]
    ids = bus.send(conn, fed.run_id, [instruction(node, ttl=0.5) for _ in range(200)])
    store_messages.claim(conn, worker="w", node_ids=[node], lease=60, limit=200)
    answered: list[int] = []
    lost: list[int] = []
    stop = threading.Event()
    failures: list[BaseException] = []

    def worker() -> None:
        try:
            with connect(fed.url) as c:
                for mid in ids:
                    try:
                        store_messages.reply(
                            c,
                            worker="w",
                            new=store_messages.NewReply(mid, {"m": {"ok": 1}}, {}, []),
                        )
                        answered.append(mid)
                    except LeaseLost:
                        lost.append(mid)
                    time.sleep(0.004)
        except BaseException as exc:
            failures.append(exc)

    def link() -> None:
        try:
            with connect(fed.url) as c:
                while not stop.is_set():
                    store_messages.expire(c, ErrorCode.MESSAGE_UNAVAILABLE)
                    time.sleep(0.005)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=worker), threading.Thread(target=link)]
    for t in threads:
        t.start()
    threads[0].join(30)
    time.sleep(0.05)
    stop.set()
    threads[1].join(30)
    assert failures == []
    assert answered and lost, "the race did not happen (tune the TTL)"
    assert sorted(answered + lost) == sorted(ids)

    rows = conn.execute(
        "SELECT i.id, i.state::text, count(r.id), min(r.error_code)"
        " FROM messages i LEFT JOIN messages r ON r.reply_to = i.id"
        " WHERE i.reply_to IS NULL GROUP BY i.id, i.state"
    ).fetchall()
    outcome = {mid: (state, n, code) for mid, state, n, code in rows}
    assert {outcome[mid] for mid in answered} == {("done", 1, None)}
    assert {outcome[mid] for mid in lost} == {("expired", 1, ErrorCode.MESSAGE_UNAVAILABLE)}
