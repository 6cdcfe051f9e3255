"""Queries each node `rounds` times and prints what came back as one JSON line."""

import json
from collections.abc import Iterator

import numpy as np
from flwr.app import ArrayRecord, Context, Message, RecordDict
from flwr.common import DEFAULT_TTL
from flwr.serverapp import Grid, ServerApp

app = ServerApp()
events: list[str] = []


@app.lifespan()
def lifespan(context: Context) -> Iterator[None]:
    events.append("setup")
    yield
    print("TEARDOWN after " + ",".join(events), flush=True)


@app.main()
def main(grid: Grid, context: Context) -> None:
    events.append("main")
    run = grid.run
    assert run.run_id == context.run_id, (run.run_id, context.run_id)
    nodes = sorted(grid.get_node_ids())
    arrays = ArrayRecord({"w": np.arange(3, dtype="float32"), "big": np.arange(4, dtype=">f4")})
    out = []
    for rnd in range(1, int(context.run_config["rounds"]) + 1):
        messages = [
            grid.create_message(RecordDict({"arrays": arrays}), "query", node, str(rnd))
            for node in nodes
        ]
        assert all(m.metadata.ttl == DEFAULT_TTL for m in messages)
        replies: list[Message] = list(grid.send_and_receive(messages, timeout=60))
        for reply in sorted(replies, key=lambda r: r.metadata.src_node_id or 0):
            if reply.has_error():
                error = reply.error
                out.append(
                    {"error": error.code, "reason": error.reason, "group": reply.metadata.group_id}
                )
            else:
                config = dict(reply.content["config"])
                echo = reply.content["arrays"]["echo"]
                config["echo"] = [echo.dtype, echo.numpy().tolist()]
                out.append(config)
    print("RESULT " + json.dumps({"status": run.status.status, "replies": out}), flush=True)
