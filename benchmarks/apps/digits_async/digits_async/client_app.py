"""ClientApp: sleeps `train-seconds` x `slowdown` (its node config; 1 if absent) to
stand in for slower hardware, then trains on this node's partition."""

from __future__ import annotations

import time

from digits_async.task import Array, load_partition, loss_and_accuracy, train
from flpg.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flpg.clientapp import ClientApp

app = ClientApp()


def _partition(context: Context) -> tuple[int, tuple[Array, Array, Array, Array]]:
    """This node's partition id and `(x_train, y_train, x_val, y_val)`."""
    partition_id = int(context.node_config.get("partition-id", 0))
    data = load_partition(
        partition_id,
        int(context.node_config.get("num-partitions", 1)),
        seed=int(context.run_config["seed"]),
    )
    return partition_id, data


@app.train()
def train_handler(msg: Message, context: Context) -> Message:
    """Local SGD from the arrays received; replies with the new arrays and train metrics.
    Local shuffling is seeded by the message id, so every dispatch differs."""
    cfg = context.run_config
    slowdown = float(context.node_config.get("slowdown", 1))
    time.sleep(float(cfg["train-seconds"]) * slowdown)
    partition_id, (x_train, y_train, _, _) = _partition(context)
    params = train(
        msg.content.array_records["arrays"].to_numpy_ndarrays(),
        x_train,
        y_train,
        epochs=int(cfg["local-epochs"]),
        lr=float(cfg["lr"]),
        batch_size=int(cfg["batch-size"]),
        seed=[int(cfg["seed"]), partition_id, int(msg.metadata.message_id or 0)],
    )
    loss, accuracy = loss_and_accuracy(params, x_train, y_train)
    metrics = MetricRecord(
        {"train-loss": loss, "train-accuracy": accuracy, "num-examples": len(y_train)}
    )
    return Message(RecordDict({"arrays": ArrayRecord(params), "metrics": metrics}), reply_to=msg)
