"""Stored arrays and streaming aggregation against the real schema.

The global model is written once and referenced; replies reach the aggregator as
stored arrays read chunk by chunk; bad replies are taken back out of the sum.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from flpg import bus
from flpg.app.message import Message
from flpg.app.records import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flpg.errors import PayloadCorrupt
from flpg.serverapp.grid import Grid
from flpg.serverapp.strategy.aggregate import ReplyRejected, WeightedArrayMean
from flpg.serverapp.strategy.tally import ReplyTally
from flpg.store import messages as store_messages
from flpg.store.db import Connection
from flpg.store.storedarray import StoredArray
from tests.db import _replies as reply_path
from tests.db._chunks import on_all_chunks

from .conftest import Federation, make_federation, scalar
from .test_checkpoints import launch

Arrays = dict[str, npt.NDArray[Any]]


@pytest.fixture
def fed5(conn: Connection, db_url: str) -> Federation:
    return make_federation(conn, db_url, n_selected=5)


def open_grid(conn: Connection, fed: Federation, chunk_size: int = 1 << 20) -> Grid:
    launch(conn, fed.run_id)
    return Grid(fed.url, fed.run_id, poll=0.5, chunk_size=chunk_size)


@pytest.fixture
def grid(conn: Connection, fed: Federation) -> Iterator[Grid]:
    g = open_grid(conn, fed)
    try:
        yield g
    finally:
        g.close()


def count_arrays(conn: Connection, run_id: int) -> int:
    return int(scalar(conn, "SELECT count(*) FROM arrays WHERE run_id = %s", [run_id]))


def broadcast(grid: Grid, nodes: list[int], model: ArrayRecord) -> list[int]:
    """Save `model` as the round-0 checkpoint and send it to `nodes`; the message ids."""
    stored = grid.save_checkpoint(0, model)
    return grid.push_messages(
        grid.create_message(
            RecordDict({"arrays": stored, "config": ConfigRecord()}), "train", node, "1"
        )
        for node in nodes
    )


def answer(
    conn: Connection, fed: Federation, replies: dict[int, tuple[Arrays, int]], chunk: int
) -> dict[int, int]:
    """Claim every instruction and reply with `(arrays, num-examples)` of its node;
    returns node id -> reply message id."""
    rows = store_messages.claim(conn, worker="t", node_ids=fed.selected, lease=60, limit=100)
    out: dict[int, int] = {}
    for msg in bus.load(conn, rows):
        node = msg.metadata.dst_node_id
        assert node is not None and msg.metadata.message_id is not None
        arrays, examples = replies[node]
        content = RecordDict(
            {
                "arrays": ArrayRecord(arrays),
                "metrics": MetricRecord({"num-examples": examples}),
            }
        )
        out[node] = reply_path.reply(
            conn, "t", msg.metadata.message_id, fed.run_id, Message(content, reply_to=msg), chunk
        )
    return out


def aggregate(grid: Grid, ids: list[int], reference: ArrayRecord) -> tuple[ArrayRecord, ReplyTally]:
    mean = WeightedArrayMean(reference)
    tally = ReplyTally(grid.receive(ids, timeout=10))
    for reply in tally:
        weight = reply.content.metric_records["metrics"]["num-examples"]
        assert isinstance(weight, int)
        try:
            mean.add(reply.content.array_records["arrays"], float(weight))
        except ReplyRejected as exc:
            tally.reject(reply, str(exc))
    return mean.result(), tally


def reference_mean(replies: list[tuple[Arrays, int]]) -> Arrays:
    total = sum(w for _, w in replies)
    out: Arrays = {}
    for name, first in replies[0][0].items():
        kind = np.complex128 if first.dtype.kind == "c" else np.float64
        acc = sum(a[name].astype(kind) * w for a, w in replies) / total
        if first.dtype.kind in "iu":
            acc = np.rint(acc)
        elif first.dtype.kind == "b":
            acc = acc >= 0.5
        out[name] = np.asarray(acc).astype(first.dtype)
    return out


def model(seed: int) -> Arrays:
    rng = np.random.default_rng(seed)
    return {
        "w": rng.standard_normal((301, 333)).astype(np.float32),
        "h": rng.standard_normal(1001).astype(np.float16),
        "c": (rng.standard_normal(777) + 1j * rng.standard_normal(777)).astype(np.complex64),
        "n": rng.integers(-1000, 1000, size=999, dtype=np.int32),
        "b": rng.random(501) > 0.5,
    }


def test_a_stored_model_is_sent_without_writing_it_again(
    conn: Connection, fed: Federation, grid: Grid
) -> None:
    stored = grid.save_checkpoint(0, ArrayRecord(model(0)))
    assert count_arrays(conn, fed.run_id) == 5
    assert not any(a.in_memory for a in stored.values())
    broadcast_ids = grid.push_messages(
        grid.create_message(RecordDict({"arrays": stored}), "train", n, "1") for n in fed.selected
    )
    assert count_arrays(conn, fed.run_id) == 5  # linked, not written
    linked = scalar(
        conn,
        "SELECT count(DISTINCT array_id) FROM message_arrays WHERE message_id = ANY(%s)"
        " AND array_id IN (SELECT array_id FROM checkpoint_arrays WHERE run_id = %s)",
        [broadcast_ids, fed.run_id],
    )
    assert linked == 5
    # Saving the same stored arrays again (end of round) writes nothing and keeps them.
    again = grid.save_checkpoint(1, stored)
    assert count_arrays(conn, fed.run_id) == 5
    for name, array in model(0).items():
        np.testing.assert_array_equal(again[name].numpy(), array)


def test_a_stored_array_changed_in_place_is_written_anew(
    conn: Connection, fed: Federation, grid: Grid
) -> None:
    stored = grid.save_checkpoint(0, ArrayRecord({"w": np.zeros(10, np.float32)}))
    stored["w"].numpy()  # read, unchanged: still the stored bytes
    grid.push_messages(
        [grid.create_message(RecordDict({"a": stored}), "train", fed.selected[0], "1")]
    )
    assert count_arrays(conn, fed.run_id) == 1
    stored["w"].numpy()[3] = 7.0
    grid.push_messages(
        [grid.create_message(RecordDict({"a": stored}), "train", fed.selected[1], "1")]
    )
    assert count_arrays(conn, fed.run_id) == 2
    (msg,) = bus.load(
        conn,
        store_messages.claim(conn, worker="t", node_ids=[fed.selected[1]], lease=60, limit=1),
    )
    assert msg.content["a"]["w"].numpy()[3] == 7.0  # type: ignore[index]


@pytest.mark.parametrize("chunk", [1 << 20, 1002])
def test_streamed_mean_equals_the_in_memory_reference(
    conn: Connection, fed: Federation, chunk: int
) -> None:
    grid = open_grid(conn, fed, chunk_size=chunk)
    try:
        ids = broadcast(grid, fed.selected, ArrayRecord(model(0)))
        replies = {node: (model(i + 1), 10 * (i + 1)) for i, node in enumerate(fed.selected)}
        answer(conn, fed, replies, chunk)
        mean, tally = aggregate(grid, ids, ArrayRecord(model(0)))
    finally:
        grid.close()
    assert (tally.received, tally.failures) == (3, 0)
    expected = reference_mean(list(replies.values()))
    for name, want in expected.items():
        got = mean[name].numpy()
        assert got.dtype == want.dtype and got.shape == want.shape
        if want.dtype.kind in "fc":
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
        else:
            np.testing.assert_array_equal(got, want)


def test_a_big_endian_reply_is_read_in_its_own_byte_order(
    conn: Connection, fed: Federation
) -> None:
    """A node replying with big-endian arrays: stored as they are ('>f4'), read chunk by
    chunk as big-endian, and averaged with the little-endian ones."""
    grid = open_grid(conn, fed, chunk_size=1002)
    little = {"w": np.arange(1000, dtype="<f4"), "n": np.arange(999, dtype="<i4")}
    try:
        ids = broadcast(grid, fed.selected, ArrayRecord(little))
        big = {name: a.astype(a.dtype.newbyteorder(">")) for name, a in little.items()}
        replies = {node: (big if i == 0 else little, 1) for i, node in enumerate(fed.selected)}
        answer(conn, fed, replies, 1002)
        stored = scalar(
            conn,
            "SELECT array_agg(DISTINCT a.dtype ORDER BY a.dtype) FROM arrays a"
            " JOIN message_arrays ma ON ma.array_id = a.id WHERE ma.message_id IN"
            " (SELECT id FROM messages WHERE src_node_id = %s)",
            [fed.selected[0]],
        )
        mean, tally = aggregate(grid, ids, ArrayRecord(little))
    finally:
        grid.close()
    assert stored == [">f4", ">i4"]
    assert (tally.received, tally.failures) == (3, 0)
    np.testing.assert_array_equal(mean["w"].numpy(), little["w"])
    np.testing.assert_array_equal(mean["n"].numpy(), little["n"])
    assert mean["w"].dtype == "float32"


@pytest.mark.parametrize("batch", [16, 2])
def test_bad_replies_are_taken_back_out_and_the_round_goes_on(
    conn: Connection, fed5: Federation, batch: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Good, NaN in the last chunk, corrupt chunk, missing chunk, wrong shape: only the
    good reply is in the mean, and each rejection names the array and the message.
    With 2-chunk batches the bad chunks sit in batches the reader thread prefetched."""
    monkeypatch.setattr(StoredArray, "BATCH", batch)
    chunk = 4096
    grid = open_grid(conn, fed5, chunk_size=chunk)
    good, nan, corrupt, missing, shape = fed5.selected
    base = np.linspace(-1, 1, 10_000, dtype=np.float32)
    with_nan = base.copy()
    with_nan[-1] = np.nan
    try:
        ids = broadcast(grid, fed5.selected, ArrayRecord({"w": base}))
        reply_ids = answer(
            conn,
            fed5,
            {
                good: ({"w": base + 1}, 10),
                nan: ({"w": with_nan}, 20),
                corrupt: ({"w": base + 3}, 30),
                missing: ({"w": base + 4}, 40),
                shape: ({"w": base[:-1]}, 50),
            },
            chunk,
        )
        array_of = "SELECT array_id FROM message_arrays WHERE message_id = %s"
        on_all_chunks(
            conn,
            f"UPDATE array_chunks SET data = set_byte(data, 7, get_byte(data, 7) # 1)"
            f" WHERE array_id = ({array_of}) AND seq = 5",
            [reply_ids[corrupt]],
        )
        on_all_chunks(
            conn,
            f"DELETE FROM array_chunks WHERE array_id = ({array_of}) AND seq = 3",
            [reply_ids[missing]],
        )
        mean, tally = aggregate(grid, ids, ArrayRecord({"w": base}))
    finally:
        grid.close()
    np.testing.assert_allclose(mean["w"].numpy(), base + 1, rtol=1e-6, atol=1e-6)
    assert (tally.received, tally.failures) == (5, 4)
    reasons = {int(message_id): why for message_id, why in tally.rejected}
    assert set(reasons) == {reply_ids[n] for n in (nan, corrupt, missing, shape)}
    assert "array 'w' holds NaN or Inf" in reasons[reply_ids[nan]]
    assert f"of message {reply_ids[corrupt]} fails its digest check" in reasons[reply_ids[corrupt]]
    assert f"of message {reply_ids[missing]} is missing chunk 3" in reasons[reply_ids[missing]]
    assert "array 'w' is float32[9999]" in reasons[reply_ids[shape]]
    assert all(f"reply {reply_ids[shape]}" in r for r in tally.reasons if "float32[9999]" in r)


