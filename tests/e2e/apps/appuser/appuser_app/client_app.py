"""ClientApp: reports its probe on `query`; on `train` adds (partition-id + 1) to every
array, weight 10 * (partition-id + 1) (as apps/deterministic)."""

from __future__ import annotations

import json

from flpg import ArrayRecord, ClientApp, ConfigRecord, Context, Message, MetricRecord, RecordDict

from .probe import probe

app = ClientApp()


@app.query()
def query(msg: Message, context: Context) -> Message:
    found = probe(dict(context.run_config))
    return Message(RecordDict({"probe": ConfigRecord({"json": json.dumps(found)})}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    pid = int(context.node_config["partition-id"])
    arrays = msg.content.array_records["arrays"]
    updated = ArrayRecord({name: array.numpy() + (pid + 1) for name, array in arrays.items()})
    metrics = MetricRecord({"num-examples": 10 * (pid + 1), "loss": 1.0 / (pid + 1)})
    return Message(RecordDict({"arrays": updated, "metrics": metrics}), reply_to=msg)
