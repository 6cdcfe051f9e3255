"""ClientApp that raises on one partition, or trains slowly."""

from __future__ import annotations

import time

from flpg import ArrayRecord, ClientApp, Context, Message, MetricRecord, RecordDict

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    pid = int(context.node_config["partition-id"])
    if context.run_config["mode"] == "client-raises" and pid == int(
        context.run_config["fail-partition"]
    ):
        raise ValueError("boom")
    if context.run_config["mode"] == "slow":
        time.sleep(float(context.run_config["client-sleep"]))
    arrays = msg.content["arrays"]
    updated = ArrayRecord({name: array.numpy() + 1.0 for name, array in arrays.items()})
    metrics = MetricRecord({"num-examples": 10, "loss": 0.5})
    return Message(RecordDict({"arrays": updated, "metrics": metrics}), reply_to=msg)
