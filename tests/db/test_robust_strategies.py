"""The chunk-wise robust strategies on replies stored in a real database.

Nodes answer through the node's production path with 1003-byte chunks (elements
straddle chunk boundaries); the ServerApp's grid receives the replies with their
arrays stored, and each strategy reads the same byte range of every reply in one
query per slice (`storedarray.read_byte_ranges`), never loading an array whole.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from psycopg import sql as pgsql

from flpg import bus
from flpg.app import arrays as wire
from flpg.app.message import Error, Message
from flpg.app.records import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flpg.serverapp.grid import Grid
from flpg.serverapp.strategy.bulyan import Bulyan
from flpg.serverapp.strategy.fedmedian import FedMedian
from flpg.serverapp.strategy.fedtrimmedavg import FedTrimmedAvg
from flpg.serverapp.strategy.krum import Krum
from flpg.serverapp.strategy.multikrum import MultiKrum
from flpg.serverapp.strategy.robuststrategy import ChunkwiseFedAvg
from flpg.store import messages as store_messages
from flpg.store import payloads, runroles
from flpg.store.db import Connection, connect
from flpg.store.storedarray import StoredArray
from tests.db import _replies as reply_path
from tests.db._chunks import on_chunks_of

from .conftest import Federation, make_federation
from .test_checkpoints import launch
from .test_run_roles import _login_role

CHUNK = 1003
N = 10
SHAPES: dict[str, tuple[str, tuple[int, ...]]] = {
    "w": ("float32", (10_007,)),
    "v": ("float64", (3, 701)),
    "b": ("float32", (5,)),  # one chunk: read with its message
    "n": ("int64", (999,)),
}


@pytest.fixture
def fed(conn: Connection, db_url: str) -> Federation:
    return make_federation(conn, db_url, n_selected=N)


@pytest.fixture
def grid(conn: Connection, fed: Federation) -> Iterator[Grid]:
    launch(conn, fed.run_id)
    g = Grid(fed.url, fed.run_id, poll=0.5, chunk_size=CHUNK)
    try:
        yield g
    finally:
        g.close()


def node_arrays(index: int) -> dict[str, npt.NDArray[Any]]:
    """Node 0 is the outlier; node 7 holds a NaN, node 8 the wrong shape."""
    rng = np.random.default_rng(index)
    out: dict[str, npt.NDArray[Any]] = {}
    for name, (dtype, shape) in SHAPES.items():
        centre = 500.0 if index == 0 else 0.1 * index
        value = rng.normal(centre, 1.0, shape)
        out[name] = (value * 100 if dtype == "int64" else value).astype(dtype)
    if index == 7:
        out["v"][2, 700] = np.inf
    if index == 8:
        out["b"] = np.zeros(6, np.float32)
    return out


def answer(conn: Connection, fed: Federation) -> None:
    """Node 9 answers with an error; the others with `node_arrays`, weight 1 + i."""
    rows = store_messages.claim(conn, worker="t", node_ids=fed.selected, lease=60, limit=100)
    for msg in bus.load(conn, rows):
        message_id = msg.metadata.message_id
        assert message_id is not None
        index = fed.selected.index(msg.metadata.dst_node_id or -1)
        if index == 9:
            reply_path.error_reply(conn, "t", int(message_id), Error(0, "out of memory"))
            continue
        content = RecordDict(
            {
                "arrays": ArrayRecord(node_arrays(index)),
                "metrics": MetricRecord({"num-examples": 1 + index, "loss": float(index)}),
            }
        )
        reply = Message(content, reply_to=msg)
        reply_path.reply(conn, "t", int(message_id), fed.run_id, reply, CHUNK)


def stack(name: str, nodes: list[int]) -> npt.NDArray[np.float64]:
    return np.stack([node_arrays(i)[name] for i in nodes]).astype(np.float64)


def krum_pick(nodes: list[int], f: int, m: int) -> list[int]:
    flat = np.concatenate([stack(k, nodes).reshape(len(nodes), -1) for k in SHAPES], axis=1)
    d = ((flat[:, None] - flat[None, :]) ** 2).sum(axis=2)
    k = max(1, len(nodes) - f - 2)
    scores = [np.sort(np.delete(d[i], i))[:k].sum() for i in range(len(nodes))]
    return [nodes[int(i)] for i in np.argsort(scores, kind="stable")[:m]]


def expected(strategy: ChunkwiseFedAvg) -> dict[str, npt.NDArray[np.float64]]:
    usable = [0, 1, 2, 3, 4, 5, 6]
    if isinstance(strategy, FedMedian):
        return {k: np.median(stack(k, usable), axis=0) for k in SHAPES}
    if isinstance(strategy, FedTrimmedAvg):
        cut = int(strategy.beta * 7)
        return {k: np.sort(stack(k, usable), axis=0)[cut : 7 - cut].mean(axis=0) for k in SHAPES}
    if isinstance(strategy, MultiKrum):
        picked = krum_pick(usable, 1, strategy.num_nodes_to_select)
        w = np.array([1.0 + i for i in picked])
        return {k: np.tensordot(w, stack(k, picked), axes=1) / w.sum() for k in SHAPES}
    assert isinstance(strategy, Bulyan)
    picked = krum_pick(usable, 1, 5)
    out = {}
    for k in SHAPES:
        values = stack(k, picked)
        order = np.argsort(np.abs(values - np.median(values, axis=0)), axis=0, kind="stable")
        out[k] = np.take_along_axis(values, order[:3], axis=0).mean(axis=0)
    return out


@pytest.mark.parametrize(
    "strategy",
    [
        FedMedian(min_available_nodes=1),
        FedTrimmedAvg(beta=0.3, min_available_nodes=1),
        Krum(num_malicious_nodes=1, min_train_nodes=5, min_available_nodes=1),
        MultiKrum(num_malicious_nodes=1, num_nodes_to_select=3, min_train_nodes=5),
        Bulyan(num_malicious_nodes=1, min_train_nodes=7, min_available_nodes=1),
    ],
    ids=lambda s: type(s).__name__,
)
def test_stored_replies_aggregate_chunk_wise(
    conn: Connection, fed: Federation, grid: Grid, strategy: ChunkwiseFedAvg
) -> None:
    strategy.slice_budget = 4 * 4096  # several slices per array, across chunk boundaries
    model = grid.save_checkpoint(
        0, ArrayRecord({k: np.zeros(s, d) for k, (d, s) in SHAPES.items()})
    )
    messages = strategy.configure_train(1, model, ConfigRecord(), grid)
    ids = grid.push_messages(messages)
    answer(conn, fed)
    replies = list(grid.receive(ids, timeout=10))
    assert len(replies) == N
    arrays, metrics = strategy.aggregate_train(1, replies)
    stored = [
        a for r in replies if r.has_content() for a in r.content.array_records["arrays"].values()
    ]
    assert not any(a.in_memory for a in stored if a.nbytes > CHUNK), "an array was loaded whole"
    assert arrays is not None and metrics is not None
    for name, (dtype, shape) in SHAPES.items():
        got = arrays[name].numpy()
        assert got.dtype == np.dtype(dtype) and got.shape == shape
        want = expected(strategy)[name]
        want = np.rint(want) if dtype == "int64" else want
        np.testing.assert_allclose(got, want.astype(dtype), rtol=1e-6, err_msg=name)
    if isinstance(strategy, MultiKrum | Bulyan):
        assert np.abs(arrays["w"].numpy()).max() < 100, "the outlier node was aggregated"


def test_a_reply_missing_a_chunk_is_rejected_and_the_others_aggregate(
    conn: Connection, fed: Federation, grid: Grid, capsys: pytest.CaptureFixture[str]
) -> None:
    strategy = Krum(min_available_nodes=1)
    model = grid.save_checkpoint(
        0, ArrayRecord({k: np.zeros(s, d) for k, (d, s) in SHAPES.items()})
    )
    ids = grid.push_messages(strategy.configure_train(1, model, ConfigRecord(), grid))
    answer(conn, fed)
    replies = list(grid.receive(ids, timeout=10))
    victim = next(r for r in replies if r.metadata.src_node_id == fed.selected[3])
    source = victim.content.array_records["arrays"]["w"].source
    assert isinstance(source, StoredArray)
    on_chunks_of(
        conn,
        source.array_id,
        "DELETE FROM array_chunks WHERE array_id = %s AND seq = 17",
        (source.array_id,),
    )
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    out = capsys.readouterr().out
    assert "Received 6 results and 4 failures" in out
    line = next(x for x in out.splitlines() if f"reply {victim.metadata.message_id} " in x)
    assert "array 'w' is missing bytes from 17051" in line  # 17 chunks of 1003 bytes
    assert np.abs(arrays["w"].numpy()).max() < 100


def test_byte_ranges_reads_parts_of_many_arrays_in_one_query(conn: Connection) -> None:
    run = make_federation(conn, "", n_selected=1).run_id
    values = [np.arange(3000, dtype=np.float32) + i for i in range(3)]
    ids = payloads.write(conn, run, [wire.encode(v, "x") for v in values], 1003)
    got = payloads.byte_ranges(conn, [(ids[0], 1000, 3010), (ids[2], 0, 5), (ids[0], 0, 1)])
    assert [(seq, at, len(data)) for seq, at, data in got[ids[0]]] == [
        (0, 1000, 3),
        (1, 1003, 1003),
        (2, 2006, 1003),
        (3, 3009, 1),
    ]
    joined = b"".join(data for _, _, data in got[ids[0]])
    assert joined == values[0].tobytes()[1000:3010]
    assert got[ids[2]] == [(0, 0, values[2].tobytes()[:5])]


def test_the_runs_own_serverapp_role_reads_slices_under_row_level_security(
    conn: Connection, fed: Federation
) -> None:
    """As in production: the ServerApp connects as the role its exec made for the run."""
    launch(conn, fed.run_id)
    exec_login = _login_role(conn, fed.url, "exec")
    try:
        with connect(exec_login.url) as ex:
            login = runroles.serverapp_login(ex, fed.run_id)
        g = Grid(login.url(fed.url), fed.run_id, poll=0.5, chunk_size=CHUNK)
        try:
            strategy = FedMedian(min_available_nodes=1)
            strategy.slice_budget = 4 * 4096
            model = ArrayRecord({k: np.zeros(s, d) for k, (d, s) in SHAPES.items()})
            model = g.save_checkpoint(0, model)
            ids = g.push_messages(strategy.configure_train(1, model, ConfigRecord(), g))
            answer(conn, fed)
            arrays, _ = strategy.aggregate_train(1, list(g.receive(ids, timeout=10)))
        finally:
            g.close()
        assert arrays is not None
        np.testing.assert_allclose(
            arrays["w"].numpy(), expected(strategy)["w"].astype(np.float32), rtol=1e-6
        )
    finally:
        runroles.collect(conn, grace=0)
        conn.execute("DELETE FROM principals WHERE role_name = %s", (exec_login.role,))
        conn.execute(pgsql.SQL("DROP ROLE {}").format(pgsql.Identifier(exec_login.role)))


def test_start_runs_rounds_and_stores_each_rejection_on_its_reply(
    conn: Connection, db_url: str
) -> None:
    """`FedMedian.start` over two rounds: node 0 an outlier, node 4 a NaN each round.
    The median of the other deltas moves the model; node 4's replies carry why."""
    five = make_federation(conn, db_url, n_selected=5)
    launch(conn, five.run_id)
    deltas = (100.0, 0.1, 0.2, 0.3, np.nan)
    stop = threading.Event()

    def serve() -> None:
        with connect(five.url, application_name="flpg-test-nodes") as c:
            while not stop.is_set():
                rows = store_messages.claim(
                    c, worker="t", node_ids=five.selected, lease=60, limit=10
                )
                for row, msg in zip(rows, bus.load(c, rows), strict=True):
                    index = five.selected.index(row.dst_node_id or -1)
                    received = msg.content.array_records["arrays"]["w"].numpy()
                    content = RecordDict(
                        {
                            "arrays": ArrayRecord({"w": received + np.float32(deltas[index])}),
                            "metrics": MetricRecord({"num-examples": 1 + index}),
                        }
                    )
                    reply = Message(content, reply_to=msg)
                    reply_path.reply(c, "t", row.id, five.run_id, reply, CHUNK)
                if not rows:
                    stop.wait(0.05)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    g = Grid(five.url, five.run_id, poll=0.2, chunk_size=CHUNK)
    try:
        strategy = FedMedian(fraction_evaluate=0.0, min_train_nodes=4, min_available_nodes=5)
        initial = ArrayRecord({"w": np.zeros(3001, np.float32)})
        result = strategy.start(g, initial, num_rounds=2, timeout=60)
    finally:
        stop.set()
        thread.join(timeout=30)
        g.close()
    model = np.zeros(3001, np.float32)
    for _ in (1, 2):
        values = np.stack([model + np.float32(d) for d in deltas[:4]]).astype(np.float64)
        model = np.median(values, axis=0).astype(np.float32)
    np.testing.assert_allclose(result.arrays["w"].numpy(), model, rtol=1e-6)
    reasons = conn.execute(
        "SELECT m.src_node_id, m.rejected_reason FROM messages m"
        " WHERE m.run_id = %s AND m.reply_to IS NOT NULL AND m.rejected_reason IS NOT NULL",
        (five.run_id,),
    ).fetchall()
    assert [node for node, _ in reasons] == [five.selected[4]] * 2
    assert all("NaN or Inf" in reason for _, reason in reasons)
