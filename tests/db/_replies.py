"""Answering claimed instructions in tests through the node's production path.

`reply` and `error_reply` go through `flpg.node.replies.write_replies` (payloads,
then `store.messages.reply_batch`); `reply_new` through `reply_batch` itself. Each
answers one instruction and raises LeaseLost when nothing was written: the worker
no longer holds the claim, or the instruction already has its reply.
"""

from __future__ import annotations

from collections.abc import Mapping

from psycopg.rows import dict_row

from flpg.app.compressed import Base, ReplyEncoder
from flpg.app.message import Error, Message
from flpg.errors import LeaseLost
from flpg.node.replies import Answer, write_replies
from flpg.store import messages as store_messages
from flpg.store.db import Connection
from flpg.store.messages import MessageRow, NewReply
from flpg.store.payloads import DEFAULT_CHUNK_SIZE


def _row(conn: Connection, instruction_id: int) -> MessageRow:
    with conn.cursor(row_factory=dict_row) as cur:
        found = cur.execute(
            "SELECT id, run_id, src_node_id, dst_node_id, reply_to, group_id, message_type,"
            " ttl_seconds, extract(epoch FROM created_at)::float8 AS created_at, metrics,"
            " configs, error_code, error_reason, attempts FROM messages WHERE id = %s",
            (instruction_id,),
        ).fetchone()
    assert found is not None, f"no message {instruction_id}"
    return MessageRow(**found)


def _reply_id(conn: Connection, instruction_id: int) -> int:
    found = conn.execute(
        "SELECT id FROM messages WHERE reply_to = %s", (instruction_id,)
    ).fetchone()
    assert found is not None
    return int(found[0])


def _answer(
    conn: Connection,
    worker: str,
    answer: Answer,
    run_id: int,
    chunk_size: int,
    encoder: ReplyEncoder | None = None,
) -> int:
    (written,) = write_replies(conn, worker, run_id, [answer], chunk_size, encoder)
    if written.outcome == "lease-lost":
        raise LeaseLost(written.detail)
    return _reply_id(conn, answer.row.id)


def reply(
    conn: Connection,
    worker: str,
    instruction_id: int,
    run_id: int,
    message: Message,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    encoder: ReplyEncoder | None = None,
    bases: Mapping[tuple[str, str], Base] | None = None,
) -> int:
    """Write `message` as the reply to a claimed instruction (its arrays compressed
    by `encoder`, as flpg.reply-codec asks; top-k deltas against `bases`); the
    reply's id."""
    answer = Answer(_row(conn, instruction_id), reply=message, bases=bases)
    return _answer(conn, worker, answer, run_id, chunk_size, encoder)


def error_reply(conn: Connection, worker: str, instruction_id: int, error: Error) -> int:
    """Answer a claimed instruction with `error`; the reply's id."""
    row = _row(conn, instruction_id)
    return _answer(conn, worker, Answer(row, error=error), row.run_id, DEFAULT_CHUNK_SIZE)


def reply_new(conn: Connection, *, worker: str, new: NewReply) -> int:
    """Store one reply row (payloads already written) with `reply_batch`; its id."""
    done = store_messages.reply_batch(conn, worker=worker, replies=[new])
    if new.reply_to not in done:
        raise LeaseLost(f"message {new.reply_to} is no longer claimed by this worker")
    return done[new.reply_to]
