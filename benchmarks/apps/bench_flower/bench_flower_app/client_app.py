"""ClientApp: add a per-node constant to the arrays received, report num-examples."""

from __future__ import annotations

from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    partition = int(context.node_config["partition-id"])
    arrays = msg.content["arrays"]
    assert isinstance(arrays, ArrayRecord)
    delta = float(partition + 1)
    updated = ArrayRecord({name: Array(a.numpy() + delta) for name, a in arrays.items()})
    metrics = MetricRecord({"num-examples": 100 * (partition + 1)})
    return Message(RecordDict({"arrays": updated, "metrics": metrics}), reply_to=msg)
