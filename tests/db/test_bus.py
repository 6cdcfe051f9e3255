"""The message bus on a real database: claiming, leases, TTLs, NOTIFY, replies,
payload storage and JSON records."""

from __future__ import annotations

import math
import re
import statistics
import threading
import time
from collections import Counter
from typing import Any

import numpy as np
import psycopg
import pytest
from psycopg import errors

from flpg import bus
from flpg.app.message import Error, ErrorCode, Message, error_code_to_stored
from flpg.app.records import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flpg.errors import LeaseLost, PayloadCorrupt, SelectionError
from flpg.states import node_channel
from flpg.store import messages as store_messages
from flpg.store import nodes as store_nodes
from flpg.store import runs as store_runs
from flpg.store.db import Connection, Listener, connect
from flpg.store.messages import NewInstruction, NewReply
from tests.db import _replies as reply_path

from ._chunks import ALL_CHUNKS, on_chunks_of
from .conftest import Federation, instruction, scalar

STORED_EXPIRED = error_code_to_stored(ErrorCode.MESSAGE_UNAVAILABLE)
"""The expiry code as the error_code column holds it (flpg's first numbering)."""


def _claim_all(conn: Connection, worker: str, node_ids: list[int], lease: float = 60) -> list[Any]:
    return store_messages.claim(conn, worker=worker, node_ids=node_ids, lease=lease, limit=1000)


def _reply_rows(conn: Connection, instruction_id: int) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT id, src_node_id, state, error_code, error_reason FROM messages WHERE reply_to = %s",
        (instruction_id,),
    ).fetchall()


# --------------------------------------------------------------------------- claiming


def test_racing_workers_never_claim_a_message_twice(conn: Connection, fed: Federation) -> None:
    n_messages, n_workers = 500, 4
    sent = bus.send(conn, fed.run_id, [instruction(fed.selected[i % 3]) for i in range(n_messages)])
    claimed: dict[str, list[int]] = {f"w{i}": [] for i in range(n_workers)}
    barrier = threading.Barrier(n_workers)
    failures: list[BaseException] = []

    def worker(name: str) -> None:
        try:
            with connect(fed.url, application_name=name) as c:
                barrier.wait(10)
                batch = 1 + int(name[1:])  # different batch sizes interleave differently
                while True:
                    got = store_messages.claim(
                        c, worker=name, node_ids=fed.selected, lease=60, limit=batch
                    )
                    if not got:
                        break
                    assert len(got) <= batch, f"claimed {len(got)} > limit {batch}"
                    claimed[name].extend(m.id for m in got)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(name,)) for name in claimed]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert failures == []

    all_claims = [mid for ids in claimed.values() for mid in ids]
    duplicates = [mid for mid, n in Counter(all_claims).items() if n > 1]
    assert duplicates == []
    assert sorted(all_claims) == sorted(sent)
    assert sum(1 for ids in claimed.values() if ids) >= 2, "the workers did not race"
    # The rows agree with what each worker was told.
    owner = {mid: name for name, ids in claimed.items() for mid in ids}
    rows = conn.execute(
        "SELECT id, claimed_by, attempts, state::text FROM messages WHERE reply_to IS NULL"
    ).fetchall()
    assert {(r[0], r[1], r[2], r[3]) for r in rows} == {
        (mid, owner[mid], 1, "claimed") for mid in sent
    }


def _lapse(conn: Connection, column: str, ids: list[int]) -> None:
    """Age `column` (`lease_until` or `deadline`) of messages `ids` to a second ago:
    a lease or TTL that ran out, without sleeping through it."""
    assert column in ("lease_until", "deadline")
    conn.execute(f"UPDATE messages SET {column} = now() - interval '1 s' WHERE id = ANY(%s)", [ids])


