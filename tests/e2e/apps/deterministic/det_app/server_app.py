"""ServerApp: FedAvg over exactly two nodes; prints the final arrays as `FINAL <json>`."""

from __future__ import annotations

import json

import numpy as np

from flpg import ArrayRecord, Context, Grid, ServerApp
from flpg.serverapp.strategy import FedAvg

app = ServerApp()


def initial_arrays() -> ArrayRecord:
    return ArrayRecord(
        {"w": np.arange(6, dtype=np.float64).reshape(2, 3), "b": np.zeros(2, dtype=np.float64)}
    )


@app.main()
def main(grid: Grid, context: Context) -> None:
    strategy = FedAvg(min_available_nodes=2, min_train_nodes=2, fraction_evaluate=0.0)
    result = strategy.start(
        grid,
        initial_arrays=initial_arrays(),
        num_rounds=int(context.run_config["num-server-rounds"]),
        timeout=60,
    )
    final = {name: array.numpy().tolist() for name, array in result.arrays.items()}
    print("FINAL " + json.dumps(final), flush=True)
