"""ServerApp: sends one instruction to each of two nodes, tries its attacks while they
are out (again and again until its `stop-file` exists, if set), prints `SERVER <json>`, then
`CLIENT <node id> <json>` per reply."""

from __future__ import annotations

import json
from functools import partial
from typing import Any

from flpg import ConfigRecord, Context, Grid, RecordDict, ServerApp

from .attacks import Attack, common, connect, logins, repeat, whoami

app = ServerApp()


def _own(cfg: Any, run_id: int, instructions: list[int], nodes: list[int]) -> list[Attack]:
    """What only a ServerApp may try: forge replies, send into another run, write
    another run's rows, read what its grants leave out."""
    return _messages(cfg, run_id, instructions[0], nodes[0]) + _rows(cfg, instructions[0])


def _messages(cfg: Any, run_id: int, first: int, node: int) -> list[Attack]:
    """Forge a reply, send into another run, take over another run's messages."""
    victim = int(cfg["victim-run"])
    return [
        (
            "forge-reply-own-run",
            "INSERT INTO messages (run_id, src_node_id, reply_to, group_id, message_type,"
            " ttl_seconds, deadline)"
            " VALUES (%s, %s, %s, '1', 'train', 60, now() + interval '1 minute')",
            (run_id, node, first),
        ),
        (
            "insert-victim-instruction",
            "INSERT INTO messages (run_id, dst_node_id, group_id, message_type, ttl_seconds,"
            " deadline) VALUES (%s, %s, '1', 'train', 60, now() + interval '1 minute')",
            (victim, node),
        ),
        (
            "instruction-with-chosen-id",
            "INSERT INTO messages (id, run_id, dst_node_id, group_id, message_type, ttl_seconds,"
            " deadline) VALUES (nextval('messages_id_seq') + 1000000, %s, %s, 'chosen-id',"
            " 'chosen-id', 1, now() + interval '1 second')",
            (run_id, node),
        ),
        (
            "update-victim-run",
            "UPDATE runs SET status = 'failed', reason = 'pwned', finished_at = now()"
            " WHERE id = %s",
            (victim,),
        ),
        (
            "update-other-runs",
            "UPDATE runs SET heartbeat_at = now() WHERE id <> flpg_my_run_id()",
            None,
        ),
        (
            "move-own-instruction-to-victim",
            "UPDATE messages SET run_id = %s WHERE id = %s",
            (victim, first),
        ),
        (
            "mark-victim-reply-done",
            "UPDATE messages SET state = 'done', finished_at = now(), rejected_reason = 'pwned'"
            " WHERE id = %s",
            (int(cfg["victim-reply"]),),
        ),
    ]


def _rows(cfg: Any, first: int) -> list[Attack]:
    """Another run's arrays, checkpoints, metrics and logs; the nodes' settings."""
    victim = int(cfg["victim-run"])
    return [
        ("delete-victim-arrays", "DELETE FROM arrays WHERE run_id = %s", (victim,)),
        ("delete-victim-array", "DELETE FROM arrays WHERE id = %s", (int(cfg["victim-array"]),)),
        (
            "delete-other-checkpoint-arrays",
            "DELETE FROM checkpoint_arrays WHERE run_id <> flpg_my_run_id()",
            None,
        ),
        (
            "link-victim-array",
            "INSERT INTO message_arrays (message_id, record_name, position, array_name,"
            " array_id) VALUES (%s, 'stolen', 0, 'stolen', %s)",
            (first, int(cfg["victim-array"])),
        ),
        (
            "checkpoint-victim-array",
            "WITH own AS (INSERT INTO checkpoints (run_id, round, attempt, metrics)"
            " VALUES (flpg_my_run_id(), 0, 1, '{}') ON CONFLICT (run_id) DO NOTHING)"
            " INSERT INTO checkpoint_arrays (run_id, position, array_name, array_id)"
            " VALUES (flpg_my_run_id(), 0, 'stolen', %s)",
            (int(cfg["victim-array"]),),
        ),
        (
            "insert-victim-checkpoint",
            "INSERT INTO checkpoints (run_id, round, attempt, metrics) VALUES (%s, 99, 1, '{}')",
            (victim,),
        ),
        (
            "update-victim-metrics",
            "UPDATE round_metrics SET metrics = '{}' WHERE run_id = %s",
            (victim,),
        ),
        ("read-victim-logs", "SELECT line FROM run_logs WHERE run_id = %s", (victim,)),
        ("read-victim-metrics", "SELECT * FROM round_metrics WHERE run_id = %s", (victim,)),
        ("read-node-config", "SELECT node_config FROM nodes", None),
    ]


def _undo(conn: Any, run_id: int) -> None:
    """Take back what an attack that succeeded left in the attacker's own run."""
    conn.execute("DELETE FROM checkpoint_arrays WHERE array_name = 'stolen'")
    conn.execute(  # what the chosen id sent, if anything, goes no further
        "UPDATE messages SET state = 'cancelled', finished_at = now(), lease_until = NULL"
        " WHERE run_id = %s AND group_id = 'chosen-id' AND state IN ('queued', 'claimed')",
        (run_id,),
    )


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    nodes = grid.wait_for_nodes(2, timeout=60)[:2]
    content = RecordDict({"config": ConfigRecord({"nodes": ",".join(map(str, nodes))})})
    messages = [grid.create_message(content, "train", node, "1") for node in nodes]
    instructions = grid.push_messages(messages)
    attacks = common(cfg) + _own(cfg, grid.run_id, instructions, nodes)
    with connect() as conn:
        found = {"whoami": whoami(conn)}
        found.update(repeat(conn, attacks, cfg, partial(_undo, run_id=grid.run_id)))
    found.update(logins([r for r in str(cfg["node-roles"]).split(",") if r], grid.run_id))
    print("SERVER " + json.dumps(found, sort_keys=True), flush=True)
    for reply in grid.receive(instructions, timeout=60):
        node = reply.metadata.src_node_id
        if reply.has_error():
            print(f"CLIENT {node} " + json.dumps({"error": reply.error.reason}), flush=True)
        else:
            print(f"CLIENT {node} " + str(reply.content["report"]["outcomes"]), flush=True)
