"""flwr-custom-strategy: clients that use (and echo) what the strategy configured."""

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context):
    """Partition p moves every value by lr * (p + 1) and weighs 2p + 1 examples."""
    partition_id = context.node_config["partition-id"]
    config = msg.content["config"]
    lr = config["lr"]
    ndarrays = msg.content["arrays"].to_numpy_ndarrays()
    updated = [a + lr * (partition_id + 1) for a in ndarrays]
    metrics = {
        "lr-seen": lr,
        "tag-ok": int(config["tag"] == f"round-{config['server-round']}"),
        "num-examples": 2 * partition_id + 1,
    }
    content = RecordDict({"arrays": ArrayRecord(updated), "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context):
    """Report (partition + 1) * scale * the first value of the model."""
    partition_id = context.node_config["partition-id"]
    first = float(msg.content["arrays"].to_numpy_ndarrays()[0].flat[0])
    value = (partition_id + 1) * msg.content["config"]["scale"] * first
    metrics = {"value": value, "num-examples": 1}
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
