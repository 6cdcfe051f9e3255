"""ClientApp: what it returns depends on its partition-id (see pyproject.toml)."""

from __future__ import annotations

import numpy as np

from flpg import ArrayRecord, ClientApp, Context, Message, MetricRecord, RecordDict

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    pid = int(context.node_config["partition-id"])
    w = msg.content["arrays"]["w"].numpy()
    metrics = MetricRecord({"num-examples": 10})
    if pid == 1:
        w = np.zeros(5, dtype=w.dtype)
    elif pid == 2:
        w = (w + 1).astype(np.float32)
    elif pid == 3:
        w = np.full_like(w, np.nan)
    elif pid == 4:
        metrics = MetricRecord({"loss": 0.1})
    else:
        w = w + 1
    content = RecordDict({"arrays": ArrayRecord({"w": w}), "metrics": metrics})
    return Message(content, reply_to=msg)
