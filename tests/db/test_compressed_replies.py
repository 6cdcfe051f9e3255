"""Compressed replies (flpg.reply-codec) through the real write and streamed-read paths:
a ClientApp's float arrays are stored as fp16, bf16 or int8 chunks, or as top-k sparse
deltas against the model it received; the ServerApp decodes them while streaming into
its float64 sum, and a damaged compressed reply is rejected by name while the others
aggregate."""

from __future__ import annotations

import numpy as np
import pytest

from flpg import bus
from flpg.app.chunkdecoder import ChunkDecoder
from flpg.app.codecs import ErrorFeedback, encode_chunks, parse_codec
from flpg.app.compressed import ReplyEncoder
from flpg.app.message import Message
from flpg.app.records import ArrayRecord, MetricRecord, RecordDict
from flpg.errors import PayloadCorrupt
from flpg.node.bases import ReplyBases
from flpg.store import messages as store_messages
from flpg.store import payloads as store_payloads
from flpg.store.db import Connection
from tests.db import _replies as reply_path
from tests.db._chunks import ALL_CHUNKS, on_chunks_of

from .conftest import Federation, scalar
from .test_streaming import aggregate, broadcast, open_grid

CHUNK = 4096
TOLERANCE = {"fp16": 2e-3, "bf16": 1e-2, "int8": 1e-2}


def _reply_all(
    conn: Connection,
    fed: Federation,
    updates: dict[int, np.ndarray],
    codec: str | dict[int, str | None] | None,
) -> dict[int, int]:
    """Every node answers with its update, encoded with `codec` (or its own, by node)."""
    rows = store_messages.claim(conn, worker="t", node_ids=fed.selected, lease=60, limit=100)
    codecs = codec if isinstance(codec, dict) else dict.fromkeys(fed.selected, codec)
    loaded = list(zip(rows, bus.load(conn, rows), strict=True))
    bases = ReplyBases()
    bases.keep(conn, loaded)  # as a ClientApp process does for top-k
    out: dict[int, int] = {}
    for row, msg in loaded:
        node = msg.metadata.dst_node_id
        assert node is not None and msg.metadata.message_id is not None
        content = RecordDict(
            {
                "arrays": ArrayRecord({"w": updates[node], "steps": np.arange(3)}),
                "metrics": MetricRecord({"num-examples": 10 * node}),
            }
        )
        out[node] = reply_path.reply(
            conn,
            "t",
            msg.metadata.message_id,
            fed.run_id,
            Message(content, reply_to=msg),
            CHUNK,
            None if codecs[node] is None else ReplyEncoder(parse_codec(codecs[node])),
            bases.take(row.id),
        )
    return out


def _stored_bytes(conn: Connection, reply_ids: list[int], name: str) -> int:
    return int(
        scalar(
            conn,
            f"SELECT sum(octet_length(c.data)) FROM {ALL_CHUNKS} c JOIN message_arrays ma"
            " ON ma.array_id = c.array_id WHERE ma.message_id = ANY(%s) AND ma.array_name = %s",
            [reply_ids, name],
        )
    )


