"""ClientApp: trains and evaluates on this node's partition."""

from __future__ import annotations

from flpg.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flpg.clientapp import ClientApp
from quickstart.task import load_partition, loss_and_accuracy, train

app = ClientApp()


def _data(context: Context):
    return load_partition(
        int(context.node_config.get("partition-id", 0)),
        int(context.node_config.get("num-partitions", 1)),
    )


@app.train()
def train_handler(msg: Message, context: Context) -> Message:
    x_train, y_train, _, _ = _data(context)
    params = msg.content["arrays"].to_numpy_ndarrays()
    params = train(
        params,
        x_train,
        y_train,
        int(context.run_config["local-epochs"]),
        float(context.run_config["lr"]),
    )
    loss, acc = loss_and_accuracy(params, x_train, y_train)
    metrics = MetricRecord(
        {"train-loss": loss, "train-accuracy": acc, "num-examples": len(y_train)}
    )
    return Message(RecordDict({"arrays": ArrayRecord(params), "metrics": metrics}), reply_to=msg)


@app.evaluate()
def evaluate_handler(msg: Message, context: Context) -> Message:
    _, _, x_test, y_test = _data(context)
    params = msg.content["arrays"].to_numpy_ndarrays()
    loss, acc = loss_and_accuracy(params, x_test, y_test)
    metrics = MetricRecord({"eval-loss": loss, "eval-accuracy": acc, "num-examples": len(y_test)})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
