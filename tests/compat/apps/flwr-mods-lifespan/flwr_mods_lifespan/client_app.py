"""Each node moves every value by 10 * (partition-id + 1), far beyond any clipping
norm; the mods clip (and noise) that update before it leaves the node."""

from collections.abc import Iterator

from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import (
    LocalDpMod,
    adaptiveclipping_mod,
    arrays_size_mod,
    fixedclipping_mod,
    message_size_mod,
)

# Flower ClientApp: message_size_mod wraps every handler
app = ClientApp(mods=[message_size_mod])

local_data: dict[int, float] = {}


@app.lifespan()
def lifespan(context: Context) -> Iterator[None]:
    """Load this node's "data" (its step) before it handles messages."""
    local_data[context.node_id] = 10.0 * (int(context.node_config["partition-id"]) + 1)
    yield
    local_data.pop(context.node_id, None)


def local_update(msg: Message, context: Context) -> Message:
    step = local_data[context.node_id]
    arrays = msg.content["arrays"]
    updated = ArrayRecord({name: Array(array.numpy() + step) for name, array in arrays.items()})
    metrics = MetricRecord({"num-examples": int(step), "step": step})
    return Message(RecordDict({"arrays": updated, "metrics": metrics}), reply_to=msg)


@app.train(mods=[arrays_size_mod, fixedclipping_mod])
def train(msg: Message, context: Context) -> Message:
    return local_update(msg, context)


@app.train("adaptive", mods=[adaptiveclipping_mod])
def train_adaptive(msg: Message, context: Context) -> Message:
    return local_update(msg, context)


@app.train(
    "localdp", mods=[LocalDpMod(clipping_norm=1.0, sensitivity=1e-6, epsilon=1.0, delta=1e-5)]
)
def train_localdp(msg: Message, context: Context) -> Message:
    return local_update(msg, context)
