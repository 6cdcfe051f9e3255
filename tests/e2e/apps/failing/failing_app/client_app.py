"""ClientApp: adds 1 to every array (weight 1); raises from the configured round on."""

from __future__ import annotations

from flpg import ArrayRecord, ClientApp, Context, Message, MetricRecord, RecordDict

app = ClientApp()


def _fails(msg: Message, context: Context, key: str) -> bool:
    healthy = str(context.run_config["healthy-partitions"])
    if str(context.node_config["partition-id"]) in healthy.split(","):
        return False
    start = int(context.run_config[key])
    server_round = int(msg.content["config"]["server-round"])  # type: ignore[arg-type]
    return 0 < start <= server_round


@app.train()
def train(msg: Message, context: Context) -> Message:
    if _fails(msg, context, "train-fails-from"):
        raise ValueError("training failed on purpose")
    arrays = msg.content["arrays"]
    updated = ArrayRecord({name: array.numpy() + 1 for name, array in arrays.items()})
    metrics = MetricRecord({"num-examples": 1})
    return Message(RecordDict({"arrays": updated, "metrics": metrics}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    if _fails(msg, context, "evaluate-fails-from"):
        raise ValueError("evaluation failed on purpose")
    metrics = MetricRecord({"num-examples": 1, "loss": 0.5})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