@pytest.mark.parametrize("codec", ["fp16", "bf16", "int8"])
def test_compressed_replies_aggregate_close_to_the_raw_mean(
    conn: Connection, fed: Federation, codec: str
) -> None:
    rng = np.random.default_rng(3)
    base = rng.standard_normal(5000).astype(np.float32)  # several chunks, a short last one
    updates = {n: base + rng.standard_normal(5000).astype(np.float32) for n in fed.selected}
    grid = open_grid(conn, fed, chunk_size=CHUNK)
    try:
        ids = broadcast(grid, fed.selected, ArrayRecord({"w": base, "steps": np.arange(3)}))
        reply_ids = _reply_all(conn, fed, updates, codec)
        mean, tally = aggregate(grid, ids, ArrayRecord({"w": base, "steps": np.arange(3)}))
    finally:
        grid.close()
    assert (tally.received, tally.failures) == (3, 0), tally.rejected
    weights = {n: 10 * n for n in fed.selected}
    exact = sum(updates[n].astype(np.float64) * w for n, w in weights.items()) / sum(
        weights.values()
    )
    got = mean["w"].numpy()
    assert got.dtype == np.float32 and got.shape == (5000,)
    np.testing.assert_allclose(got, exact, atol=TOLERANCE[codec] * np.abs(exact).max())
    assert not np.allclose(got, exact, atol=1e-7, rtol=0)  # it really went through the codec
    np.testing.assert_array_equal(mean["steps"].numpy(), np.arange(3))  # ints stay raw
    ratio = _stored_bytes(conn, list(reply_ids.values()), "w") / (3 * base.nbytes)
    assert ratio == pytest.approx(0.25 if codec == "int8" else 0.5, abs=0.01)
    codecs = conn.execute(
        "SELECT DISTINCT ma.array_name, a.codec FROM message_arrays ma JOIN arrays a"
        " ON a.id = ma.array_id WHERE ma.message_id = ANY(%s) ORDER BY 1",
        [list(reply_ids.values())],
    ).fetchall()
    assert codecs == [("steps", None), ("w", codec)]


DAMAGE = {
    # int8: the scale (a chunk's first 4 bytes) becomes a float32 NaN, 0x7fc00000.
    "int8-nan-scale": (
        "int8",
        "overlay(data PLACING '\\x0000c07f'::bytea FROM 1)",
        1,
        "scale",
    ),
    # top-k: uint32 k, then k uint32 indices; the first index becomes 2^32 - 1.
    "topk-index-out-of-range": (
        "topk:1.0",
        "overlay(data PLACING '\\xffffffff'::bytea FROM 5)",
        0,
        "ind",
    ),
}


@pytest.mark.parametrize(("codec", "damage", "seq", "named"), DAMAGE.values(), ids=list(DAMAGE))
def test_a_damaged_compressed_reply_is_rejected_by_name_and_the_others_aggregate(
    conn: Connection, fed: Federation, codec: str, damage: str, seq: int, named: str
) -> None:
    base = np.linspace(-1, 1, 3000, dtype=np.float32)
    updates = {n: base + n for n in fed.selected}
    grid = open_grid(conn, fed, chunk_size=CHUNK)
    try:
        ids = broadcast(grid, fed.selected, ArrayRecord({"w": base, "steps": np.arange(3)}))
        reply_ids = _reply_all(conn, fed, updates, codec)
        victim = fed.selected[1]
        array_id = scalar(
            conn,
            "SELECT array_id FROM message_arrays WHERE message_id = %s AND array_name = 'w'",
            [reply_ids[victim]],
        )
        changed = on_chunks_of(
            conn,
            array_id,
            f"UPDATE array_chunks SET data = {damage} WHERE array_id = %s AND seq = %s",
            [array_id, seq],
        )
        assert changed == 1
        mean, tally = aggregate(grid, ids, ArrayRecord({"w": base, "steps": np.arange(3)}))
    finally:
        grid.close()
    assert (tally.received, tally.failures) == (3, 1)
    ((rejected_id, why),) = tally.rejected
    assert int(rejected_id) == reply_ids[victim]
    assert "'w'" in why and named in why
    others = [n for n in fed.selected if n != victim]
    exact = sum((base + n) * 10.0 * n for n in others) / sum(10.0 * n for n in others)
    np.testing.assert_allclose(mean["w"].numpy(), exact, atol=0.02)


