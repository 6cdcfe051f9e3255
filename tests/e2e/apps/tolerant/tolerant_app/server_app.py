"""ServerApp: FedAvg whose train messages carry the run's `ttl`; prints `FINAL <json>`."""

from __future__ import annotations

import json
from collections.abc import Iterable

import numpy as np

from flpg import ArrayRecord, ConfigRecord, Context, Grid, Message, ServerApp
from flpg.serverapp.strategy import FedAvg

app = ServerApp()


class TtlFedAvg(FedAvg):
    """FedAvg whose train messages expire after `ttl` seconds."""

    def __init__(self, ttl: float, min_nodes: int) -> None:
        super().__init__(
            min_available_nodes=min_nodes, min_train_nodes=min_nodes, fraction_evaluate=0.0
        )
        self.ttl = ttl

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = list(super().configure_train(server_round, arrays, config, grid))
        for message in messages:
            message.metadata.ttl = self.ttl
        return messages


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    strategy = TtlFedAvg(float(cfg["ttl"]), int(cfg["min-nodes"]))
    result = strategy.start(
        grid,
        initial_arrays=ArrayRecord({"w": np.arange(3, dtype=np.float64)}),
        num_rounds=int(cfg["num-server-rounds"]),
        timeout=float(cfg["timeout"]),
    )
    print("FINAL " + json.dumps(result.arrays["w"].numpy().tolist()), flush=True)
