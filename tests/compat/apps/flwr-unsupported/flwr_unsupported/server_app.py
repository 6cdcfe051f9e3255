"""A ServerApp with a strategy flpg does not provide (FedProx)."""

from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedProx

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    FedProx(proximal_mu=0.1).start(grid=grid, initial_arrays=ArrayRecord(), num_rounds=1)
