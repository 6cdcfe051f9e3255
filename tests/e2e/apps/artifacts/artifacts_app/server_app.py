"""ServerApp: FedAvg over two nodes; writes `final.json` into its working directory and
prints where that is (`CWD <path>`, `ARTIFACT_DIR <env>`) and the final arrays."""

from __future__ import annotations

import json
import os

import numpy as np

from flpg import ArrayRecord, Context, Grid, ServerApp
from flpg.serverapp.strategy import FedAvg

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    print("CWD " + os.getcwd(), flush=True)
    print("ARTIFACT_DIR " + os.environ.get("FLPG_ARTIFACT_DIR", ""), flush=True)
    strategy = FedAvg(min_available_nodes=2, min_train_nodes=2, fraction_evaluate=0.0)
    result = strategy.start(
        grid,
        initial_arrays=ArrayRecord(
            {"w": np.arange(10, dtype=np.float32), "n": np.array([1, 2], dtype=np.int64)}
        ),
        num_rounds=int(context.run_config["num-server-rounds"]),
        timeout=60,
    )
    final = {name: array.numpy().tolist() for name, array in result.arrays.items()}
    with open("final.json", "w") as out:  # relative: lands in the artifact directory
        json.dump(final, out)
    print("FINAL " + json.dumps(final), flush=True)
