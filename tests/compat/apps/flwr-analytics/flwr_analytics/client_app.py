"""flwr-analytics: answers the ServerApp's queries from local values only."""

import numpy as np
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from flwr_analytics.task import load_values

app = ClientApp()


@app.query("histogram")
def histogram(msg: Message, context: Context):
    """Counts of the local values per bin (bins from the query's config)."""
    edges = msg.content["config"]["bin-edges"]
    counts, _ = np.histogram(load_values(context.node_config["partition-id"]), bins=edges)
    return Message(
        RecordDict({"histogram": MetricRecord({"counts": counts.tolist()})}), reply_to=msg
    )


@app.query("summary")
def summary(msg: Message, context: Context):
    """Count, sum and sum of squares: enough for the federation's mean and variance."""
    values = load_values(context.node_config["partition-id"])
    stats = {
        "count": int(values.size),
        "sum": int(values.sum()),
        "sum-sq": int((values**2).sum()),
        "max": int(values.max()),
    }
    return Message(RecordDict({"summary": MetricRecord(stats)}), reply_to=msg)
