"""Moving `Message` objects through the database.

Sending writes payloads first (their own transaction, no NOTIFY), then inserts
the message rows and notifies in one small transaction. An ndarray carried by
several messages of one send is written once and referenced by all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from flpg.app import arrays
from flpg.app.compressed import Base, ReplyEncoder
from flpg.app.message import Error, Message, Metadata, error_code_from_stored
from flpg.app.records import (
    Array,
    ArrayRecord,
    ArraySource,
    ConfigRecord,
    MetricRecord,
    RecordDict,
)
from flpg.store import messages as store_messages
from flpg.store import payloads as store_payloads
from flpg.store.db import Connection
from flpg.store.messages import ArrayLink, MessageRow, NewInstruction
from flpg.store.payloads import DEFAULT_CHUNK_SIZE, ArrayRef
from flpg.store.recordjson import (
    config_records_from_json,
    metric_records_from_json,
    records_to_json,
)


def stored_id(array: Array, run_id: int) -> int | None:
    """The id under which `array`'s current bytes are already stored for `run_id`.

    None for an array that never came from the database, came from another run,
    or was changed in place after it was read (its bytes no longer match the digest).
    """
    source = array.source
    if source is None or source.run_id != run_id:
        return None
    if array.in_memory:
        if source.codec is not None:
            return None  # an encoded payload cannot be compared with the array's bytes
        data = arrays.encode(array.numpy(), "").data
        if arrays.digest(data, source.digest_alg) != source.digest:
            return None
    return source.array_id


def _encode(
    nd: np.ndarray[Any, Any],
    name: str,
    encoder: ReplyEncoder | None,
    chunk_size: int,
    base: Base | None,
) -> arrays.EncodedArray:
    """`nd` as stored: compressed by `encoder` where it applies, else raw."""
    compressed = None if encoder is None else encoder.encode(nd, chunk_size, name, base)
    return compressed if compressed is not None else arrays.encode(nd, name)


def _write_encoded(
    conn: Connection,
    run_id: int,
    encoded: Sequence[arrays.EncodedArray],
    chunk_size: int,
    durable: bool,
) -> list[int]:
    """Store `encoded`; ids in order. Arrays of at most one chunk go in together in one
    statement, bigger ones chunk by chunk (`payloads.write`)."""
    small = [i for i, enc in enumerate(encoded) if enc.nbytes <= (enc.chunk_size or chunk_size)]
    big = [i for i, enc in enumerate(encoded) if enc.nbytes > (enc.chunk_size or chunk_size)]
    ids = [0] * len(encoded)
    if small:
        stored = store_messages.write_small_arrays(
            conn, run_id, [encoded[i] for i in small], chunk_size, durable=durable
        )
        for i, array_id in zip(small, stored, strict=True):
            ids[i] = array_id
    if big:
        stored = store_payloads.write(
            conn, run_id, [encoded[i] for i in big], chunk_size, durable=durable
        )
        for i, array_id in zip(big, stored, strict=True):
            ids[i] = array_id
    return ids


def write_arrays(
    conn: Connection,
    run_id: int,
    contents: Sequence[RecordDict],
    chunk_size: int,
    *,
    durable: bool,
    encoder: ReplyEncoder | None = None,
    bases: Sequence[Mapping[tuple[str, str], Base] | None] = (),
) -> list[list[ArrayLink]]:
    """Write every distinct ndarray of `contents` once; return each content's links.

    An array already stored for this run (`Array.stored`, not yet read into
    memory) is linked by its id and not written again. `durable`: a checkpoint's
    arrays (WAL-logged) or round-transient ones (replies, broadcasts: no WAL, lost on a
    crash; a checkpoint that keeps one makes it durable). `encoder`: float arrays are
    stored compressed by it (compressed.py; others, and values it cannot carry, raw);
    `bases[i]` are the arrays a top-k encoder takes content i's deltas against, by
    (record name, array name).
    """
    unique: dict[tuple[str, int], int] = {}  # ("mem", id(ndarray)) | ("db", array id) -> index
    encoded: list[arrays.EncodedArray] = []
    stored_ids: dict[int, int] = {}  # index -> existing array id
    keep_alive: list[np.ndarray[Any, Any]] = []
    plan: list[list[tuple[str, int, str, int]]] = []
    for index, content in enumerate(contents):
        items: list[tuple[str, int, str, int]] = []
        base_of = bases[index] if index < len(bases) else None
        for record_name, record in content.array_records.items():
            for position, (array_name, array) in enumerate(record.items()):
                existing = stored_id(array, run_id)
                if existing is not None:
                    key = ("db", existing)
                    if key not in unique:
                        unique[key] = len(unique)
                        stored_ids[unique[key]] = existing
                else:
                    nd = array.numpy()
                    key = ("mem", id(nd))
                    if key not in unique:
                        unique[key] = len(unique)
                        base = None if base_of is None else base_of.get((record_name, array_name))
                        label = f"{record_name}[{array_name!r}]"
                        encoded.append(_encode(nd, label, encoder, chunk_size, base))
                        keep_alive.append(nd)
                items.append((record_name, position, array_name, unique[key]))
        plan.append(items)
    written = iter(_write_encoded(conn, run_id, encoded, chunk_size, durable))
    ids = [stored_ids[i] if i in stored_ids else next(written) for i in range(len(unique))]
    return [[ArrayLink(r, p, n, ids[i]) for r, p, n, i in items] for items in plan]


def _json_parts(content: RecordDict) -> tuple[dict[str, Any], dict[str, Any]]:
    return records_to_json(content.metric_records), records_to_json(content.config_records)


def send(
    conn: Connection,
    run_id: int,
    messages: Sequence[Message],
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    *,
    send_key: str | None = None,
) -> list[int]:
    """Store instructions for their nodes and wake them; returns message ids.

    Sets each message's `metadata.message_id`, `run_id` and `created_at`.
    Raises SelectionError if a destination is outside the run's selection.
    With `send_key` (chosen once per send, passed again on every retry of it; the
    i-th message is stored with the key `f"{send_key}:{i}"`) the send is idempotent:
    a retry after a lost connection finds what an earlier try committed and returns
    the same ids, inserting nothing twice (nor writing its arrays again).
    """
    for m in messages:
        if m.metadata.dst_node_id is None or m.metadata.reply_to_message_id is not None:
            raise ValueError("only instructions (with a dst_node_id) can be sent by a ServerApp")
        if m.has_error():
            raise ValueError("an instruction must carry content, not an error")
    keys: list[str | None] = [None] * len(messages)
    if send_key is not None:
        keys = [f"{send_key}:{i}" for i in range(len(messages))]
        found = store_messages.sent(conn, run_id, [k for k in keys if k is not None])
        if len(found) == len(messages):
            return _stamp(messages, run_id, [found[k] for k in keys if k is not None])
    links = write_arrays(conn, run_id, [m.content for m in messages], chunk_size, durable=False)
    new: list[NewInstruction] = []
    for m, arr_links, key in zip(messages, links, keys, strict=True):
        metrics, configs = _json_parts(m.content)
        md = m.metadata
        assert md.dst_node_id is not None
        new.append(
            NewInstruction(
                dst_node_id=md.dst_node_id,
                group_id=md.group_id,
                message_type=md.message_type,
                ttl=md.ttl,
                metrics=metrics,
                configs=configs,
                arrays=arr_links,
                send_key=key,
            )
        )
    return _stamp(messages, run_id, store_messages.insert_instructions(conn, run_id, new))


def _stamp(
    messages: Sequence[Message], run_id: int, created: Sequence[tuple[int, float]]
) -> list[int]:
    """Record each stored `(id, created_at)` in its message's metadata; the ids."""
    for m, (message_id, created_at) in zip(messages, created, strict=True):
        m.metadata.run_id = run_id
        m.metadata.message_id = str(message_id)  # Flower types message ids as str
        m.metadata.created_at = created_at
    return [message_id for message_id, _ in created]


