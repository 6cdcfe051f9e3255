"""The differential-privacy wrappers around FedAvg, run by `start` on a real Grid.

Three nodes answer from a thread of this test through the node's reply path: one
with an update far longer than the clipping norm. The server-side wrapper clips
it (the stored replies are read in chunks), the aggregate matches a numpy
reference round by round (noise from the wrapper's seed included), and the
adaptive wrappers' clipping norm survives a resume from the checkpoint; the
client-side wrapper's nodes run a ClientApp with `adaptiveclipping_mod`, which
reads the norm from the instruction's config.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator

import numpy as np
import numpy.typing as npt
import pytest

from flpg import bus
from flpg.app.context import Context
from flpg.app.message import Message
from flpg.app.records import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flpg.clientapp import ClientApp
from flpg.clientapp.mod import adaptiveclipping_mod
from flpg.serverapp.grid import Grid
from flpg.serverapp.strategy import FedAvg
from flpg.serverapp.strategy.dp_adaptive_clipping import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
)
from flpg.serverapp.strategy.dp_fixed_clipping import DifferentialPrivacyServerSideFixedClipping
from flpg.store import messages as store_messages
from flpg.store.db import Connection, connect
from tests.db import _replies as reply_path

from .conftest import Federation
from .test_checkpoints import launch

CHUNK = 1000  # bytes: every 8 kB reply array is stored in several chunks
SIZE = 2000
DELTAS = (0.001, 1.0, -0.002)  # update norms 0.045, 44.7, 0.089
WEIGHTS = (1, 2, 3)

Answer = Callable[[int, Message], Message]


def trained(index: int, msg: Message) -> Message:
    """Node `index`'s reply: the received arrays plus its delta, with its weight."""
    arrays = msg.content["arrays"]
    assert isinstance(arrays, ArrayRecord)
    out = ArrayRecord({k: Array(a.numpy() + np.float32(DELTAS[index])) for k, a in arrays.items()})
    metrics = MetricRecord({"num-examples": WEIGHTS[index]})
    return Message(RecordDict({"arrays": out, "metrics": metrics}), reply_to=msg)


@pytest.fixture
def grid(conn: Connection, fed: Federation) -> Iterator[Grid]:
    launch(conn, fed.run_id)
    g = Grid(fed.url, fed.run_id, poll=0.2, chunk_size=CHUNK)
    try:
        yield g
    finally:
        g.close()


@pytest.fixture
def nodes(fed: Federation) -> Iterator[Callable[[Answer], None]]:
    """Start the nodes answering every instruction with `answer(node index, msg)`."""
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def serve(answer: Answer) -> None:
        with connect(fed.url, application_name="flpg-test-nodes") as conn:
            while not stop.is_set():
                rows = store_messages.claim(
                    conn, worker="t", node_ids=fed.selected, lease=60, limit=10
                )
                for row, msg in zip(rows, bus.load(conn, rows), strict=True):
                    assert row.dst_node_id is not None
                    reply = answer(fed.selected.index(row.dst_node_id), msg)
                    reply_path.reply(conn, "t", row.id, fed.run_id, reply, CHUNK)
                if not rows:
                    stop.wait(0.05)

    def begin(answer: Answer) -> None:
        thread = threading.Thread(target=serve, args=(answer,), daemon=True)
        thread.start()
        threads.append(thread)

    yield begin
    stop.set()
    for thread in threads:
        thread.join(timeout=30)


def fedavg() -> FedAvg:
    return FedAvg(fraction_evaluate=0.0, min_train_nodes=3, min_available_nodes=3)


def clipped_mean(
    model: npt.NDArray[np.float64], norm: float
) -> tuple[npt.NDArray[np.float64], int]:
    """The weighted mean of the nodes' updates clipped to `norm`, added to `model`
    (float64), and how many updates were clipped."""
    total, count = np.zeros(SIZE), 0
    for delta, weight in zip(DELTAS, WEIGHTS, strict=True):
        update = np.full(SIZE, np.float64(np.float32(delta)))
        scale = min(1.0, norm / float(np.linalg.norm(update)))
        total += weight * update * scale
        count += scale < 1
    return model + total / sum(WEIGHTS), count