def test_streaming_aggregation_holds_the_sum_not_the_replies(
    conn: Connection, fed: Federation
) -> None:
    """9 replies of a 32 MiB model: the traced peak is the float64 sum (2x), the mean
    it returns (1x) and one batch of chunks, where reading the replies would need 9x."""
    size = 8 << 20  # float32 elements: 32 MiB
    nodes = fed.selected
    grid = open_grid(conn, fed)
    try:
        base = np.zeros(size, np.float32)
        ids = broadcast(grid, nodes, ArrayRecord({"w": base}))
        for _ in range(2):  # 3 nodes x 3 sends: 9 replies
            ids += grid.push_messages(
                grid.create_message(
                    RecordDict({"arrays": ArrayRecord({"w": base})}), "train", n, "1"
                )
                for n in nodes
            )
        updates = {n: ({"w": np.full(size, i + 1, np.float32)}, 1) for i, n in enumerate(nodes)}
        answer(conn, fed, updates, 1 << 20)
        del updates
        reference = ArrayRecord({"w": base})
        tracemalloc.start()
        try:
            mean, tally = aggregate(grid, ids, reference)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    finally:
        grid.close()
    assert tally.received == 9 and tally.failures == 0
    assert float(mean["w"].numpy()[12345]) == pytest.approx(2.0)
    model_bytes = size * 4
    assert peak < 3.5 * model_bytes, (
        f"peak {peak / 2**20:.0f} MiB for a {model_bytes >> 20} MiB model"
    )


