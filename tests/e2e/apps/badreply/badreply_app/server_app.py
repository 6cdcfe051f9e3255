"""ServerApp: one FedAvg round over every node; prints `FINAL <json>`."""

from __future__ import annotations

import json

import numpy as np

from flpg import ArrayRecord, Context, Grid, ServerApp
from flpg.serverapp.strategy import FedAvg

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    n = int(context.run_config["num-nodes"])
    # All n nodes are sampled (fraction_train=1); min_train_nodes=1 lets the round
    # go on with the one valid reply.
    strategy = FedAvg(min_available_nodes=n, min_train_nodes=1, fraction_evaluate=0.0)
    result = strategy.start(
        grid, initial_arrays=ArrayRecord({"w": np.zeros(3)}), num_rounds=1, timeout=60
    )
    print("FINAL " + json.dumps(result.arrays["w"].numpy().tolist()), flush=True)
