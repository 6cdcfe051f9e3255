"""Server-side clipping streams: however many replies a round has, the wrapper holds
the global model, FedAvg's float64 sum and one clipped reply at a time, never
the replies together."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from flpg.app.message import Message
from flpg.app.records import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flpg.serverapp.strategy import FedAvg
from flpg.serverapp.strategy.dp_adaptive_clipping import (
    DifferentialPrivacyServerSideAdaptiveClipping,
)

SIZE = 1 << 20  # float32 elements: a 4 MiB model
REPLIES = 24  # 96 MiB if the replies were held together
BLOCK = 1 << 16


class GeneratedSource:
    """A stored array of constant `value`, whose bytes are made chunk by chunk as
    they are read (nothing of it is held between reads)."""

    run_id = 1
    array_id = 1
    digest = b""

    def __init__(self, value: float) -> None:
        self.value = value

    def load(self) -> npt.NDArray[Any]:
        raise AssertionError("a reply's array was loaded whole")

    def chunks(self) -> Iterator[bytes]:
        for _ in range(0, SIZE, BLOCK):
            yield np.full(BLOCK, self.value, "<f4").tobytes()


def replies() -> Iterator[Message]:
    for node in range(REPLIES):
        array = Array.stored("<f4", (SIZE,), GeneratedSource(1.0 + node))
        content = RecordDict(
            {"arrays": ArrayRecord({"w": array}), "metrics": MetricRecord({"num-examples": 1})}
        )
        yield Message(content, reply_to=Message(RecordDict(), node + 1, "train"))


def test_clipping_a_round_holds_a_few_models_not_the_replies() -> None:
    dp = DifferentialPrivacyServerSideAdaptiveClipping(FedAvg(), 0.0, REPLIES, 1.0)
    model = ArrayRecord({"w": np.zeros(SIZE, np.float32)})
    dp.configure_train(1, model, ConfigRecord(), _NoGrid())  # type: ignore[arg-type]
    tracemalloc.start()
    try:
        arrays, _ = dp.aggregate_train(1, replies())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert arrays is not None
    # Every update is longer than the norm 1: each clipped to a norm of 1 exactly.
    np.testing.assert_allclose(arrays["w"].numpy()[:3], np.full(3, 1 / SIZE**0.5), rtol=1e-5)
    model_bytes = SIZE * 4
    assert peak < 8 * model_bytes, f"peak {peak / 2**20:.0f} MiB for a 4 MiB model"
    assert dp.clipping_norm == pytest.approx(np.exp(-0.2 * 0.5))  # all clipped


class _NoGrid:
    """FedAvg's configure_train samples from no online node: no messages."""

    run_id = 1

    def get_node_ids(self) -> list[int]:
        return []
