"""ClientApp: a known update per node, optionally slow, so runs overlap in time."""

from __future__ import annotations

import time

from flpg import ArrayRecord, ClientApp, Context, Message, MetricRecord, RecordDict

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    time.sleep(float(context.run_config["delay"]))
    pid = int(context.node_config["partition-id"])
    step = float(context.run_config["step"])
    arrays = msg.content["arrays"]
    updated = ArrayRecord({k: a.numpy() + step * (pid + 1) for k, a in arrays.items()})
    metrics = MetricRecord({"num-examples": 10 * (pid + 1)})
    return Message(RecordDict({"arrays": updated, "metrics": metrics}), reply_to=msg)