def _topk_reference(base: np.ndarray, update: np.ndarray, spec: str, node: int) -> np.ndarray:
    """What a top-k reply decodes to, from the codec itself (no database)."""
    codec = parse_codec(spec)
    chunks = list(encode_chunks(codec, update, CHUNK, "w", base=base, feedback=ErrorFeedback()))
    decoder = ChunkDecoder(codec, "<f4", update.size, CHUNK, "w")
    out = []
    for seq, chunk in enumerate(chunks):
        start, stop = decoder.chunk_bounds(seq)
        out.append(decoder.decode(seq, chunk, base[start:stop].tobytes()))
    return np.concatenate(out)


@pytest.mark.parametrize("spec", ["topk:1.0", "topk:0.05"])
def test_topk_replies_are_deltas_against_the_broadcast(
    conn: Connection, fed: Federation, spec: str
) -> None:
    rng = np.random.default_rng(5)
    base = rng.standard_normal(5000).astype(np.float32)
    updates = {n: base + 0.1 * rng.standard_normal(5000).astype(np.float32) for n in fed.selected}
    grid = open_grid(conn, fed, chunk_size=CHUNK)
    try:
        ids = broadcast(grid, fed.selected, ArrayRecord({"w": base, "steps": np.arange(3)}))
        reply_ids = _reply_all(conn, fed, updates, spec)
        mean, tally = aggregate(grid, ids, ArrayRecord({"w": base, "steps": np.arange(3)}))
    finally:
        grid.close()
    assert (tally.received, tally.failures) == (3, 0), tally.rejected
    weights = {n: 10.0 * n for n in fed.selected}
    decoded = {n: _topk_reference(base, updates[n], spec, n) for n in fed.selected}
    expected = sum(decoded[n].astype(np.float64) * w for n, w in weights.items()) / sum(
        weights.values()
    )
    np.testing.assert_allclose(mean["w"].numpy(), expected, rtol=1e-6, atol=1e-6)
    rows = conn.execute(
        "SELECT a.codec, a.base_array_id = ca.array_id FROM message_arrays ma"
        " JOIN arrays a ON a.id = ma.array_id JOIN checkpoint_arrays ca"
        " ON ca.run_id = a.run_id AND ca.array_name = 'w'"
        " WHERE ma.message_id = ANY(%s) AND ma.array_name = 'w'",
        [list(reply_ids.values())],
    ).fetchall()
    assert rows == [(spec, True)] * 3  # each reply names the broadcast as its base
    if spec == "topk:0.05":
        ratio = _stored_bytes(conn, list(reply_ids.values()), "w") / (3 * base.nbytes)
        assert ratio == pytest.approx(0.1, abs=0.01)  # 5 % of values, index + value each


def test_a_topk_reply_whose_base_is_gone_is_rejected_by_name(
    conn: Connection, fed: Federation
) -> None:
    base = np.linspace(-1, 1, 3000, dtype=np.float32)
    updates = {n: base + n for n in fed.selected}
    grid = open_grid(conn, fed, chunk_size=CHUNK)
    try:
        ids = broadcast(grid, fed.selected, ArrayRecord({"w": base, "steps": np.arange(3)}))
        reply_ids = _reply_all(conn, fed, updates, "topk:0.5")
        victim = fed.selected[0]
        conn.execute(
            "UPDATE arrays SET base_array_id = NULL WHERE id IN (SELECT array_id FROM"
            " message_arrays WHERE message_id = %s AND array_name = 'w')",
            [reply_ids[victim]],
        )
        _, tally = aggregate(grid, ids, ArrayRecord({"w": base, "steps": np.arange(3)}))
    finally:
        grid.close()
    assert (tally.received, tally.failures) == (3, 1)
    ((rejected_id, why),) = tally.rejected
    assert int(rejected_id) == reply_ids[victim]
    assert "['w']" in why and "top-k delta whose base was deleted" in why