def test_lapsed_lease_is_requeued_and_the_first_worker_loses_its_reply(
    conn: Connection, fed: Federation
) -> None:
    node = fed.selected[0]
    (mid,) = bus.send(conn, fed.run_id, [instruction(node)])
    (first,) = store_messages.claim(conn, worker="a", node_ids=[node], lease=60, limit=5)
    assert (first.id, first.attempts) == (mid, 1)
    # While the lease holds, nobody else gets the message and the sweep leaves it alone.
    assert _claim_all(conn, "b", [node]) == []
    assert store_messages.requeue_lapsed(conn) == 0

    _lapse(conn, "lease_until", [mid])
    assert store_messages.requeue_lapsed(conn) == 1
    assert store_messages.requeue_lapsed(conn) == 0
    (second,) = _claim_all(conn, "b", [node])
    assert (second.id, second.attempts) == (mid, 2)

    late = Message(
        RecordDict({"m": MetricRecord({"loss": 1.0})}), reply_to=bus.load(conn, [first])[0]
    )
    with pytest.raises(LeaseLost, match=str(mid)):
        reply_path.reply(conn, "a", mid, fed.run_id, late)
    assert _reply_rows(conn, mid) == []
    assert scalar(conn, "SELECT claimed_by FROM messages WHERE id = %s", (mid,)) == "b"
    assert scalar(conn, "SELECT count(*) FROM messages") == 1

    # The worker that holds the lease can still reply.
    reply_id = reply_path.reply(conn, "b", mid, fed.run_id, late)
    assert [r[0] for r in _reply_rows(conn, mid)] == [reply_id]
    assert scalar(conn, "SELECT state::text FROM messages WHERE id = %s", (mid,)) == "done"


def test_extend_lease_keeps_the_message_from_the_sweep(conn: Connection, fed: Federation) -> None:
    node = fed.selected[0]
    (mid,) = bus.send(conn, fed.run_id, [instruction(node)])
    store_messages.claim(conn, worker="a", node_ids=[node], lease=1, limit=1)
    _lapse(conn, "lease_until", [mid])  # the 1 s lease ran out, not yet swept
    assert store_messages.extend_lease(conn, worker="b", ids=[mid], lease=60) == []
    assert store_messages.extend_lease(conn, worker="a", ids=[mid], lease=60) == [mid]
    assert scalar(
        conn, "SELECT lease_until > now() + interval '30 s' FROM messages WHERE id = %s", (mid,)
    )
    assert store_messages.requeue_lapsed(conn) == 0
    assert scalar(conn, "SELECT claimed_by FROM messages WHERE id = %s", (mid,)) == "a"


def test_release_hands_claims_back_and_wakes_the_node(conn: Connection, fed: Federation) -> None:
    node = fed.selected[0]
    ids = bus.send(conn, fed.run_id, [instruction(node) for _ in range(3)])
    store_messages.claim(conn, worker="leaving", node_ids=[node], lease=60, limit=2)
    store_messages.claim(conn, worker="staying", node_ids=[node], lease=60, limit=1)
    listener = Listener(fed.url, [node_channel(node)], application_name="t")
    try:
        assert store_messages.release(conn, worker="leaving") == 2
        got = listener.wait(2.0)
    finally:
        listener.close()
    assert [(n.channel, n.payload) for n in got] == [(node_channel(node), str(fed.run_id))]
    again = _claim_all(conn, "next", [node])
    assert [(m.id, m.attempts) for m in again] == [(ids[0], 2), (ids[1], 2)]
    assert scalar(conn, "SELECT claimed_by FROM messages WHERE id = %s", (ids[2],)) == "staying"


# --------------------------------------------------------------------------- TTL


