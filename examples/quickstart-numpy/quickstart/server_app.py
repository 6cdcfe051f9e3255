"""ServerApp: FedAvg over the run's nodes."""

from __future__ import annotations

from flpg.app import ArrayRecord, Context
from flpg.serverapp import Grid, ServerApp
from flpg.serverapp.strategy import FedAvg
from quickstart.task import initial_params

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    strategy = FedAvg(
        fraction_train=float(cfg["fraction-train"]),
        min_train_nodes=int(cfg["min-nodes"]),
        min_evaluate_nodes=int(cfg["min-nodes"]),
        min_available_nodes=int(cfg["min-nodes"]),
    )
    result = strategy.start(
        grid,
        initial_arrays=ArrayRecord(initial_params()),
        num_rounds=int(cfg["num-server-rounds"]),
        timeout=120,
    )
    final = result.evaluate_metrics_clientapp.get(int(cfg["num-server-rounds"]))
    print(f"final federated evaluation: {dict(final) if final else 'none'}")
