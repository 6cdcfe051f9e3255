"""ClientApp: add a per-node constant to the arrays received, report num-examples;
answer tiny queries with their own sequence number."""

from __future__ import annotations

from flpg import ArrayRecord, ClientApp, ConfigRecord, Context, Message, MetricRecord, RecordDict

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    partition = int(context.node_config["partition-id"])
    arrays = msg.content["arrays"]
    assert isinstance(arrays, ArrayRecord)
    delta = float(partition + 1)
    updated = ArrayRecord({name: a.numpy() + delta for name, a in arrays.items()})
    metrics = MetricRecord({"num-examples": 100 * (partition + 1)})
    return Message(RecordDict({"arrays": updated, "metrics": metrics}), reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    record = msg.content["q"]
    assert isinstance(record, ConfigRecord)
    seq = record["seq"]
    assert isinstance(seq, int)
    return Message(RecordDict({"a": MetricRecord({"seq": seq})}), reply_to=msg)
