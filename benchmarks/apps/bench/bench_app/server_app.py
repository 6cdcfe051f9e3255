"""ServerApp: FedAvg for `num-server-rounds` rounds on `min-nodes` nodes, no evaluation."""

from __future__ import annotations

import numpy as np

from flpg import ArrayRecord, Context, Grid, ServerApp
from flpg.serverapp.strategy import FedAvg

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = context.run_config
    nodes = int(config["min-nodes"])
    rounds = int(config["num-server-rounds"])
    size = int(config["model-floats"])
    strategy = FedAvg(
        fraction_evaluate=0.0,
        min_available_nodes=nodes,
        min_train_nodes=nodes,
        min_evaluate_nodes=nodes,
    )
    result = strategy.start(
        grid,
        initial_arrays=ArrayRecord({"w": np.zeros(size, dtype=np.float32)}),
        num_rounds=rounds,
        timeout=float(config["round-timeout"]),
    )
    final = result.arrays["w"].numpy()
    # With partitions 0..3 the weighted mean update is 3.0 per round (see __init__).
    if nodes == 4:
        expected = 3.0 * rounds
        if final.shape != (size,) or not np.allclose(final, expected):
            raise RuntimeError(
                f"wrong final model: shape {final.shape}, mean {float(final.mean())}, "
                f"expected {expected} everywhere"
            )
    print(f"FINAL mean={float(final.mean()):.6f} size={final.size}", flush=True)
