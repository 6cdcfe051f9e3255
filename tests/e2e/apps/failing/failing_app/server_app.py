"""ServerApp: FedAvg with the run config's minimums; prints `FINAL <json>`."""

from __future__ import annotations

import json

import numpy as np

from flpg import ArrayRecord, Context, Grid, ServerApp
from flpg.serverapp.strategy import FedAvg

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    strategy = FedAvg(
        min_available_nodes=2,
        min_train_nodes=int(cfg["min-train-nodes"]),
        min_evaluate_nodes=int(cfg["min-evaluate-nodes"]),
        fraction_evaluate=float(cfg["fraction-evaluate"]),
    )
    result = strategy.start(
        grid,
        initial_arrays=ArrayRecord({"w": np.zeros(3)}),
        num_rounds=int(cfg["num-server-rounds"]),
        timeout=60,
    )
    print("FINAL " + json.dumps(result.arrays["w"].numpy().tolist()), flush=True)
