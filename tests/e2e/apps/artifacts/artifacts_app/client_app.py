"""ClientApp: adds (partition-id + 1) to every array; weight 10 * (partition-id + 1)."""

from __future__ import annotations

from flpg import ArrayRecord, ClientApp, Context, Message, MetricRecord, RecordDict

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    pid = int(context.node_config["partition-id"])
    arrays = msg.content["arrays"]
    updated = ArrayRecord({name: array.numpy() + (pid + 1) for name, array in arrays.items()})
    metrics = MetricRecord({"num-examples": 10 * (pid + 1), "loss": 1.0 / (pid + 1)})
    return Message(RecordDict({"arrays": updated, "metrics": metrics}), reply_to=msg)
