"""flwr-pytorch: a Flower / PyTorch app."""

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from flwr_pytorch.task import Net, total
from flwr_pytorch.task import train as train_fn

app = ClientApp()


@app.train()
def train(msg: Message, context: Context):
    """Update the received model locally; partition p weighs 2p + 1 examples."""
    model = Net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    partition_id = context.node_config["partition-id"]
    train_loss = train_fn(
        model, context.run_config["local-epochs"], msg.content["config"]["lr"], partition_id
    )
    model_record = ArrayRecord(model.state_dict())
    metrics = {"train_loss": train_loss, "num-examples": 2 * partition_id + 1}
    content = RecordDict({"arrays": model_record, "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context):
    """Report the sum of the received parameters."""
    model = Net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    metrics = {"param_sum": total(model), "num-examples": 1}
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
