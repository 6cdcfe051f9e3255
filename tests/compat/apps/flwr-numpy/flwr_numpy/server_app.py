"""flwr-numpy: a Flower / NumPy app."""

import json
from logging import INFO

from flwr.app import ArrayRecord, Context
from flwr.common.config import unflatten_dict
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from flwr_numpy.task import get_model

# Create ServerApp
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Main entry point for the ServerApp."""
    num_rounds: int = context.run_config["num-server-rounds"]
    model_cfg = unflatten_dict(context.run_config)["model"]
    log(INFO, "model %dx%d, %d rounds", model_cfg["rows"], model_cfg["cols"], num_rounds)

    arrays = ArrayRecord(get_model(context.run_config["model.rows"], model_cfg["cols"]))
    strategy = FedAvg()
    result = strategy.start(grid=grid, initial_arrays=arrays, num_rounds=num_rounds)

    ndarrays = result.arrays.to_numpy_ndarrays()
    print("FINAL " + json.dumps([a.tolist() for a in ndarrays]), flush=True)
