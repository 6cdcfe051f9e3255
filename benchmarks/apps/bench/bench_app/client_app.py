"""ClientApp: sleep `train-seconds`, add a per-node constant, report num-examples."""

from __future__ import annotations

import time

from flpg import ArrayRecord, ClientApp, Context, Message, MetricRecord, RecordDict

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    time.sleep(float(context.run_config["train-seconds"]))
    partition = int(context.node_config["partition-id"])
    arrays = msg.content["arrays"]
    assert isinstance(arrays, ArrayRecord)
    delta = float(partition + 1)
    updated = ArrayRecord({name: a.numpy() + delta for name, a in arrays.items()})
    metrics = MetricRecord({"num-examples": 100 * (partition + 1)})
    return Message(RecordDict({"arrays": updated, "metrics": metrics}), reply_to=msg)
