"""ServerApp: FedAvg over the run's selected nodes; prints `FINAL <json>`."""

from __future__ import annotations

import json

import numpy as np

from flpg import ArrayRecord, Context, Grid, ServerApp
from flpg.serverapp.strategy import FedAvg

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    n = int(context.run_config["min-nodes"])
    strategy = FedAvg(min_available_nodes=n, min_train_nodes=n, fraction_evaluate=0.0)
    result = strategy.start(
        grid,
        initial_arrays=ArrayRecord({"w": np.zeros(3)}),
        num_rounds=int(context.run_config["num-server-rounds"]),
        timeout=60,
    )
    print("NODES " + json.dumps(grid.get_node_ids()), flush=True)
    print("FINAL " + json.dumps(result.arrays["w"].numpy().tolist()), flush=True)
