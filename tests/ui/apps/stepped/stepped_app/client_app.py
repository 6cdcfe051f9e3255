"""ClientApp: adds 1 to every array; metrics that fall with the round."""

from __future__ import annotations

import os
import time

from flpg import ArrayRecord, ClientApp, Context, Message, MetricRecord, RecordDict

app = ClientApp()


def _round(msg: Message) -> int:
    return int(msg.content["config"]["server-round"])


@app.train()
def train(msg: Message, context: Context) -> Message:
    server_round = _round(msg)
    gate = str(context.run_config["gate"])
    if gate:
        while not os.path.exists(os.path.join(gate, f"round-{server_round}")):
            time.sleep(0.05)
    pid = int(context.node_config["partition-id"])
    updated = ArrayRecord({k: a.numpy() + 1.0 for k, a in msg.content["arrays"].items()})
    metrics = MetricRecord(
        {
            "num-examples": 10 * (pid + 1),
            "loss": 1.0 / server_round + 0.1 * pid,
            "accuracy": 1.0 - 1.0 / (server_round + 1),
        }
    )
    return Message(RecordDict({"arrays": updated, "metrics": metrics}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    server_round = _round(msg)
    pid = int(context.node_config["partition-id"])
    metrics = MetricRecord(
        {"num-examples": 5 * (pid + 1), "eval_loss": 1.5 / server_round, "eval_acc": 0.5}
    )
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