def test_small_arrays_come_with_the_reply_and_are_checked_when_used(
    conn: Connection, fed: Federation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Arrays of one chunk are read together with the reply rows, up to
    bus.EAGER_BYTES per pull; bigger ones stay in the database until used. A small
    array read early is still checked against its digest when it is used."""
    monkeypatch.setattr(bus, "EAGER_BYTES", 2000)
    chunk = 1024
    grid = open_grid(conn, fed, chunk_size=chunk)
    small = np.arange(200, dtype=np.float32)  # 800 bytes: one chunk
    big = np.arange(1000, dtype=np.float32)  # 4000 bytes: four chunks
    try:
        ids = broadcast(grid, fed.selected, ArrayRecord({"s": small, "b": big}))
        reply_ids = answer(
            conn,
            fed,
            {node: ({"s": small + node, "b": big + node}, 1) for node in fed.selected},
            chunk,
        )
        # In reply order: the first two small arrays fit the budget, the third does not.
        first, second, third = sorted(fed.selected, key=lambda node: reply_ids[node])
        # Damage the stored bytes before the grid reads anything.
        array_of = "SELECT array_id FROM message_arrays WHERE message_id = %s AND array_name = %s"
        on_all_chunks(
            conn,
            f"UPDATE array_chunks SET data = set_byte(data, 0, get_byte(data, 0) # 1)"
            f" WHERE array_id = ({array_of})",
            [reply_ids[second], "s"],
        )
        replies = {int(r.metadata.message_id or 0): r for r in grid.receive(ids, timeout=10)}
        # Now the chunks go away: only what came with the reply rows is still readable.
        on_all_chunks(
            conn,
            "DELETE FROM array_chunks WHERE array_id IN (SELECT array_id FROM "
            "message_arrays WHERE message_id = ANY(%s))",
            [list(reply_ids.values())],
        )
    finally:
        grid.close()
    by_node = {
        node: replies[reply_ids[node]].content.array_records["arrays"] for node in fed.selected
    }
    np.testing.assert_array_equal(by_node[first]["s"].numpy(), small + first)
    with pytest.raises(PayloadCorrupt, match=f"message {reply_ids[second]} fails its digest"):
        by_node[second]["s"].numpy()
    # 3 x 800 bytes exceed the 3000-byte budget by one array: the third stayed stored.
    with pytest.raises(PayloadCorrupt, match=f"message {reply_ids[third]} is missing chunk 0"):
        by_node[third]["s"].numpy()
    with pytest.raises(PayloadCorrupt, match="is missing chunk 0"):
        by_node[first]["b"].numpy()