def test_expire_answers_with_exactly_one_error_reply(conn: Connection, fed: Federation) -> None:
    a, b = fed.selected[:2]
    queued, claimed, fresh = bus.send(
        conn,
        fed.run_id,
        [instruction(a, ttl=600), instruction(b, ttl=600), instruction(a, ttl=600)],
    )
    store_messages.claim(conn, worker="w", node_ids=[b], lease=60, limit=1)
    assert store_messages.expire(conn, ErrorCode.MESSAGE_UNAVAILABLE) == 0
    _lapse(conn, "deadline", [queued, claimed])

    assert store_messages.expire(conn, ErrorCode.MESSAGE_UNAVAILABLE) == 2
    assert store_messages.expire(conn, ErrorCode.MESSAGE_UNAVAILABLE) == 0

    for mid, node in ((queued, a), (claimed, b)):
        replies = _reply_rows(conn, mid)
        assert len(replies) == 1
        _, src, state, code, reason = replies[0]
        assert (src, state, code) == (node, "queued", STORED_EXPIRED)
        assert str(mid) in reason and "TTL" in reason
        row = conn.execute(
            "SELECT state::text, finished_at IS NOT NULL, lease_until FROM messages WHERE id = %s",
            (mid,),
        ).fetchone()
        assert row == ("expired", True, None)
    assert _reply_rows(conn, fresh) == []
    assert scalar(conn, "SELECT count(*) FROM messages WHERE reply_to IS NOT NULL") == 2

    # The worker that held the claim can no longer reply.
    with pytest.raises(LeaseLost):
        reply_path.reply_new(conn, worker="w", new=NewReply(claimed, {}, {}, []))
    # The ServerApp receives the error replies as Messages carrying an Error.
    pulled = bus.load(conn, store_messages.pull_replies(conn, fed.run_id, [queued, claimed, fresh]))
    assert sorted(m.metadata.reply_to_message_id or "" for m in pulled) == sorted(
        [str(queued), str(claimed)]
    )
    assert all(m.has_error() and m.error.code == ErrorCode.MESSAGE_UNAVAILABLE for m in pulled)
    assert store_messages.pull_replies(conn, fed.run_id, [queued, claimed]) == []


def test_expired_message_is_not_claimable(conn: Connection, fed: Federation) -> None:
    node = fed.selected[0]
    (mid,) = bus.send(conn, fed.run_id, [instruction(node, ttl=600)])
    _lapse(conn, "deadline", [mid])
    # Past its deadline but not yet swept: a worker must not pick it up.
    assert _claim_all(conn, "w", [node]) == []


# --------------------------------------------------------------------------- NOTIFY


def test_notify_wakes_a_listener_and_records_its_latency(
    conn: Connection, fed: Federation, record_property: Any
) -> None:
    node = fed.selected[1]
    listener = Listener(fed.url, [node_channel(node)], application_name="flpg-test-listen")
    from_send: list[float] = []  # send start -> wake: an upper bound
    from_commit: list[float] = []  # bus.send returned (committed) -> wake; may be < 0
    try:
        for _ in range(10):
            sent_at: list[float] = []

            def send(sent_at: list[float] = sent_at) -> None:
                time.sleep(0.05)
                with connect(fed.url) as c:
                    sent_at.append(time.monotonic())
                    bus.send(c, fed.run_id, [instruction(node)])
                    sent_at.append(time.monotonic())

            sender = threading.Thread(target=send)
            t0 = time.monotonic()
            sender.start()
            got = listener.wait(5.0)
            woke = time.monotonic()
            sender.join(10)
            assert [(n.channel, n.payload) for n in got] == [(node_channel(node), str(fed.run_id))]
            # Woken by the NOTIFY, not by the wait's 5 s timeout (that returns []).
            assert woke - t0 < 5.0
            from_send.append(woke - sent_at[0])
            from_commit.append(woke - sent_at[1])
    finally:
        listener.close()
    ms = {
        "notify_latency_from_send_median_ms": statistics.median(from_send) * 1000,
        "notify_latency_from_send_max_ms": max(from_send) * 1000,
        "notify_latency_from_commit_median_ms": statistics.median(from_commit) * 1000,
        "notify_latency_from_commit_max_ms": max(from_commit) * 1000,
    }
    for key, value in ms.items():
        record_property(key, round(value, 3))
    # Latency is reported, not asserted: a timing target belongs in benchmarks/.
    print("\nNOTIFY wake-up: " + ", ".join(f"{k} {v:.2f}" for k, v in ms.items()))


def test_listener_is_not_woken_by_other_nodes(conn: Connection, fed: Federation) -> None:
    listener = Listener(fed.url, [node_channel(fed.selected[0])], application_name="t")
    try:
        bus.send(conn, fed.run_id, [instruction(fed.selected[1])])
        t0 = time.monotonic()
        assert listener.wait(0.3) == []
        assert time.monotonic() - t0 >= 0.29
    finally:
        listener.close()


# --------------------------------------------------------------------------- replies


