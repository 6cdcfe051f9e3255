"""The link's sweeps, one `sweep_once` at a time and two links at once."""

from __future__ import annotations

import threading
import time
from typing import Any

from flpg import bus
from flpg.db import Connection, connect
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
        for r in conn.execute("SELECT id, state::text, claimed_by, lease_until IS NULL FROM messages")
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
        conn, "SELECT lease_until IS NULL AND finished_at IS NOT NULL FROM messages WHERE id = %s",
        (claimed,),
    )

    assert store_runs.get(conn, healthy).status == "running"
    assert scalar(conn, "SELECT state::text FROM messages WHERE id = %s", (other_msg,)) == "queued"
    assert _link(fed.url).sweep_once()["runs_failed"] == 0


def test_two_links_sweeping_concurrently_never_double_reply(
    conn: Connection, fed: Federation
) -> None:
    more = [register(conn, f"extra-{i}") for i in range(5)]
    run_id = create_run(conn, fed.selected + more)
    nodes = fed.selected + more
    total = 0
    for _ in range(3):
        ids = bus.send(conn, run_id, [instruction(nodes[i % len(nodes)], ttl=0.1) for i in range(150)])
        # Half of them claimed by a worker that died, with leases also running out.
        store_messages.claim(conn, worker="dead", node_ids=nodes, lease=0.05, limit=75)
        total += len(ids)
        time.sleep(0.15)
        barrier = threading.Barrier(2)
        results: list[dict[str, Any]] = []
        failures: list[BaseException] = []

        def sweep() -> None:
            try:
                link = _link(fed.url)
                with connect(fed.url) as c:
                    barrier.wait(10)
                    results.append(link._sweep(c))
            except BaseException as exc:
                failures.append(exc)

        threads = [threading.Thread(target=sweep) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert failures == []
        assert sum(r["expired"] for r in results) == len(ids)
        assert sum(r["requeued"] for r in results) == 0  # past their TTL: expire, not requeue

    counts = conn.execute(
        "SELECT i.id, count(r.id) FROM messages i LEFT JOIN messages r ON r.reply_to = i.id"
        " WHERE i.reply_to IS NULL AND i.run_id = %s GROUP BY i.id",
        (run_id,),
    ).fetchall()
    assert len(counts) == total
    assert {n for _, n in counts} == {1}
    assert scalar(
        conn, "SELECT count(*) FROM messages WHERE run_id = %s AND state = 'expired'", (run_id,)
    ) == total
