"""flwr-analytics: a federated histogram and summary statistics."""

import json
from logging import INFO

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


def query_all(grid: Grid, action: str, content: RecordDict) -> list[Message]:
    """Send `query.<action>` to every node; the replies, errors refused."""
    node_ids = sorted(grid.get_node_ids())
    messages = [
        Message(content=content, message_type=f"{MessageType.QUERY}.{action}", dst_node_id=node)
        for node in node_ids
    ]
    replies = grid.send_and_receive(messages)
    log(INFO, "query.%s: %s/%s replies", action, len(list(replies)), len(messages))
    for reply in replies:
        if reply.has_error():
            raise RuntimeError(f"node {reply.metadata.src_node_id}: {reply.error.reason}")
    return replies


@app.main()
def main(grid: Grid, context: Context) -> None:
    edges = context.run_config["bin-edges"]
    config = RecordDict({"config": ConfigRecord({"bin-edges": edges})})
    totals = [0] * (len(edges) - 1)
    for reply in query_all(grid, "histogram", config):
        for i, count in enumerate(reply.content["histogram"]["counts"]):
            totals[i] += count

    count = total = total_sq = 0
    largest = None
    for reply in query_all(grid, "summary", RecordDict()):
        stats = reply.content["summary"]
        count += stats["count"]
        total += stats["sum"]
        total_sq += stats["sum-sq"]
        largest = stats["max"] if largest is None else max(largest, stats["max"])
    mean = total / count
    out = {
        "histogram": totals,
        "count": count,
        "sum": total,
        "mean": mean,
        "variance": total_sq / count - mean**2,
        "max": largest,
    }
    print("RESULT " + json.dumps(out), flush=True)