def test_duplicate_reply_is_rejected_by_the_database(conn: Connection, fed: Federation) -> None:
    node = fed.selected[0]
    (mid,) = bus.send(conn, fed.run_id, [instruction(node)])
    (row,) = _claim_all(conn, "w", [node])
    reply = Message(RecordDict({"m": MetricRecord({"n": 1})}), reply_to=bus.load(conn, [row])[0])
    first = reply_path.reply(conn, "w", mid, fed.run_id, reply)

    # A plain retry finds the instruction done: nothing is written.
    with pytest.raises(LeaseLost):
        reply_path.reply(conn, "w", mid, fed.run_id, reply)

    # A duplicated delivery: the instruction is claimed again although it has a reply.
    conn.execute(
        "UPDATE messages SET state = 'claimed', finished_at = NULL, claimed_by = 'w2',"
        " lease_until = now() + interval '1 min' WHERE id = %s",
        (mid,),
    )
    # The unique reply_to keeps the first reply; the second writes nothing.
    with pytest.raises(LeaseLost, match=str(mid)):
        reply_path.reply(conn, "w2", mid, fed.run_id, reply)
    assert [r[0] for r in _reply_rows(conn, mid)] == [first]

    with pytest.raises(errors.UniqueViolation) as info:
        conn.execute(
            "INSERT INTO messages (run_id, src_node_id, reply_to, message_type, ttl_seconds,"
            " deadline) VALUES (%s, %s, %s, 'train', 60, now())",
            (fed.run_id, node, mid),
        )
    assert info.value.diag.constraint_name == "uq_messages_reply_to"
    assert [r[0] for r in _reply_rows(conn, mid)] == [first]


def test_error_reply_round_trips(conn: Connection, fed: Federation) -> None:
    node = fed.selected[2]
    (mid,) = bus.send(conn, fed.run_id, [instruction(node)])
    _claim_all(conn, "w", [node])
    reply_path.error_reply(conn, "w", mid, Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, "boom"))
    (msg,) = bus.load(conn, store_messages.pull_replies(conn, fed.run_id, [mid]))
    assert msg.error == Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, "boom")
    assert (msg.metadata.src_node_id, msg.metadata.reply_to_message_id) == (node, str(mid))


# --------------------------------------------------------------------------- payloads


def _counts(conn: Connection) -> tuple[int, int, int]:
    return conn.execute(
        f"SELECT (SELECT count(*) FROM arrays), (SELECT count(*) FROM {ALL_CHUNKS} c),"
        " (SELECT count(*) FROM message_arrays)"
    ).fetchone()  # type: ignore[return-value]


@pytest.mark.parametrize("shared_record", [True, False], ids=["same-record", "record-per-message"])
def test_broadcast_stores_each_array_once(
    conn: Connection, fed: Federation, shared_record: bool
) -> None:
    rng = np.random.default_rng(0)
    model = {"w": rng.standard_normal((300, 10)), "b": rng.standard_normal(10).astype(np.float32)}
    record = ArrayRecord(model)
    messages = [
        instruction(node, RecordDict({"model": record if shared_record else ArrayRecord(model)}))
        for node in fed.selected
    ]
    ids = bus.send(conn, fed.run_id, messages, chunk_size=4096)
    assert [m.metadata.message_id for m in messages] == [str(i) for i in ids]
    assert conn.execute("SELECT id, dst_node_id FROM messages ORDER BY id").fetchall() == list(
        zip(ids, fed.selected, strict=True)
    )

    n_chunks = math.ceil(model["w"].nbytes / 4096) + math.ceil(model["b"].nbytes / 4096)
    assert _counts(conn) == (2, n_chunks, 6)
    refs = conn.execute(
        "SELECT message_id, array_name, array_id FROM message_arrays ORDER BY 1, 2"
    ).fetchall()
    per_message = {mid: {(name, aid) for m, name, aid in refs if m == mid} for mid in ids}
    assert len({frozenset(v) for v in per_message.values()}) == 1

    rows = _claim_all(conn, "w", fed.selected)
    loaded = bus.load(conn, rows)
    assert [m.metadata.message_id for m in loaded] == [str(i) for i in ids]
    for m in loaded:
        assert list(m.content["model"]) == ["w", "b"]
        for name, original in model.items():
            got = m.content["model"][name].numpy()
            assert got.dtype == original.dtype and got.shape == original.shape
            assert got.tobytes() == original.tobytes()
    # Each loaded message owns its arrays: mutating one leaves the others alone.
    for i, m in enumerate(loaded):
        m.content["model"]["w"].numpy()[:] = i + 100
    for i, m in enumerate(loaded):
        assert np.all(m.content["model"]["w"].numpy() == i + 100)
    assert model["w"][0, 0] != 100  # nor does it touch the sender's array


