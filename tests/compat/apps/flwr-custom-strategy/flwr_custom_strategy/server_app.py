"""flwr-custom-strategy: the ServerApp runs the custom strategy."""

import json

import numpy as np
from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp

from flwr_custom_strategy.strategy import ServerStepFedAvg

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    num_rounds: int = context.run_config["num-server-rounds"]
    strategy = ServerStepFedAvg(server_lr=context.run_config["server-lr"])
    initial = ArrayRecord([np.zeros(4), np.ones((2, 2))])
    result = strategy.start(grid=grid, initial_arrays=initial, num_rounds=num_rounds)

    def plain(per_round):
        return {str(rnd): dict(metrics) for rnd, metrics in per_round.items()}

    out = {
        "final": [a.tolist() for a in result.arrays.to_numpy_ndarrays()],
        "train": plain(result.train_metrics_clientapp),
        "evaluate": plain(result.evaluate_metrics_clientapp),
        "trace": strategy.trace,
    }
    print("RESULT " + json.dumps(out), flush=True)
