"""ServerApp: its `mode` (run config) picks what it asks of the nodes."""

from __future__ import annotations

import json
from typing import Any

from flpg import ConfigRecord, Context, Grid, MessageType, RecordDict, ServerApp

app = ServerApp()


def _content(**config: Any) -> RecordDict:
    return RecordDict({"config": ConfigRecord(config)})


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    mode = cfg["mode"]
    if mode == "rounds":
        nodes = grid.wait_for_nodes(int(cfg["min-nodes"]), timeout=float(cfg["wait-timeout"]))
        for r in range(1, int(cfg["rounds"]) + 1):
            faulty = r == int(cfg["fault-round"])
            messages = [
                grid.create_message(
                    _content(
                        round=r,
                        crash=faulty and n == int(cfg["crash-node"]),
                        **{"raise": faulty and n == int(cfg["raise-node"])},
                    ),
                    MessageType.TRAIN,
                    n,
                    group_id=str(r),
                )
                for n in nodes
            ]
            replies: dict[int, Any] = {}
            for reply in grid.receive(grid.push_messages(messages), timeout=120):
                src = reply.metadata.src_node_id
                if reply.has_error():
                    replies[src] = {"error": reply.error.reason}
                else:
                    m = reply.content["metrics"]
                    replies[src] = {"pid": m["pid"], "count": m["count"], "run": m["run"]}
            print(f"ROUND {r} {json.dumps(replies, sort_keys=True)}", flush=True)
    elif mode == "flood":
        node = grid.wait_for_nodes(1, timeout=float(cfg["wait-timeout"]))[0]
        messages = [
            grid.create_message(_content(i=i), MessageType.TRAIN, node, group_id="1")
            for i in range(int(cfg["messages"]))
        ]
        ids = grid.push_messages(messages)
        print(f"FLOODED {len(ids)}", flush=True)
        errors = sum(reply.has_error() for reply in grid.receive(ids, timeout=300))
        print(f"DRAINED errors={errors}", flush=True)
    elif mode == "outside":
        message = grid.create_message(
            _content(), MessageType.TRAIN, int(cfg["target-node"]), group_id="1"
        )
        grid.push_messages([message])
    else:
        raise ValueError(f"unknown mode {mode!r}")