def test_server_side_fixed_clipping_clips_the_long_update_and_adds_seeded_noise(
    grid: Grid, nodes: Callable[[Answer], None]
) -> None:
    nodes(trained)
    dp = DifferentialPrivacyServerSideFixedClipping(fedavg(), 0.5, 0.2, 3, seed=7)
    initial = ArrayRecord({"w": np.zeros(SIZE, np.float32)})
    result = dp.start(grid, initial, num_rounds=2, timeout=60)
    model = np.zeros(SIZE, np.float32)
    for server_round in (1, 2):
        mean, clipped = clipped_mean(model.astype(np.float64), 0.2)
        assert clipped == 1  # node 1's update only
        noise = np.random.default_rng([7, server_round]).normal(0, 0.5 * 0.2 / 3, SIZE)
        model = mean.astype(np.float32) + noise.astype(np.float32)
    np.testing.assert_allclose(result.arrays["w"].numpy(), model, rtol=1e-6, atol=1e-6)
    assert result.train_metrics_clientapp[2] == MetricRecord()


def test_the_adaptive_clipping_norm_survives_a_resume(
    grid: Grid, nodes: Callable[[Answer], None]
) -> None:
    nodes(trained)

    def wrapper() -> DifferentialPrivacyServerSideAdaptiveClipping:
        return DifferentialPrivacyServerSideAdaptiveClipping(fedavg(), 0.0, 3, 0.5)

    initial = ArrayRecord({"w": np.zeros(SIZE, np.float32)})
    first = wrapper()
    first.start(grid, initial, num_rounds=2, timeout=60)
    step = math.exp(-0.2 * (1 / 3 - 0.5))  # one of three updates clipped each round
    assert first.clipping_norm == pytest.approx(0.5 * step**2)
    resumed = wrapper()  # as a restarted ServerApp builds it: initial norm 0.5
    result = resumed.start(grid, initial, num_rounds=3, timeout=60)
    assert resumed.clipping_norm == pytest.approx(0.5 * step**3)
    model = np.zeros(SIZE, np.float64)
    for norm in (0.5, 0.5 * step, 0.5 * step**2):
        model = clipped_mean(model.astype(np.float32).astype(np.float64), norm)[0]
    np.testing.assert_allclose(result.arrays["w"].numpy(), model, rtol=1e-6, atol=1e-7)


def test_client_side_adaptive_nodes_clip_with_the_norm_the_config_carries(
    grid: Grid, nodes: Callable[[Answer], None]
) -> None:
    seen: list[float] = []
    app = ClientApp(mods=[adaptiveclipping_mod])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return trained(int(context.node_config["index"]), msg)

    def answer(index: int, msg: Message) -> Message:
        config = msg.content["config"]
        assert isinstance(config, ConfigRecord)
        seen.append(float(config["clipping_norm"]))  # type: ignore[arg-type]
        ctx = Context(
            run_id=1, node_id=index, node_config={"index": index}, state=RecordDict(), run_config={}
        )
        return app(msg, ctx)

    nodes(answer)
    dp = DifferentialPrivacyClientSideAdaptiveClipping(fedavg(), 0.0, 3, 0.5)
    result = dp.start(grid, ArrayRecord({"w": np.zeros(SIZE, np.float32)}), 2, timeout=60)
    step = math.exp(-0.2 * (1 / 3 - 0.5))
    assert sorted(seen) == pytest.approx([0.5] * 3 + [0.5 * step] * 3)
    assert dp.clipping_norm == pytest.approx(0.5 * step**2)
    model = np.zeros(SIZE, np.float64)
    for norm in (0.5, 0.5 * step):
        model = clipped_mean(model.astype(np.float32).astype(np.float64), norm)[0]
    np.testing.assert_allclose(result.arrays["w"].numpy(), model, rtol=1e-6, atol=1e-7)
