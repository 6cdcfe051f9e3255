"""ServerApp: FedAvg (weighted by num-examples, no evaluation) with timing marks."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

app = ServerApp()


class TimedFedAvg(FedAvg):
    """FedAvg that appends a wall-clock mark per round phase to a JSON-lines file."""

    def __init__(self, timing_file: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.timing_file = timing_file

    def mark(self, event: str, **fields: Any) -> None:
        if not self.timing_file:
            return
        with open(self.timing_file, "a", encoding="utf-8") as out:
            out.write(json.dumps({"event": event, "t": time.time(), **fields}) + "\n")

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = list(super().configure_train(server_round, arrays, config, grid))
        # Nodes sampled, messages built: the push (payload upload) starts now.
        self.mark("push", round=server_round, nodes=len(messages))
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        self.mark("replies", round=server_round, replies=len(replies))
        result = super().aggregate_train(server_round, replies)
        self.mark("aggregated", round=server_round)
        return result


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = context.run_config
    nodes = int(config["min-nodes"])
    rounds = int(config["num-server-rounds"])
    size = int(config["model-floats"])
    strategy = TimedFedAvg(
        str(config["timing-file"]),
        fraction_train=1.0,
        fraction_evaluate=0.0,
        min_available_nodes=nodes,
        min_train_nodes=nodes,
        min_evaluate_nodes=0,
    )
    strategy.mark("main", nodes=nodes, rounds=rounds, size=size)
    try:
        result = strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord({"w": Array(np.zeros(size, dtype=np.float32))}),
            num_rounds=rounds,
            timeout=float(config["round-timeout"]),
        )
        final = result.arrays["w"].numpy()
    except Exception as exc:
        strategy.mark("error", error=f"{type(exc).__name__}: {exc}")
        raise
    expected = rounds * (2 * nodes + 1) / 3
    ok = final.shape == (size,) and bool(np.allclose(final, expected, rtol=1e-4))
    strategy.mark("final", ok=ok, mean=float(final.mean()), expected=expected)
    if not ok:
        raise RuntimeError(
            f"wrong final model: shape {final.shape}, mean {float(final.mean())}, "
            f"expected {expected} everywhere"
        )
