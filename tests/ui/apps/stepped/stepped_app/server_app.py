"""ServerApp: FedAvg over two nodes, with a server-side evaluation every round."""

from __future__ import annotations

import numpy as np

from flpg import ArrayRecord, Context, Grid, MetricRecord, ServerApp
from flpg.serverapp.strategy import FedAvg

app = ServerApp()


def server_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
    return MetricRecord({"server_loss": 2.0 / (server_round + 1)})


@app.main()
def main(grid: Grid, context: Context) -> None:
    strategy = FedAvg(
        min_available_nodes=2, min_train_nodes=2, min_evaluate_nodes=2, fraction_evaluate=1.0
    )
    strategy.start(
        grid,
        initial_arrays=ArrayRecord({"w": np.zeros(4)}),
        num_rounds=int(context.run_config["num-server-rounds"]),
        timeout=120,
        evaluate_fn=server_evaluate,
    )
    print("DONE", flush=True)
