"""The link's payload collection: chunks of arrays nothing live needs are deleted,
the rest (live messages, checkpoints, fresh payloads) is kept."""

from __future__ import annotations

import numpy as np
import pytest

from flpg import bus
from flpg.app import arrays
from flpg.app.records import ArrayRecord, RecordDict
from flpg.errors import PayloadCorrupt
from flpg.serverapp.grid import Grid
from flpg.store import messages as store_messages
from flpg.store import payloads as store_payloads
from flpg.store import runs as store_runs
from flpg.store.db import Connection
from tests.db._chunks import ALL_CHUNKS

from .conftest import Federation, instruction, scalar


def content(value: float) -> RecordDict:
    return RecordDict({"arrays": ArrayRecord({"w": np.full(1000, value)})})


def age_everything(conn: Connection) -> None:
    """As if every payload and finished message were an hour old."""
    conn.execute("UPDATE arrays SET created_at = now() - interval '1 hour'")
    conn.execute(
        "UPDATE messages SET finished_at = now() - interval '1 hour' WHERE finished_at IS NOT NULL"
    )


def test_collects_only_what_nothing_live_needs(conn: Connection, fed: Federation) -> None:
    a, b, c = fed.selected
    broadcast = content(1.0)
    done = bus.send(conn, fed.run_id, [instruction(n, broadcast) for n in (a, b)])
    (queued,) = bus.send(conn, fed.run_id, [instruction(c, content(2.0))])
    conn.execute(
        "UPDATE messages SET state = 'cancelled', finished_at = now() WHERE id = ANY(%s)",
        [done],
    )
    age_everything(conn)
    assert scalar(conn, "SELECT count(*) FROM arrays") == 2

    collected, nbytes = store_payloads.collect(conn, grace=60)
    assert (collected, nbytes) == (1, 8000)  # the broadcast, stored once
    assert scalar(conn, "SELECT count(*) FROM arrays WHERE collected_at IS NOT NULL") == 1
    assert scalar(conn, f"SELECT count(*) FROM {ALL_CHUNKS} c") == 1  # the queued one's
    rows = store_messages.claim(conn, worker="w", node_ids=[c], lease=30, limit=1)
    (message,) = bus.load(conn, rows)
    np.testing.assert_array_equal(message.content["arrays"]["w"].numpy(), np.full(1000, 2.0))
    # The collected payload's message can no longer be read, and says why.
    with pytest.raises(PayloadCorrupt, match="was collected"):
        store_payloads.read(conn, store_payloads.refs(conn, [done[0]]))
    assert store_payloads.collect(conn, grace=60) == (0, 0)
    assert str(queued) == message.metadata.message_id


def test_keeps_recent_payloads_and_checkpoints(conn: Connection, fed: Federation) -> None:
    node = fed.selected[0]
    (recent,) = bus.send(conn, fed.run_id, [instruction(node, content(1.0))])
    conn.execute(
        "UPDATE messages SET state = 'cancelled', finished_at = now() WHERE id = %s", [recent]
    )
    # An orphan (a send that wrote its payload, then failed) that is still young.
    store_payloads.write(conn, fed.run_id, [arrays.encode(np.full(10, 3.0), "w")])
    assert store_payloads.collect(conn, grace=60) == (0, 0)
    # Held by a checkpoint: kept however old.
    conn.execute(
        "UPDATE runs SET status = 'starting', exec_id = 'e', claimed_at = now() WHERE id = %s",
        [fed.run_id],
    )
    assert store_runs.mark_running(conn, fed.run_id, "e", 1)
    grid = Grid(fed.url, fed.run_id)
    try:
        grid.save_checkpoint(1, ArrayRecord({"w": np.zeros(4)}))
    finally:
        grid.close()
    age_everything(conn)
    collected, _ = store_payloads.collect(conn, grace=60)
    assert collected == 2  # the cancelled message's and the orphan; not the checkpoint's
    assert (
        scalar(
            conn,
            "SELECT count(*) FROM checkpoint_arrays ca JOIN arrays a ON a.id = ca.array_id"
            " WHERE a.collected_at IS NULL",
        )
        == 1
    )
