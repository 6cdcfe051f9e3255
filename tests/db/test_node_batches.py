"""Node-side batches on a real database: many instructions inserted, claimed and
answered at once (`flpg.node.replies`, `store.messages.claim`/`reply_batch`), with
the per-message guarantees of the one-at-a-time path: each instruction is completed
atomically with its own reply, a lost claim drops only that message's reply, runs
are served in turns, and each run is woken once per batch."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

from flpg import bus
from flpg.app import arrays as flpg_arrays
from flpg.app.message import Error, ErrorCode, Message
from flpg.app.records import ArrayRecord, MetricRecord, RecordDict
from flpg.node import replies as replies_module
from flpg.node.replies import Answer, write_replies
from flpg.states import run_channel
from flpg.store import messages as store_messages
from flpg.store import runs as store_runs
from flpg.store.db import Connection, Listener
from flpg.store.messages import NewInstruction

from .conftest import Federation, create_run, instruction, register, scalar


def _claim(conn: Connection, worker: str, node_ids: list[int], limit: int = 1000) -> list[Any]:
    return store_messages.claim(conn, worker=worker, node_ids=node_ids, lease=60, limit=limit)


def _answer(message: Message, value: float, **arrays: np.ndarray[Any, Any]) -> Message:
    content = RecordDict({"m": MetricRecord({"v": value})})
    if arrays:
        content["arrays"] = ArrayRecord(dict(arrays))
    return Message(content, reply_to=message)


def _replies(conn: Connection, run_id: int, ids: list[int]) -> dict[int, Message]:
    """The replies to `ids` (taken like run `run_id`'s ServerApp does), by instruction id."""
    pulled = store_messages.pull_replies(conn, run_id, ids)
    return {int(m.metadata.reply_to_message_id or 0): m for m in bus.load(conn, pulled)}


def test_a_batch_answers_every_message_with_its_own_reply_and_arrays(
    conn: Connection, fed: Federation
) -> None:
    shared = np.arange(3, dtype=np.float32)
    sent = bus.send(
        conn,
        fed.run_id,
        [instruction(n, RecordDict({"arrays": ArrayRecord({"w": shared})})) for n in fed.selected],
    )
    rows = _claim(conn, "w", fed.selected)
    loaded = bus.load(conn, rows)
    answers = [
        Answer(row, reply=_answer(m, float(i), w=m.content["arrays"]["w"].numpy() + i))  # type: ignore[union-attr]
        for i, (row, m) in enumerate(zip(rows, loaded, strict=True))
    ]
    written = write_replies(conn, "w", fed.run_id, answers)
    assert [(w.message_id, w.outcome) for w in written] == [(mid, "replied") for mid in sent]

    got = _replies(conn, fed.run_id, sent)
    for i, mid in enumerate(sent):
        assert got[mid].content["m"]["v"] == float(i)
        np.testing.assert_array_equal(got[mid].content["arrays"]["w"].numpy(), shared + i)  # type: ignore[union-attr]
    states = conn.execute(
        "SELECT state::text, count(*) FROM messages WHERE id = ANY(%s) GROUP BY 1", [sent]
    ).fetchall()
    assert states == [("done", len(sent))]


def test_a_lost_lease_drops_only_that_messages_reply(conn: Connection, fed: Federation) -> None:
    sent = bus.send(conn, fed.run_id, [instruction(n) for n in fed.selected])
    rows = _claim(conn, "a", fed.selected)
    lost = rows[1]
    # Its lease ran out and another worker of the node took it meanwhile.
    conn.execute(
        "UPDATE messages SET lease_until = now() - interval '1 s' WHERE id = %s", [lost.id]
    )
    assert store_messages.requeue_lapsed(conn) == 1
    (again,) = _claim(conn, "b", [lost.dst_node_id])
    assert again.id == lost.id

    loaded = bus.load(conn, rows)
    written = write_replies(
        conn,
        "a",
        fed.run_id,
        [Answer(r, reply=_answer(m, 1.0)) for r, m in zip(rows, loaded, strict=True)],
    )
    assert {w.message_id: w.outcome for w in written} == {
        rows[0].id: "replied",
        lost.id: "lease-lost",
        rows[2].id: "replied",
    }
    assert "no longer claimed by this worker" in written[1].detail
    assert scalar(conn, "SELECT count(*) FROM messages WHERE reply_to = %s", [lost.id]) == 0
    assert scalar(conn, "SELECT claimed_by FROM messages WHERE id = %s", [lost.id]) == "b"
    assert scalar(conn, "SELECT state::text FROM messages WHERE id = %s", [lost.id]) == "claimed"
    assert sorted(_replies(conn, fed.run_id, sent)) == sorted([rows[0].id, rows[2].id])

    # The worker that holds it now still answers it.
    (only,) = write_replies(conn, "b", fed.run_id, [Answer(again, reply=_answer(loaded[1], 2.0))])
    assert only.outcome == "replied"


def test_errors_and_replies_share_a_batch(conn: Connection, fed: Federation) -> None:
    sent = bus.send(conn, fed.run_id, [instruction(n) for n in fed.selected])
    rows = _claim(conn, "w", fed.selected)
    loaded = bus.load(conn, rows)
    answers = [
        Answer(rows[0], reply=_answer(loaded[0], 1.0)),
        Answer(rows[1], error=Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, "ValueError: boom")),
        Answer(rows[2], reply=Message.from_metadata(loaded[2].metadata, error=Error(7, "own"))),
    ]
    written = write_replies(conn, "w", fed.run_id, answers)
    assert [(w.outcome, w.detail) for w in written] == [
        ("replied", ""),
        ("error", "ValueError: boom"),
        ("error", "own"),
    ]
    got = _replies(conn, fed.run_id, sent)
    assert not got[sent[0]].has_error()
    assert (got[sent[1]].error.code, got[sent[1]].error.reason) == (
        ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
        "ValueError: boom",
    )
    assert (got[sent[2]].error.code, got[sent[2]].error.reason) == (7, "own")