DTYPE_CASES = {
    "f8-multi-chunk": np.random.default_rng(1).standard_normal((70, 13)),
    "f4-exact-chunk-multiple": np.arange(750, dtype=np.float32),  # 3000 bytes
    "i1-one-byte-over": np.arange(1001, dtype=np.int64).astype(np.int8),
    "u1-exactly-one-chunk": np.arange(1000, dtype=np.int64).astype(np.uint8),
    "f2": np.linspace(-3, 3, 999, dtype=np.float16),
    "i4-big-endian-input": np.arange(600, dtype=">i4"),
    "f4-big-endian": np.linspace(-1, 1, 333, dtype=">f4"),
    "u8-fortran-order": np.asfortranarray(np.arange(400, dtype=np.uint64).reshape(20, 20)),
    "c16": (np.arange(100) + 1j * np.arange(100)[::-1]).astype(np.complex128),
    "c8": (np.arange(10) - 1j).astype(np.complex64),
    "bool": np.arange(2500) % 3 == 0,
    "i2-negative": -np.arange(777, dtype=np.int16),
    "nan-and-inf": np.array([np.nan, np.inf, -np.inf, -0.0, 5e-324]),
    "empty": np.zeros((0, 3), dtype=np.float32),
    "empty-1d": np.array([], dtype=np.int64),
    "0-d": np.array(3.5),
    "0-d-bool": np.array(True),
    "high-rank": np.arange(2 * 3 * 4 * 5 * 6, dtype=np.int32).reshape(2, 3, 4, 5, 6),
}


def test_chunked_arrays_round_trip_byte_exact(conn: Connection, fed: Federation) -> None:
    node = fed.selected[0]
    record = ArrayRecord(DTYPE_CASES)
    bus.send(conn, fed.run_id, [instruction(node, RecordDict({"a": record}))], chunk_size=1000)

    stored = conn.execute(
        "SELECT ma.array_name, a.dtype, a.shape, a.nbytes, a.n_chunks,"
        f" (SELECT count(*) FROM {ALL_CHUNKS} c WHERE c.array_id = a.id),"
        f" (SELECT max(length(c.data)) FROM {ALL_CHUNKS} c WHERE c.array_id = a.id)"
        " FROM message_arrays ma JOIN arrays a ON a.id = ma.array_id ORDER BY ma.position"
    ).fetchall()
    assert [r[0] for r in stored] == list(DTYPE_CASES)
    for name, dtype, shape, nbytes, n_chunks, chunk_rows, biggest in stored:
        original = DTYPE_CASES[name]
        assert (tuple(shape), nbytes) == (original.shape, original.nbytes), name
        assert dtype == original.dtype.str, name  # byte order explicit: '<f4', '>f4', '|u1'
        assert n_chunks == chunk_rows == math.ceil(original.nbytes / 1000), name
        assert (biggest or 0) <= 1000, name

    (row,) = _claim_all(conn, "w", [node])
    (msg,) = bus.load(conn, [row])
    got = msg.content["a"]
    assert list(got) == list(DTYPE_CASES)
    for name, original in DTYPE_CASES.items():
        assert got[name].dtype == str(original.dtype), name  # Flower's spelling: 'float32'
        arr = got[name].numpy()
        expected = np.ascontiguousarray(original)  # big-endian comes back big-endian
        assert arr.shape == original.shape, name
        assert arr.dtype == original.dtype, name
        assert arr.tobytes() == expected.tobytes(), name
        assert np.array_equal(arr, original, equal_nan=arr.dtype.kind in "fc"), name
        assert arr.flags.writeable, name


