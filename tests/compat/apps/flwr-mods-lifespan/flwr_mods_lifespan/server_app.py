"""FedAvg with the clipping norm in its train config, then one round of the other
mods by hand; prints what came back as one JSON line."""

import json
from collections.abc import Iterator

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

app = ServerApp()


@app.lifespan()
def lifespan(context: Context) -> Iterator[None]:
    print("SERVER LIFESPAN setup", flush=True)
    yield
    print("SERVER LIFESPAN teardown", flush=True)


def update_norm(sent: ArrayRecord, reply: Message) -> float:
    pairs = zip(reply.content["arrays"].to_numpy_ndarrays(), sent.to_numpy_ndarrays(), strict=True)
    return float(np.sqrt(sum(np.sum((got - old) ** 2) for got, old in pairs)))


def by_hand(grid: Grid, arrays: ArrayRecord, message_type: str, config: dict) -> list[dict]:
    content = RecordDict({"arrays": arrays, "config": ConfigRecord(config)})
    messages = [
        grid.create_message(content, message_type, node, group_id=message_type)
        for node in sorted(grid.get_node_ids())
    ]
    out = []
    for reply in grid.send_and_receive(messages, timeout=60):
        if reply.has_error():
            out.append({"error": reply.error.code, "reason": reply.error.reason})
            continue
        values = np.concatenate([a.ravel() for a in reply.content["arrays"].to_numpy_ndarrays()])
        out.append(
            {
                "norm": update_norm(arrays, reply),
                "norm_bit": reply.content["metrics"].get("norm_bit"),
                "distinct": len(np.unique(values)),
            }
        )
    return sorted(out, key=lambda r: json.dumps(r, sort_keys=True))


@app.main()
def main(grid: Grid, context: Context) -> None:
    clipping_norm = float(context.run_config["clipping-norm"])
    initial = ArrayRecord({"w": Array(np.zeros((2, 3))), "b": Array(np.zeros(3))})
    strategy = FedAvg(fraction_evaluate=0.0)
    result = strategy.start(
        grid=grid,
        initial_arrays=initial,
        num_rounds=int(context.run_config["num-server-rounds"]),
        train_config=ConfigRecord({"clipping_norm": clipping_norm}),
    )
    arrays = result.arrays
    out = {
        "final": [a.tolist() for a in arrays.to_numpy_ndarrays()],
        "train-metrics": {str(r): dict(m) for r, m in result.train_metrics_clientapp.items()},
        "adaptive": by_hand(grid, arrays, "train.adaptive", {"clipping_norm": clipping_norm}),
        "localdp": by_hand(grid, arrays, "train.localdp", {}),
        "no-norm": by_hand(grid, arrays, "train", {}),
    }
    try:
        grid.create_message(RecordDict(), "fit", 1, group_id="x")
    except ValueError as exc:
        out["bad-type"] = str(exc)
    print("RESULT " + json.dumps(out), flush=True)
