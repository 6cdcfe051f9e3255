"""ClientApp: a known update per node; slow on request, on a message's first attempt."""

from __future__ import annotations

import time
from pathlib import Path

from flpg import ArrayRecord, ClientApp, Context, Message, MetricRecord, RecordDict

app = ClientApp()


def _first_attempt(marker_dir: str, message_id: str | None) -> bool:
    """Record that a handler started on this message; True the first time."""
    if not marker_dir:
        return True
    marker = Path(marker_dir) / str(message_id)
    try:
        marker.touch(exist_ok=False)
    except FileExistsError:
        return False
    return True


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg = context.run_config
    pid = int(context.node_config["partition-id"])
    first = _first_attempt(str(cfg["marker-dir"]), msg.metadata.message_id)
    server_round = msg.content.config_records["config"]["server-round"]
    assert isinstance(server_round, int)
    slow_round = int(cfg["slow-round"])
    if first and pid == int(cfg["slow-partition"]) and slow_round in (-1, server_round):
        time.sleep(float(cfg["slow-delay"]))
    arrays = msg.content.array_records["arrays"]
    updated = ArrayRecord({name: array.numpy() + (pid + 1) for name, array in arrays.items()})
    metrics = MetricRecord({"num-examples": 10 * (pid + 1), "first-attempt": int(first)})
    return Message(RecordDict({"arrays": updated, "metrics": metrics}), reply_to=msg)
