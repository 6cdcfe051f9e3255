"""A ServerApp using a name of Flower's legacy API, which flpg does not provide."""

import numpy as np
from flwr.app import ArrayRecord, Context
from flwr.common import ndarrays_to_parameters
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    initial = ndarrays_to_parameters([np.zeros(2)])
    FedAvg().start(grid=grid, initial_arrays=ArrayRecord(initial), num_rounds=1)
