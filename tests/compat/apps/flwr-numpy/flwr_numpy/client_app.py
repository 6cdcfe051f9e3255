"""flwr-numpy: a Flower / NumPy app."""

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from flwr_numpy.task import local_update

# Flower ClientApp
app = ClientApp()


@app.train()
def train(msg: Message, context: Context):
    """Train the model on local data: partition p adds p + 1, with 10 * (p + 1) examples."""
    partition_id = int(context.node_config["partition-id"])
    ndarrays = msg.content["arrays"].to_numpy_ndarrays()
    model_record = ArrayRecord(local_update(ndarrays, partition_id))
    metrics = {"train_loss": 1.0 / (partition_id + 1), "num-examples": 10 * (partition_id + 1)}
    content = RecordDict({"arrays": model_record, "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context):
    """Evaluate the model on local data."""
    ndarrays = msg.content["arrays"].to_numpy_ndarrays()
    metrics = {"eval_sum": float(sum(a.sum() for a in ndarrays)), "num-examples": 1}
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
