"""ServerApp: FedAvg over the run's nodes, with centralised evaluation on the held-out test set."""

from __future__ import annotations

from digits.task import init_params, load_test_set, loss_and_accuracy
from flpg.app import ArrayRecord, Context, MetricRecord
from flpg.serverapp import Grid, ServerApp
from flpg.serverapp.strategy import FedAvg

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    num_rounds = int(cfg["num-server-rounds"])
    min_nodes = int(cfg["min-nodes"])
    x_test, y_test = load_test_set()

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        loss, accuracy = loss_and_accuracy(arrays.to_numpy_ndarrays(), x_test, y_test)
        print(
            f"round {server_round}/{num_rounds}: test accuracy {accuracy:.3f}, loss {loss:.4f}",
            flush=True,
        )
        return MetricRecord({"accuracy": accuracy, "loss": loss})

    strategy = FedAvg(
        min_train_nodes=min_nodes,
        min_evaluate_nodes=min_nodes,
        min_available_nodes=min_nodes,
        seed=int(cfg["seed"]),
    )
    result = strategy.start(
        grid,
        initial_arrays=ArrayRecord(init_params(int(cfg["seed"]))),
        num_rounds=num_rounds,
        timeout=120,
        evaluate_fn=evaluate_fn,
    )
    final = result.evaluate_metrics_serverapp[num_rounds]
    print(f"final centralised accuracy: {final['accuracy']:.3f}", flush=True)
