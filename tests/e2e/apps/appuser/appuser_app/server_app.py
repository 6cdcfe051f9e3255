"""ServerApp: prints its own probe (`SERVERAPP <json>`) and each node's (`CLIENTAPP
<node id> <json>`), then FedAvg over exactly two nodes as apps/deterministic
(`FINAL <json>`)."""

from __future__ import annotations

import json

import numpy as np

from flpg import ArrayRecord, Context, Grid, MessageType, RecordDict, ServerApp
from flpg.serverapp.strategy import FedAvg

from .probe import probe

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    print("SERVERAPP " + json.dumps(probe(dict(context.run_config))), flush=True)
    nodes = grid.wait_for_nodes(2, timeout=60)
    queries = [grid.create_message(RecordDict(), MessageType.QUERY, n, group_id="0") for n in nodes]
    for reply in grid.send_and_receive(queries, timeout=60):
        if reply.has_error():
            raise RuntimeError(f"node {reply.metadata.src_node_id}: {reply.error.reason}")
        found = str(reply.content.config_records["probe"]["json"])
        print(f"CLIENTAPP {reply.metadata.src_node_id} {found}", flush=True)
    initial = ArrayRecord(
        {"w": np.arange(6, dtype=np.float64).reshape(2, 3), "b": np.zeros(2, dtype=np.float64)}
    )
    strategy = FedAvg(min_available_nodes=2, min_train_nodes=2, fraction_evaluate=0.0)
    result = strategy.start(
        grid,
        initial_arrays=initial,
        num_rounds=int(context.run_config["num-server-rounds"]),
        timeout=60,
    )
    final = {name: array.numpy().tolist() for name, array in result.arrays.items()}
    print("FINAL " + json.dumps(final), flush=True)