@pytest.mark.parametrize("read", ["streamed", "whole"])
def test_topk_replies_whose_base_was_changed_in_place_are_rejected_by_name(
    conn: Connection, fed: Federation, read: str
) -> None:
    """A delta is decoded against byte ranges of its base, which carry no digest of
    their own: the base's bytes are checked against the base's digest as they are read,
    so a base changed in the table after the nodes read it fails every delta against
    it, by name, whether the reply is streamed into the sum (the plain reply still
    aggregates) or loaded whole."""
    base = np.linspace(-1, 1, 3000, dtype=np.float32)
    updates = {n: base + n for n in fed.selected}
    grid = open_grid(conn, fed, chunk_size=CHUNK)
    try:
        ids = broadcast(grid, fed.selected, ArrayRecord({"w": base, "steps": np.arange(3)}))
        plain = fed.selected[2]  # answers uncompressed: its reply needs no base
        codecs = {n: None if n == plain else "topk:0.5" for n in fed.selected}
        reply_ids = _reply_all(conn, fed, updates, codecs)
        base_id = scalar(
            conn,
            "SELECT array_id FROM message_arrays WHERE message_id = %s AND array_name = 'w'",
            [ids[0]],
        )
        changed = on_chunks_of(
            conn,
            base_id,
            "UPDATE array_chunks SET data = overlay(data PLACING '\\x0000803f'::bytea FROM 9)"
            " WHERE array_id = %s AND seq = 1",
            [base_id],
        )
        assert changed == 1  # one base value, in its second chunk, is now 1.0
        if read == "streamed":
            mean, tally = aggregate(grid, ids, ArrayRecord({"w": base, "steps": np.arange(3)}))
            assert (tally.received, tally.failures) == (3, 2)
            np.testing.assert_allclose(mean["w"].numpy(), updates[plain], rtol=1e-6)
            whys = [why for _, why in tally.rejected]
            rejected = sorted(int(message_id) for message_id, _ in tally.rejected)
            assert rejected == sorted(i for n, i in reply_ids.items() if n != plain)
        else:  # pull_messages reads every array of the replies it returns, now
            with pytest.raises(PayloadCorrupt) as caught:
                grid.pull_messages([str(i) for i in ids])
            whys = [str(caught.value)]
    finally:
        grid.close()
    for why in whys:
        assert f"whose base (array {base_id}) fails its digest check" in why, why
        assert "'w'" in why


def test_a_base_outlives_the_topk_replies_against_it(conn: Connection, fed: Federation) -> None:
    """A broadcast no checkpoint holds is collected only after the top-k replies that
    are deltas against it: until then the ServerApp may still need to decode them."""
    base = np.linspace(-1, 1, 3000, dtype=np.float32)
    grid = open_grid(conn, fed, chunk_size=CHUNK)
    try:
        ids = grid.push_messages(
            grid.create_message(RecordDict({"arrays": ArrayRecord({"w": base})}), "train", n, "1")
            for n in fed.selected
        )
        reply_ids = _reply_all(conn, fed, {n: base + n for n in fed.selected}, "topk:0.5")
    finally:
        grid.close()
    base_id = scalar(conn, "SELECT array_id FROM message_arrays WHERE message_id = %s", [ids[0]])
    conn.execute(
        "UPDATE messages SET state = 'done', finished_at = now() - interval '1 hour'"
        " WHERE run_id = %s",
        [fed.run_id],
    )
    conn.execute("UPDATE arrays SET created_at = now() - interval '1 hour'")
    replies = list(reply_ids.values())
    reply_arrays = "SELECT array_id FROM message_arrays WHERE message_id = ANY(%s)"

    def collected(where: str, params: list[object]) -> list[bool]:
        found = conn.execute(
            f"SELECT collected_at IS NOT NULL FROM arrays WHERE id IN ({where})", params
        ).fetchall()
        return [bool(r[0]) for r in found]

    store_payloads.collect(conn, grace=60)
    assert all(collected(reply_arrays, [replies]))
    assert collected("SELECT %s::bigint", [base_id]) == [False]  # kept for the replies
    store_payloads.collect(conn, grace=60)
    assert collected("SELECT %s::bigint", [base_id]) == [True]