SourceFactory = Callable[[ArrayRef, store_payloads.Chunks | None], ArraySource]
"""Makes the source of one stored array, given its chunk rows if already read."""

EAGER_BYTES = 4 << 20
"""`load` with a source reads arrays of one chunk together with the rows, up to this
many bytes per call: a small model costs no query per array, and memory stays
bounded however many replies one call returns (bigger arrays stay in the database)."""


def _eager(conn: Connection, refs: Sequence[ArrayRef]) -> dict[int, store_payloads.Chunks]:
    """The chunk rows of the one-chunk arrays among `refs`, in order, up to EAGER_BYTES."""
    budget = EAGER_BYTES
    small: dict[int, ArrayRef] = {}
    for ref in refs:
        if ref.n_chunks == 1 and not ref.collected and ref.array_id not in small:
            if ref.nbytes > budget:
                break
            small[ref.array_id] = ref
            budget -= ref.nbytes
    return store_payloads.read_raw(conn, list(small.values()))


def _array_records(
    conn: Connection, refs: Sequence[ArrayRef], source: SourceFactory | None
) -> dict[int, dict[str, ArrayRecord]]:
    """`{message id: {record name: ArrayRecord}}` of `refs` (see `load`)."""
    data = {} if source is not None else store_payloads.read(conn, refs)
    read = _eager(conn, refs) if source is not None else {}
    handed_out: set[int] = set()
    by_message: dict[int, dict[str, ArrayRecord]] = {}
    for ref in refs:
        assert ref.message_id is not None
        array: Array | np.ndarray[Any, Any]
        if source is not None:
            array = Array.stored(ref.dtype, ref.shape, source(ref, read.get(ref.array_id)))
        else:
            array = data[ref.array_id]
            if ref.array_id in handed_out:
                array = array.copy()
            handed_out.add(ref.array_id)
        records = by_message.setdefault(ref.message_id, {})
        records.setdefault(ref.record_name, ArrayRecord())[ref.array_name] = array
    return by_message


