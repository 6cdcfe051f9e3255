"""ClientApp: counts its messages in context.state; may crash or raise on request."""

from __future__ import annotations

import os
import time

from flpg import ClientApp, ConfigRecord, Context, Message, MetricRecord, RecordDict

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    state = context.state.get("probe")
    count = int(state["count"]) + 1 if isinstance(state, ConfigRecord) else 1
    context.state["probe"] = ConfigRecord({"count": count})
    config = msg.content["config"]
    if config.get("crash"):
        os._exit(3)
    if config.get("raise"):
        raise ValueError("probe raised on purpose")
    time.sleep(float(context.run_config["delay"]))
    metrics = MetricRecord({"pid": os.getpid(), "count": count, "run": context.run_id})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
