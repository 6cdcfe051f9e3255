"""ServerApp whose behaviour the run config's `mode` picks."""

from __future__ import annotations

import numpy as np

from flpg import ArrayRecord, ConfigRecord, Context, Grid, MessageType, RecordDict, ServerApp
from flpg.serverapp.strategy import FedAvg

app = ServerApp()


def _arrays() -> ArrayRecord:
    return ArrayRecord({"w": np.ones(3, dtype=np.float64)})


@app.main()
def main(grid: Grid, context: Context) -> None:
    mode = context.run_config["mode"]
    if mode == "client-raises":
        # min_train_nodes=1: the round goes on with the reply that worked.
        strategy = FedAvg(min_available_nodes=2, min_train_nodes=1, fraction_evaluate=0.0)
        result = strategy.start(grid, initial_arrays=_arrays(), num_rounds=1, timeout=60)
        print(f"FINAL w={result.arrays['w'].numpy().tolist()}", flush=True)
    elif mode == "server-raises":
        print("about to fail", flush=True)
        raise RuntimeError("server exploded: 42")
    elif mode == "slow":
        node_ids = grid.wait_for_nodes(2, timeout=60)
        content = RecordDict({"arrays": _arrays(), "config": ConfigRecord({"server-round": 1})})
        messages = [
            grid.create_message(content, MessageType.TRAIN, node_id, group_id="1")
            for node_id in node_ids
            for _ in range(2)
        ]
        ids = grid.push_messages(messages)
        print(f"sent {len(ids)} messages, waiting for replies", flush=True)
        for reply in grid.receive(ids, timeout=600):
            print(f"reply from node {reply.metadata.src_node_id}", flush=True)
    else:
        raise ValueError(f"unknown mode {mode!r}")
