"""ClientApp: trains on this node's partition and evaluates on its validation split."""

from __future__ import annotations

from digits.task import Array, load_partition, loss_and_accuracy, train
from flpg.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flpg.clientapp import ClientApp

app = ClientApp()


def _partition(context: Context) -> tuple[int, tuple[Array, Array, Array, Array]]:
    """This node's partition id and `(x_train, y_train, x_val, y_val)`."""
    cfg = context.run_config
    partition_id = int(context.node_config.get("partition-id", 0))
    data = load_partition(
        partition_id,
        int(context.node_config.get("num-partitions", 1)),
        str(cfg["partitioning"]),
        float(cfg["alpha"]),
        int(cfg["seed"]),
    )
    return partition_id, data


def _server_round(msg: Message) -> int:
    """The round number FedAvg puts in the message's config (0 if absent)."""
    config = msg.content.config_records.get("config")
    value = config.get("server-round") if config is not None else None
    return value if isinstance(value, int) else 0


@app.train()
def train_handler(msg: Message, context: Context) -> Message:
    """Local SGD from the global arrays; replies with the new arrays and train metrics."""
    cfg = context.run_config
    partition_id, (x_train, y_train, _, _) = _partition(context)
    params = train(
        msg.content.array_records["arrays"].to_numpy_ndarrays(),
        x_train,
        y_train,
        epochs=int(cfg["local-epochs"]),
        lr=float(cfg["lr"]),
        batch_size=int(cfg["batch-size"]),
        seed=[int(cfg["seed"]), partition_id, _server_round(msg)],
    )
    loss, accuracy = loss_and_accuracy(params, x_train, y_train)
    metrics = MetricRecord(
        {"train-loss": loss, "train-accuracy": accuracy, "num-examples": len(y_train)}
    )
    return Message(RecordDict({"arrays": ArrayRecord(params), "metrics": metrics}), reply_to=msg)


@app.evaluate()
def evaluate_handler(msg: Message, context: Context) -> Message:
    """Evaluates the global arrays on this node's local validation split."""
    _, (_, _, x_val, y_val) = _partition(context)
    loss, accuracy = loss_and_accuracy(
        msg.content.array_records["arrays"].to_numpy_ndarrays(), x_val, y_val
    )
    metrics = MetricRecord(
        {"eval-loss": loss, "eval-accuracy": accuracy, "num-examples": len(y_val)}
    )
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