CORRUPTIONS: dict[str, list[str]] = {
    "deleted-middle-chunk": ["DELETE FROM array_chunks WHERE array_id = %(aid)s AND seq = 1"],
    "deleted-first-chunk": ["DELETE FROM array_chunks WHERE array_id = %(aid)s AND seq = 0"],
    "deleted-last-chunk": [
        "DELETE FROM array_chunks WHERE array_id = %(aid)s"
        " AND seq = (SELECT max(seq) FROM array_chunks WHERE array_id = %(aid)s)"
    ],
    "flipped-byte": [
        "UPDATE array_chunks SET data = set_byte(data, 7, 255 - get_byte(data, 7))"
        " WHERE array_id = %(aid)s AND seq = 2"
    ],
    "truncated-chunk": [
        "UPDATE array_chunks SET data = substring(data FROM 1 FOR 10)"
        " WHERE array_id = %(aid)s AND seq = 0"
    ],
    "extra-chunk": [
        "INSERT INTO array_chunks (array_id, seq, data)"
        " SELECT %(aid)s, max(seq) + 1, '\\x00'::bytea FROM array_chunks"
        " WHERE array_id = %(aid)s"
    ],
    "swapped-chunks": [  # same lengths, right count, wrong order: only the digest sees it
        "UPDATE array_chunks SET seq = seq + 1000 WHERE array_id = %(aid)s AND seq IN (0, 1)",
        "UPDATE array_chunks SET seq = CASE seq WHEN 1000 THEN 1 ELSE 0 END"
        " WHERE array_id = %(aid)s AND seq IN (1000, 1001)",
    ],
}


@pytest.mark.parametrize("statements", list(CORRUPTIONS.values()), ids=list(CORRUPTIONS))
def test_corrupt_payload_raises_naming_array_and_message(
    conn: Connection, fed: Federation, statements: list[str]
) -> None:
    node = fed.selected[0]
    good = np.arange(100, dtype=np.float64)
    bad = np.random.default_rng(2).standard_normal(1000)  # 8 chunks of 1000 bytes
    content = RecordDict({"params": ArrayRecord({"good": good, "victim": bad})})
    (mid,) = bus.send(conn, fed.run_id, [instruction(node, content)], chunk_size=1000)
    aid = scalar(conn, "SELECT array_id FROM message_arrays WHERE array_name = 'victim'")
    for sql in statements:
        assert on_chunks_of(conn, aid, sql, {"aid": aid}) >= 1

    (row,) = _claim_all(conn, "w", [node])
    with pytest.raises(PayloadCorrupt) as info:
        bus.load(conn, [row])
    text = str(info.value)
    assert "victim" in text and f"message {mid}" in text, text
    assert "good" not in text


# --------------------------------------------------------------------------- selection


def test_send_outside_selection_leaves_no_message_rows(conn: Connection, fed: Federation) -> None:
    content = RecordDict({"model": ArrayRecord({"w": np.ones(10)})})
    messages = [instruction(fed.selected[0], content), instruction(fed.outside, content)]
    with pytest.raises(SelectionError) as info:
        bus.send(conn, fed.run_id, messages)
    text = str(info.value)
    assert re.search(rf"\bnode {fed.outside}\b", text), text
    assert re.search(rf"\brun {fed.run_id}\b", text), text
    assert not re.search(rf"\b{fed.selected[0]}\b", text.replace(f"run {fed.run_id}", "")), text
    assert scalar(conn, "SELECT count(*) FROM messages") == 0
    assert scalar(conn, "SELECT count(*) FROM message_arrays") == 0
    assert all(m.metadata.message_id is None for m in messages)
    # The node was never woken.
    assert _claim_all(conn, "w", [fed.selected[0], fed.outside]) == []


def test_selection_error_names_only_nodes_outside_the_selection(
    conn: Connection, fed: Federation
) -> None:
    """A selected node that is offline is still in the selection; only the outsider
    is to blame."""
    offline = fed.selected[1]
    store_nodes.set_offline(conn, [offline])
    with pytest.raises(SelectionError) as info:
        bus.send(conn, fed.run_id, [instruction(offline), instruction(fed.outside)])
    text = str(info.value).replace(f"run {fed.run_id}", "run R")
    assert re.search(rf"\b{fed.outside}\b", text), text
    assert not re.search(rf"\b{offline}\b", text), text


def test_send_to_offline_selected_node_is_allowed(conn: Connection, fed: Federation) -> None:
    offline = fed.selected[1]
    store_nodes.set_offline(conn, [offline])
    (mid,) = bus.send(conn, fed.run_id, [instruction(offline)])
    assert scalar(conn, "SELECT dst_node_id FROM messages WHERE id = %s", (mid,)) == offline


