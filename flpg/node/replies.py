"""Writing a node's answers to many claimed instructions at once.

`write_replies` writes the reply payloads of a batch (small arrays all in one
statement), then completes every instruction and inserts every reply in one
statement that notifies each run once (`store.messages.reply_batch`). Payloads of
at most SHARED_COMMIT_BYTES share that transaction; bigger ones are committed
first, without NOTIFY. Each instruction is still completed atomically with its own
reply, and one whose claim this worker lost gets no reply while the others of the
batch do.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from flpg import bus
from flpg.app.compressed import Base, ReplyEncoder
from flpg.app.message import Error, ErrorCode, Message
from flpg.errors import FlpgError
from flpg.node.protocol import Outcome
from flpg.store import messages as store_messages
from flpg.store.db import TRANSIENT, Connection
from flpg.store.messages import ArrayLink, MessageRow, NewReply
from flpg.store.payloads import DEFAULT_CHUNK_SIZE
from flpg.store.recordjson import records_to_json

SHARED_COMMIT_BYTES = 256 << 10
"""A batch's reply payloads up to this size are committed together with the replies
(one WAL flush instead of two); a NOTIFY then waits on at most this much WAL."""


@dataclass(frozen=True)
class Answer:
    """What to write for one claimed instruction: the handler's reply, or an error."""

    row: MessageRow
    reply: Message | None = None
    error: Error | None = None
    bases: Mapping[tuple[str, str], Base] | None = None
    """What a top-k reply's arrays are deltas against (see flpg/node/bases.py)."""


@dataclass(frozen=True)
class Written:
    """What became of one answer."""

    message_id: int
    outcome: Outcome
    """`REPLIED`, `ERROR` (an error reply was written) or `LEASE_LOST` (nothing was)."""
    detail: str


def describe(exc: BaseException) -> str:
    """An error reply's reason: an flpg error's own message, else `Type: message`.
    Never raises, whatever the exception's `__str__` does (app code may define it);
    the store makes the text storable."""
    try:
        text = str(exc)
    except Exception:
        text = "<its message could not be read>"
    return text if isinstance(exc, FlpgError) else f"{type(exc).__name__}: {text}"


def app_error(reason: str) -> Error:
    """The error reply for a ClientApp that raised (code 1)."""
    return Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason)


def write_replies(
    conn: Connection,
    worker: str,
    run_id: int,
    answers: Sequence[Answer],
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    encoder: ReplyEncoder | None = None,
) -> list[Written]:
    """Write the answers (all of run `run_id`, claimed by `worker`); one `Written` each,
    in order. Reply arrays are round-transient (no WAL), compressed by `encoder` when
    the run asks for a codec (flpg.reply-codec).

    A reply that cannot be stored (say, an unsupported value) becomes an error reply
    for its instruction alone. Raises only on a database that went away (TRANSIENT):
    then nothing of the failed step was written and the claims lapse.
    """
    if not answers:
        return []
    try:
        return _write(conn, worker, run_id, answers, chunk_size, encoder)
    except TRANSIENT:
        raise
    except Exception as exc:
        if len(answers) == 1:
            return _write_unstorable(conn, worker, run_id, answers[0], exc, chunk_size)
    # Some answer cannot be stored: write them one at a time to answer only it with an error.
    out: list[Written] = []
    for answer in answers:
        try:
            out += _write(conn, worker, run_id, [answer], chunk_size, encoder)
        except TRANSIENT:
            raise
        except Exception as exc:
            out += _write_unstorable(conn, worker, run_id, answer, exc, chunk_size)
    return out


def _write_unstorable(
    conn: Connection,
    worker: str,
    run_id: int,
    answer: Answer,
    exc: Exception,
    chunk_size: int,
) -> list[Written]:
    """Answer an instruction whose reply failed to store with an error naming why."""
    error = app_error(describe(exc))
    return _write(conn, worker, run_id, [Answer(answer.row, error=error)], chunk_size)


def _write(
    conn: Connection,
    worker: str,
    run_id: int,
    answers: Sequence[Answer],
    chunk_size: int,
    encoder: ReplyEncoder | None = None,
) -> list[Written]:
    with_content = [
        a for a in answers if a.error is None and a.reply is not None and not a.reply.has_error()
    ]
    contents = [a.reply.content for a in with_content if a.reply is not None]
    payload = sum(
        arr.nbytes for c in contents for r in c.array_records.values() for arr in r.values()
    )
    # Small payloads share the replies' transaction (one commit, one WAL flush);
    # big ones commit first, so the replies' NOTIFY never waits on their flush.
    with conn.transaction() if payload <= SHARED_COMMIT_BYTES else contextlib.nullcontext():
        links: dict[int, list[ArrayLink]] = {}
        if any(c.array_records for c in contents):
            written = bus.write_arrays(
                conn,
                run_id,
                contents,
                chunk_size,
                durable=False,
                encoder=encoder,
                bases=[a.bases for a in with_content],
            )
            links = {a.row.id: w for a, w in zip(with_content, written, strict=True)}
        new = _new_replies(answers, links)
        done = store_messages.reply_batch(conn, worker=worker, replies=new)
    out: list[Written] = []
    for a, n in zip(answers, new, strict=True):
        if a.row.id not in done:
            out.append(
                Written(
                    a.row.id,
                    Outcome.LEASE_LOST,
                    f"message {a.row.id} is no longer claimed by this worker "
                    "(lease ran out, expired or cancelled); reply dropped",
                )
            )
        elif n.error_code is not None:
            out.append(Written(a.row.id, Outcome.ERROR, n.error_reason or ""))
        else:
            out.append(Written(a.row.id, Outcome.REPLIED, ""))
    return out


def _new_replies(answers: Sequence[Answer], links: dict[int, list[ArrayLink]]) -> list[NewReply]:
    """The reply rows of `answers`, with their written arrays' `links`."""
    new: list[NewReply] = []
    for a in answers:
        if a.error is not None or a.reply is None or a.reply.has_error():
            err = a.error if a.error is not None else _reply_error(a.reply)
            new.append(NewReply(a.row.id, {}, {}, [], err.code, err.reason))
        else:
            content = a.reply.content
            new.append(
                NewReply(
                    a.row.id,
                    records_to_json(content.metric_records),
                    records_to_json(content.config_records),
                    links.get(a.row.id, []),
                )
            )
    return new


def _reply_error(reply: Message | None) -> Error:
    if reply is None:
        return app_error("the ClientApp returned no reply")
    return reply.error
