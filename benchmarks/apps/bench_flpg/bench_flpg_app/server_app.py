"""ServerApp: FedAvg (weighted by num-examples, no evaluation), or a burst of tiny
queries (see the package docstring)."""

from __future__ import annotations

import numpy as np

from flpg import ArrayRecord, ConfigRecord, Context, Grid, MessageType, RecordDict, ServerApp
from flpg.serverapp.strategy import FedAvg

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = context.run_config
    if config["mode"] == "throughput":
        throughput(grid, int(config["min-nodes"]), int(config["messages"]))
        return
    nodes = int(config["min-nodes"])
    rounds = int(config["num-server-rounds"])
    size = int(config["model-floats"])
    strategy = FedAvg(
        fraction_train=1.0,
        fraction_evaluate=0.0,
        min_available_nodes=nodes,
        min_train_nodes=nodes,
        min_evaluate_nodes=0,
    )
    result = strategy.start(
        grid,
        initial_arrays=ArrayRecord({"w": np.zeros(size, dtype=np.float32)}),
        num_rounds=rounds,
        timeout=float(config["round-timeout"]),
    )
    final = result.arrays["w"].numpy()
    expected = rounds * (2 * nodes + 1) / 3
    if final.shape != (size,) or not np.allclose(final, expected, rtol=1e-4):
        raise RuntimeError(
            f"wrong final model: shape {final.shape}, mean {float(final.mean())}, "
            f"expected {expected} everywhere"
        )
    print(f"FINAL ok mean={float(final.mean()):.6f} expected={expected:.6f}", flush=True)


def throughput(grid: Grid, nodes: int, count: int) -> None:
    node_ids = grid.wait_for_nodes(nodes, timeout=60)
    messages = [
        grid.create_message(
            RecordDict({"q": ConfigRecord({"seq": i})}),
            MessageType.QUERY,
            node_ids[i % len(node_ids)],
            group_id="burst",
        )
        for i in range(count)
    ]
    replies = grid.send_and_receive(messages, timeout=600)
    errors = [r for r in replies if r.has_error()]
    if len(replies) != count or errors:
        raise RuntimeError(
            f"{len(replies)} of {count} replies, {len(errors)} errors"
            + (f" (first: {errors[0].error.reason})" if errors else "")
        )
    print(f"THROUGHPUT ok {count} replies", flush=True)