# --------------------------------------------------------------------------- JSON records


def test_metrics_and_configs_are_queryable_jsonb(conn: Connection, fed: Federation) -> None:
    node = fed.selected[0]
    content = RecordDict(
        {
            "config": ConfigRecord(
                {"lr": 0.05, "name": "fedavg", "blob": b"\x00\xff", "flag": True, "ks": [1, 2]}
            ),
            "stats": MetricRecord({"n": 3}),
        }
    )
    (mid,) = bus.send(conn, fed.run_id, [instruction(node, content)])
    row = conn.execute(
        "SELECT (configs->'config'->>'lr')::float8, configs->'config'->>'name',"
        " jsonb_typeof(configs->'config'->'flag'), configs->'config'->'ks',"
        " (metrics->'stats'->>'n')::int, pg_typeof(metrics)::text"
        " FROM messages WHERE id = %s",
        (mid,),
    ).fetchone()
    assert row == (0.05, "fedavg", "boolean", [1, 2], 3, "jsonb")

    (claimed,) = _claim_all(conn, "w", [node])
    (received,) = bus.load(conn, [claimed])
    assert received.content["config"] == content["config"]
    assert received.content["stats"] == content["stats"]

    reply = Message(
        RecordDict({"metrics": MetricRecord({"loss": 0.125, "acc": [0.5, 1.0], "bad": math.nan})}),
        reply_to=received,
    )
    reply_path.reply(conn, "w", mid, fed.run_id, reply)
    loss, acc, bad = conn.execute(
        "SELECT (metrics->'metrics'->>'loss')::float8, metrics->'metrics'->'acc',"
        " metrics->'metrics'->>'bad' FROM messages WHERE reply_to = %s",
        (mid,),
    ).fetchone()  # type: ignore[misc]
    assert (loss, acc, bad) == (0.125, [0.5, 1.0], "NaN")
    assert scalar(
        conn,
        "SELECT avg((metrics->'metrics'->>'loss')::float8) FROM messages"
        " WHERE run_id = %s AND reply_to IS NOT NULL",
        (fed.run_id,),
    ) == pytest.approx(0.125)

    (pulled,) = bus.load(conn, store_messages.pull_replies(conn, fed.run_id, [mid]))
    metrics = pulled.content["metrics"]
    assert metrics["loss"] == 0.125 and metrics["acc"] == [0.5, 1.0]
    assert math.isnan(metrics["bad"])  # type: ignore[arg-type]


def test_audit_views_see_the_round_trip(conn: Connection, fed: Federation) -> None:
    node = fed.selected[0]
    ok, unanswered = bus.send(conn, fed.run_id, [instruction(node), instruction(node)])
    store_messages.claim(conn, worker="w", node_ids=[node], lease=60, limit=1)
    reply_path.reply_new(conn, worker="w", new=NewReply(ok, {}, {}, []))
    latency = conn.execute(
        "SELECT message_id, state::text, replied_at IS NOT NULL, round_trip IS NOT NULL"
        " FROM message_latency ORDER BY message_id"
    ).fetchall()
    assert latency == [(ok, "done", True, True), (unanswered, "queued", False, False)]
    participation = conn.execute(
        "SELECT instructions, replies_ok, replies_error, unanswered FROM node_participation"
        " WHERE node_id = %s AND run_id = %s",
        (node, fed.run_id),
    ).fetchone()
    assert participation == (2, 1, 0, 1)


def test_connection_is_not_left_in_a_transaction(conn: Connection, fed: Federation) -> None:
    """Every store call commits: a second connection sees the writes at once."""
    bus.send(conn, fed.run_id, [instruction(fed.selected[0])])
    _claim_all(conn, "w", fed.selected)
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    with connect(fed.url) as other:
        assert scalar(other, "SELECT state::text FROM messages") == "claimed"


