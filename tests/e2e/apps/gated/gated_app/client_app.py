"""ClientApp: the tenant app's known update, held at a gate from `gate-round` on.

A train instruction of round `gate-round` or later (its group id is the round) waits
until the file named by `gate` exists; an empty `gate` never holds."""

from __future__ import annotations

import os
import time

from flpg import ArrayRecord, ClientApp, Context, Message, MetricRecord, RecordDict

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    gate = str(context.run_config["gate"])
    if gate and int(msg.metadata.group_id) >= int(context.run_config["gate-round"]):
        while not os.path.exists(gate):
            time.sleep(0.1)
    pid = int(context.node_config["partition-id"])
    step = float(context.run_config["step"])
    arrays = msg.content["arrays"]
    updated = ArrayRecord({k: a.numpy() + step * (pid + 1) for k, a in arrays.items()})
    metrics = MetricRecord({"num-examples": 10 * (pid + 1)})
    return Message(RecordDict({"arrays": updated, "metrics": metrics}), reply_to=msg)
