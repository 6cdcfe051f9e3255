"""ClientApp: tries its attacks (again and again until its `stop-file` exists, if
set), then replies with their outcomes (config record
`report`, key `outcomes`, a JSON object {attack: outcome})."""

from __future__ import annotations

import json
from typing import Any

from flpg import ClientApp, ConfigRecord, Context, Message, RecordDict

from .attacks import Attack, common, connect, logins, repeat, whoami

app = ClientApp()

REPLY = (
    "INSERT INTO messages (run_id, src_node_id, reply_to, group_id, message_type, ttl_seconds,"
    " deadline, metrics) VALUES (%s, %s, %s, '1', 'train', 60, now() + interval '1 minute',"
    " '{\"forged\": 1}')"
)
CLAIM = (
    "UPDATE messages SET state = 'claimed', claimed_by = 'malicious', claimed_at = now(),"
    " lease_until = now() + interval '1 hour', attempts = attempts + 1"
)


def _own(cfg: Any, msg: Message) -> list[Attack]:
    """What only a ClientApp may try: answer for another run or another node, take
    another node's instruction, write what only a ServerApp or user may."""
    me = msg.metadata.dst_node_id
    mine = int(msg.metadata.message_id or 0)
    run_id = msg.metadata.run_id
    assert me is not None and mine is not None
    nodes = [int(n) for n in str(msg.content["config"]["nodes"]).split(",")]
    other = next(n for n in nodes if n != me)
    return _replies(cfg, run_id, me, other, mine) + _others(cfg, run_id, me, other, mine)


def _replies(cfg: Any, run_id: int, me: int, other: int, mine: int) -> list[Attack]:
    """Answer another run's instruction or another node's, or as another node."""
    victim = int(cfg["victim-run"])
    instruction = int(cfg["victim-instruction"])
    near = [mine - 1, mine + 1]  # the other node's instruction is sent with mine
    return [
        ("reply-in-victim-run", REPLY, (victim, me, instruction)),
        ("reply-to-victim-instruction", REPLY, (run_id, me, instruction)),
        ("reply-as-victim-node", REPLY, (victim, other, instruction)),
        ("reply-as-other-node-to-mine", REPLY, (run_id, other, mine)),
        ("reply-to-previous-id", REPLY, (run_id, me, near[0])),
        ("reply-to-next-id", REPLY, (run_id, me, near[1])),
        ("reply-as-other-node-to-previous-id", REPLY, (run_id, other, near[0])),
        ("reply-as-other-node-to-next-id", REPLY, (run_id, other, near[1])),
    ]


def _others(cfg: Any, run_id: int, me: int, other: int, mine: int) -> list[Attack]:
    """Take or redirect another node's instruction; write what a ClientApp may not."""
    victim = int(cfg["victim-run"])
    near = [mine - 1, mine + 1]
    return [
        (
            "claim-other-node-instructions",
            CLAIM + " WHERE run_id = %s AND reply_to IS NULL AND dst_node_id <> %s",
            (run_id, me),
        ),
        ("claim-near-ids", CLAIM + " WHERE id = ANY(%s) AND id <> %s", (near, mine)),
        (
            "read-other-node-messages",
            "SELECT * FROM messages WHERE run_id = %s AND dst_node_id <> %s",
            (run_id, me),
        ),
        (
            "reply-with-chosen-id",
            "INSERT INTO messages (id, run_id, src_node_id, reply_to, group_id, message_type,"
            " ttl_seconds, deadline) VALUES (1000000000, %s, %s, %s, '1', 'train', 60,"
            " now() + interval '1 minute')",
            (run_id, me, mine),
        ),
        (
            "redirect-own-instruction",
            "UPDATE messages SET dst_node_id = %s WHERE id = %s",
            (other, mine),
        ),
        (
            "move-own-instruction-to-victim",
            "UPDATE messages SET run_id = %s WHERE id = %s",
            (victim, mine),
        ),
        (
            "update-victim-run",
            "UPDATE runs SET status = 'failed', reason = 'pwned' WHERE id = %s",
            (victim,),
        ),
        ("update-own-run", "UPDATE runs SET status = 'finished' WHERE id = %s", (run_id,)),
        ("read-victim-logs", "SELECT line FROM run_logs WHERE run_id = %s", (victim,)),
        ("read-nodes", "SELECT * FROM nodes", None),
        ("read-checkpoints", "SELECT * FROM checkpoints", None),
        (
            "touch-other-run-nodes",
            "UPDATE run_nodes SET last_claimed_at = now() WHERE run_id <> %s",
            (run_id,),
        ),
        ("notify-node", f"SELECT pg_notify('flpg_node_{other}', 'not a run id')", None),
    ]


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg = context.run_config
    with connect() as conn:
        found = {"whoami": whoami(conn)}
        found.update(repeat(conn, common(cfg) + _own(cfg, msg), cfg))
    found.update(logins([r for r in str(cfg["node-roles"]).split(",") if r], msg.metadata.run_id))
    report = ConfigRecord({"outcomes": json.dumps(found, sort_keys=True)})
    return Message(RecordDict({"report": report}), reply_to=msg)
