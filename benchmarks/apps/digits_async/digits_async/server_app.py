"""ServerApp: FedAvg or FedBuff (run config `strategy`) with centralised evaluation on
the held-out test set after every round (FedAvg) or server update (FedBuff)."""

from __future__ import annotations

from digits_async.task import init_params, load_test_set, loss_and_accuracy
from flpg.app import ArrayRecord, Context, MetricRecord
from flpg.serverapp import Grid, ServerApp
from flpg.serverapp.strategy import FedAvg
from flpg.serverapp.strategy.fedbuff import FedBuff
from flpg.serverapp.strategy.strategy import Strategy

app = ServerApp()


def _strategy(context: Context) -> Strategy:
    cfg = context.run_config
    nodes = int(cfg["min-nodes"])
    name = str(cfg["strategy"])
    if name == "fedavg":
        return FedAvg(
            fraction_evaluate=0.0,
            min_train_nodes=nodes,
            min_available_nodes=nodes,
            seed=int(cfg["seed"]),
        )
    if name == "fedbuff":
        return FedBuff(
            buffer_size=int(cfg["buffer-size"]),
            concurrency=int(cfg["concurrency"]) or None,
            server_learning_rate=float(cfg["server-lr"]),
            min_available_nodes=nodes,
            seed=int(cfg["seed"]),
        )
    raise ValueError(f"strategy must be 'fedavg' or 'fedbuff', got {name!r}")


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    num_rounds = int(cfg["num-server-rounds"])
    x_test, y_test = load_test_set()

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        loss, accuracy = loss_and_accuracy(arrays.to_numpy_ndarrays(), x_test, y_test)
        return MetricRecord({"accuracy": accuracy, "loss": loss})

    result = _strategy(context).start(
        grid,
        initial_arrays=ArrayRecord(init_params(int(cfg["seed"]))),
        num_rounds=num_rounds,
        timeout=120,
        evaluate_fn=evaluate_fn,
    )
    final = result.evaluate_metrics_serverapp[num_rounds]
    print(f"final centralised accuracy: {final['accuracy']:.3f}", flush=True)