def test_a_reply_that_cannot_be_stored_becomes_an_error_for_that_message_alone(
    conn: Connection, fed: Federation, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_encode = flpg_arrays.encode

    def encode(arr: np.ndarray[Any, Any], name: str) -> Any:
        if "bad" in name:
            raise TypeError("cannot store this one")
        return real_encode(arr, name)

    monkeypatch.setattr(flpg_arrays, "encode", encode)
    sent = bus.send(conn, fed.run_id, [instruction(n) for n in fed.selected])
    rows = _claim(conn, "w", fed.selected)
    loaded = bus.load(conn, rows)
    one = np.ones(2)
    answers = [
        Answer(rows[0], reply=_answer(loaded[0], 0.0, good=one.copy())),
        Answer(rows[1], reply=_answer(loaded[1], 1.0, bad=one.copy())),
        Answer(rows[2], reply=_answer(loaded[2], 2.0, good=one.copy())),
    ]
    written = write_replies(conn, "w", fed.run_id, answers)
    assert [(w.outcome, w.detail) for w in written] == [
        ("replied", ""),
        ("error", "TypeError: cannot store this one"),
        ("replied", ""),
    ]
    got = _replies(conn, fed.run_id, sent)
    assert got[sent[1]].error.code == ErrorCode.CLIENT_APP_RAISED_EXCEPTION
    np.testing.assert_array_equal(got[sent[2]].content["arrays"]["good"].numpy(), one)  # type: ignore[union-attr]


def test_small_reply_payloads_commit_with_their_replies(
    conn: Connection, fed: Federation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reply whose metrics cannot be stored fails after its arrays were written; as
    the small payloads share the replies' transaction, nothing of the failed attempt
    stays behind: only the good replies' arrays are stored."""
    real = replies_module.records_to_json

    def records_to_json(records: Any) -> Any:
        if any(dict(r).get("v") == 1.0 for r in records.values()):
            raise ValueError("cannot store this metric")
        return real(records)

    monkeypatch.setattr(replies_module, "records_to_json", records_to_json)
    sent = bus.send(conn, fed.run_id, [instruction(n) for n in fed.selected])
    rows = _claim(conn, "w", fed.selected)
    loaded = bus.load(conn, rows)
    before = scalar(conn, "SELECT count(*) FROM arrays WHERE run_id = %s", [fed.run_id])
    answers = [
        Answer(row, reply=_answer(msg, float(i), a=np.full(3, float(i))))
        for i, (row, msg) in enumerate(zip(rows, loaded, strict=True))
    ]
    written = write_replies(conn, "w", fed.run_id, answers)
    assert [w.outcome for w in written] == ["replied", "error", "replied"]
    after = scalar(conn, "SELECT count(*) FROM arrays WHERE run_id = %s", [fed.run_id])
    assert after - before == 2
    got = _replies(conn, fed.run_id, sent)
    np.testing.assert_array_equal(got[rows[2].id].content["arrays"]["a"].numpy(), np.full(3, 2.0))  # type: ignore[union-attr]


def test_a_batch_wakes_each_run_once(conn: Connection, fed: Federation) -> None:
    sent = bus.send(conn, fed.run_id, [instruction(fed.selected[i % 3]) for i in range(12)])
    rows = _claim(conn, "w", fed.selected)
    assert sorted(r.id for r in rows) == sorted(sent)
    loaded = bus.load(conn, rows)
    listener = Listener(fed.url, [run_channel(fed.run_id)], application_name="t")
    try:
        write_replies(
            conn,
            "w",
            fed.run_id,
            [Answer(r, reply=_answer(m, 0.0)) for r, m in zip(rows, loaded, strict=True)],
        )
        # A marker sent after the batch committed: notifications arrive in commit
        # order, so everything the batch sent is in before it (no timed wait).
        conn.execute("SELECT pg_notify(%s, 'marker')", [run_channel(fed.run_id)])
        got: list[Any] = []
        deadline = time.monotonic() + 30
        while not any(n.payload == "marker" for n in got):
            assert time.monotonic() < deadline, f"no marker notification: {got}"
            got += listener.wait(1.0)
    finally:
        listener.close()
    got = got[: [n.payload for n in got].index("marker")]
    assert [n.channel for n in got] == [run_channel(fed.run_id)]


def test_small_and_chunked_reply_arrays_round_trip(conn: Connection, fed: Federation) -> None:
    """Arrays of one chunk at most are stored together in one statement, bigger ones
    chunk by chunk; both read back byte-exact, whatever their shape."""
    (mid,) = bus.send(conn, fed.run_id, [instruction(fed.selected[0])])
    (row,) = _claim(conn, "w", fed.selected)
    (message,) = bus.load(conn, [row])
    rng = np.random.default_rng(3)
    arrays = {
        "scalar": np.array(2.5),
        "empty": np.zeros((0,), dtype=np.int32),
        "matrix": rng.random((3, 4)).astype(np.float32),
        "big": rng.random(100),  # 800 bytes: 4 chunks of 256
        "fortran": np.asfortranarray(rng.random((5, 6))),
    }
    (written,) = write_replies(
        conn, "w", fed.run_id, [Answer(row, reply=_answer(message, 0.0, **arrays))], chunk_size=256
    )
    assert written.outcome == "replied"
    got = _replies(conn, fed.run_id, [mid])[mid].content["arrays"]
    for name, expected in arrays.items():
        value = got[name].numpy()  # type: ignore[union-attr]
        assert value.shape == expected.shape and value.dtype == expected.dtype, name
        np.testing.assert_array_equal(value, expected)
    chunks = dict(
        conn.execute(
            "SELECT a.nbytes, a.n_chunks FROM arrays a JOIN message_arrays ma ON ma.array_id = a.id"
            " JOIN messages r ON r.id = ma.message_id WHERE r.reply_to = %s",
            [mid],
        ).fetchall()
    )
    assert chunks == {8: 1, 0: 0, 48: 1, 800: 4, 240: 1}


def test_batch_insert_keeps_order_links_and_selection(conn: Connection, fed: Federation) -> None:
    shared = np.ones(2)
    messages = [
        instruction(fed.selected[i % 3], RecordDict({"a": ArrayRecord({"x": shared})}))
        for i in range(7)
    ]
    sent = bus.send(conn, fed.run_id, messages)
    assert sent == sorted(sent) and len(set(sent)) == 7
    assert [m.metadata.message_id for m in messages] == [str(i) for i in sent]
    assert (
        scalar(
            conn,
            "SELECT count(DISTINCT array_id) FROM message_arrays WHERE message_id = ANY(%s)",
            [sent],
        )
        == 1
    )
    dst = dict(
        conn.execute("SELECT id, dst_node_id FROM messages WHERE id = ANY(%s)", [sent]).fetchall()
    )
    assert [dst[mid] for mid in sent] == [fed.selected[i % 3] for i in range(7)]
    before = scalar(conn, "SELECT count(*) FROM messages")
    with pytest.raises(Exception, match="not in the node selection"):
        bus.send(conn, fed.run_id, [instruction(fed.selected[0]), instruction(fed.outside)])
    assert scalar(conn, "SELECT count(*) FROM messages") == before


def test_batch_claims_over_many_nodes_take_runs_in_turns(conn: Connection, db_url: str) -> None:
    """A worker serving 50 (virtual) node ids claims 10 messages at once: a run with 50
    queued messages does not crowd out another run's 5, which all come in the batch."""
    nodes = [register(conn, f"v-{i}") for i in range(50)]
    big, small = create_run(conn, nodes), create_run(conn, nodes)
    store_messages.insert_instructions(
        conn, big, [NewInstruction(n, "1", "train", 60.0, {}, {}, []) for n in nodes]
    )
    store_messages.insert_instructions(
        conn, small, [NewInstruction(n, "1", "train", 60.0, {}, {}, []) for n in nodes[:5]]
    )
    claimed = _claim(conn, "w", nodes, limit=10)
    assert sorted(r.run_id for r in claimed) == [big] * 5 + [small] * 5
    # The next batch goes to the run served least recently when both wait.
    store_messages.insert_instructions(
        conn, small, [NewInstruction(n, "2", "train", 60.0, {}, {}, []) for n in nodes[:3]]
    )
    again = _claim(conn, "w", nodes, limit=6)
    assert sorted(r.run_id for r in again) == [big] * 3 + [small] * 3


def test_starting_on_nodes_names_live_runs_that_select_the_nodes(
    conn: Connection, fed: Federation
) -> None:
    other = create_run(conn, [fed.outside])
    assert store_runs.starting_on_nodes(conn, [fed.run_id, other], fed.selected) == [fed.run_id]
    store_runs.request_stop(conn, fed.run_id)
    assert store_runs.starting_on_nodes(conn, [fed.run_id, other], fed.selected) == []