def _message(r: MessageRow, array_records: dict[str, ArrayRecord]) -> Message:
    """The Message of a stored row, with its array records."""
    metadata = Metadata(
        run_id=r.run_id,
        message_id=str(r.id),
        src_node_id=r.src_node_id,
        dst_node_id=r.dst_node_id,
        reply_to_message_id=None if r.reply_to is None else str(r.reply_to),
        group_id=r.group_id,
        ttl=r.ttl_seconds,
        message_type=r.message_type,
        created_at=r.created_at,
    )
    if r.error_code is not None:
        code = error_code_from_stored(r.error_code)  # the column keeps flpg's first numbering
        return Message.from_metadata(metadata, error=Error(code, r.error_reason or None))
    content = RecordDict()
    for name, arr_record in array_records.items():
        content[name] = arr_record
    metric_records: dict[str, MetricRecord] = metric_records_from_json(r.metrics)
    config_records: dict[str, ConfigRecord] = config_records_from_json(r.configs)
    for name, metric_record in metric_records.items():
        content[name] = metric_record
    for name, config_record in config_records.items():
        content[name] = config_record
    return Message.from_metadata(metadata, content=content)


def load(
    conn: Connection, rows: Sequence[MessageRow], source: SourceFactory | None = None
) -> list[Message]:
    """Turn stored rows into Messages with their arrays.

    Without `source` the arrays are read now. An array shared by several messages
    is read once; every message but the first gets its own copy, so a handler that
    mutates its input in place never changes another message's content. With
    `source`, arrays stay in the database as `Array.stored(..., source(ref, rows))`,
    except that small ones (EAGER_BYTES) come with their chunk rows, still unchecked.
    """
    refs = store_payloads.refs(conn, [r.id for r in rows if r.error_code is None])
    by_message = _array_records(conn, refs, source)
    return [_message(r, by_message.get(r.id, {})) for r in rows]