def test_run_log_append_wakes_followers_and_tails_in_order(
    conn: Connection, fed: Federation
) -> None:
    from flpg.states import log_channel
    from flpg.store import logs as store_logs

    listener = Listener(fed.url, [log_channel(fed.run_id)], application_name="t")
    try:
        store_logs.append(conn, fed.run_id, [("stdout", "a"), ("stderr", "b"), ("event", "c")])
        assert [n.channel for n in listener.wait(2.0)] == [log_channel(fed.run_id)]
    finally:
        listener.close()
    lines = store_logs.tail(conn, fed.run_id)
    assert [(x.stream, x.line) for x in lines] == [("stdout", "a"), ("stderr", "b"), ("event", "c")]
    assert [(x.line) for x in store_logs.tail(conn, fed.run_id, after_id=lines[0].id)] == ["b", "c"]
    assert store_logs.tail(conn, fed.run_id, after_id=lines[-1].id) == []


def test_large_float_values_keep_their_type(conn: Connection, fed: Federation) -> None:
    """jsonb prints floats of magnitude >= 1e16 without a decimal point; they still come
    back as the same floats, and ints as ints."""
    huge = 1.7976931348623157e308
    metrics = {"big": 1e16, "neg": -2.5e17, "huge": huge, "many": [1e16, 2.5], "n": 10**17}
    content = RecordDict(
        {
            "m": MetricRecord(metrics),  # type: ignore[arg-type]
            "c": ConfigRecord({"big": 1e20, "tiny": 1e-300, "text": "1e+16"}),
        }
    )
    bus.send(conn, fed.run_id, [instruction(fed.selected[0], content)])
    (msg,) = bus.load(conn, _claim_all(conn, "w", fed.selected))
    m, c = msg.content["m"], msg.content["c"]
    assert dict(m) == metrics and dict(c) == {"big": 1e20, "tiny": 1e-300, "text": "1e+16"}
    assert [type(m[k]) for k in ("big", "neg", "huge", "n")] == [float, float, float, int]
    assert [type(x) for x in m["many"]] == [float, float]  # type: ignore[union-attr]
    assert type(c["big"]) is float and type(c["text"]) is str


def test_claims_are_fair_across_runs(conn: Connection, fed: Federation) -> None:
    """A run with a deep backlog on a node cannot starve another run's message."""
    node = fed.selected[0]
    other = store_runs.create(
        conn,
        app_hash="b" * 64,
        app_name="other",
        bundle=b"\x00",
        run_config={},
        node_ids=[node],
    )
    flood = [NewInstruction(node, "1", "train", 60.0, {}, {}, []) for _ in range(200)]
    store_messages.insert_instructions(conn, fed.run_id, flood)
    (single,) = store_messages.insert_instructions(
        conn, other, [NewInstruction(node, "1", "train", 60.0, {}, {}, [])]
    )
    claimed = store_messages.claim(conn, worker="w", node_ids=[node], lease=30, limit=2)
    assert single[0] in {m.id for m in claimed}  # served before the 200-message backlog drains
    assert {m.run_id for m in claimed} == {fed.run_id, other}


def test_one_at_a_time_claims_alternate_between_runs(conn: Connection, fed: Federation) -> None:
    """A worker that claims one message at a time serves the run it served least
    recently first: two backlogged runs alternate, and a run arriving late is next."""
    node = fed.selected[0]

    def new_run(name: str) -> int:
        return store_runs.create(
            conn,
            app_hash=name[0] * 64,
            app_name=name,
            bundle=b"\x00",
            run_config={},
            node_ids=[node],
        )

    second, late = new_run("b"), new_run("c")
    for run_id in (fed.run_id, second):
        store_messages.insert_instructions(
            conn, run_id, [NewInstruction(node, "1", "train", 60.0, {}, {}, [])] * 5
        )

    def claim_one() -> int:
        (row,) = store_messages.claim(conn, worker="w", node_ids=[node], lease=30, limit=1)
        return row.run_id

    order = [claim_one() for _ in range(4)]
    assert order == [fed.run_id, second, fed.run_id, second]
    store_messages.insert_instructions(
        conn, late, [NewInstruction(node, "1", "train", 60.0, {}, {}, [])]
    )
    assert claim_one() == late
    served = dict(
        conn.execute(
            "SELECT run_id, last_claimed_at IS NOT NULL FROM run_nodes WHERE node_id = %s",
            [node],
        ).fetchall()
    )
    assert served == {fed.run_id: True, second: True, late: True}
