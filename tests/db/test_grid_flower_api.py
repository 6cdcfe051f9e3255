"""The Grid's Flower API on a real database: `Grid.run`, `create_message`, and error
replies whose codes are Flower's while the column keeps flpg's first numbering."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

import pytest

from flpg import bus
from flpg.app.message import DEFAULT_TTL, Error, ErrorCode, Message
from flpg.app.records import ConfigRecord, RecordDict
from flpg.errors import NotFound
from flpg.serverapp.grid import Grid
from flpg.serverapp.runinfo import Run, RunStatus
from flpg.states import RunStatus as States
from flpg.store import messages as store_messages
from flpg.store import runs as store_runs
from flpg.store.db import Connection
from tests.db import _replies as reply_path

from .conftest import Federation, scalar
from .test_checkpoints import launch


@pytest.fixture
def grid(fed: Federation) -> Iterator[Grid]:
    g = Grid(fed.url, fed.run_id, poll=0.5)
    try:
        yield g
    finally:
        g.close()


def test_grid_run_describes_the_run_in_flowers_terms(
    conn: Connection, fed: Federation, grid: Grid
) -> None:
    pending = grid.run
    assert isinstance(pending, Run)
    assert (pending.run_id, pending.fab_id, pending.override_config) == (
        fed.run_id,
        "testapp",
        {"lr": 0.1},
    )
    assert pending.status == RunStatus("pending", "", "")
    assert pending.fab_hash and pending.fab_version == "" and pending.flwr_aid == ""
    datetime.fromisoformat(pending.pending_at)
    assert (pending.starting_at, pending.running_at, pending.finished_at) == ("", "", "")

    launch(conn, fed.run_id)
    running = grid.run  # read anew on each access
    assert running.status.status == "running" and running.running_at
    store_runs.finish(conn, fed.run_id, States.FAILED, reason="boom")
    ended = grid.run
    assert ended.status == RunStatus("finished", "failed", "boom")
    assert ended.finished_at


def test_create_message_is_flowers(fed: Federation, grid: Grid) -> None:
    content = RecordDict({"config": ConfigRecord({"lr": 0.1})})
    msg = grid.create_message(content, "train", fed.selected[0], "3")
    md = msg.metadata
    assert (md.run_id, md.dst_node_id, md.group_id, md.ttl) == (
        fed.run_id,
        fed.selected[0],
        "3",
        DEFAULT_TTL,
    )
    assert grid.create_message(content, "query.x", fed.selected[0], "3", ttl=5).metadata.ttl == 5


def test_error_codes_reach_the_serverapp_as_flowers(
    conn: Connection, fed: Federation, grid: Grid
) -> None:
    """An app's own code, a Flower code whose number flpg's column used for another
    meaning, and an error without a reason all come back as they were sent."""
    codes = [ErrorCode.LOAD_CLIENT_APP_EXCEPTION, ErrorCode.NODE_UNAVAILABLE, 4242]
    ids = grid.push_messages(
        grid.create_message(RecordDict(), "train", n, "1") for n in fed.selected
    )
    rows = store_messages.claim(conn, worker="w", node_ids=fed.selected, lease=60, limit=10)
    for msg, code in zip(bus.load(conn, rows), codes, strict=True):
        assert msg.metadata.message_id is not None
        reply_path.error_reply(conn, "w", int(msg.metadata.message_id), Error(code))
    got = {r.metadata.reply_to_message_id: r.error for r in grid.receive(ids, timeout=10)}
    assert [got[i] for i in ids] == [Error(c) for c in codes]
    stored = scalar(
        conn,
        "SELECT array_agg(error_code ORDER BY reply_to) FROM messages WHERE reply_to = ANY(%s)",
        [ids],
    )
    assert stored == [100, 3, 4242]  # NODE_UNAVAILABLE is 3 in the column, as ever


def test_a_reply_built_with_flowers_forms_is_stored(
    conn: Connection, fed: Federation, grid: Grid
) -> None:
    (mid,) = grid.push_messages([grid.create_message(RecordDict(), "train", fed.selected[0], "1")])
    (row,) = store_messages.claim(conn, worker="w", node_ids=fed.selected, lease=60, limit=1)
    (msg,) = bus.load(conn, [row])
    reply = Message(RecordDict({"c": ConfigRecord({"ok": True})}), reply_to=msg, ttl=30)
    reply_path.reply(conn, "w", int(mid), fed.run_id, reply)
    (got,) = grid.receive([mid], timeout=10)
    assert got.content["c"] == ConfigRecord({"ok": True})
    assert got.metadata.reply_to_message_id == mid and got.metadata.src_node_id == fed.selected[0]


def test_message_ids_are_str_out_and_in(conn: Connection, fed: Federation, grid: Grid) -> None:
    """push_messages returns Flower's str ids; pull_messages, receive and reject_replies
    take them back; an id that cannot be a message is refused in one line."""
    ids = grid.push_messages(
        [grid.create_message(RecordDict(), "train", n, "1") for n in fed.selected]
    )
    assert all(isinstance(i, str) and i.isdecimal() for i in ids)
    rows = store_messages.claim(conn, worker="w", node_ids=fed.selected, lease=60, limit=10)
    loaded = bus.load(conn, rows)
    assert sorted(m.metadata.message_id or "" for m in loaded) == sorted(ids)
    for msg in loaded:
        reply_path.reply(
            conn,
            "w",
            int(msg.metadata.message_id or 0),
            fed.run_id,
            Message(RecordDict(), reply_to=msg),
        )
    replies = list(grid.receive(ids, timeout=10))
    assert sorted(r.metadata.reply_to_message_id or "" for r in replies) == sorted(ids)
    assert all(isinstance(r.metadata.message_id, str) for r in replies)
    grid.reject_replies([(replies[0].metadata.message_id or "", "not usable")])
    reason = scalar(
        conn,
        "SELECT rejected_reason FROM messages WHERE id = %s",
        [int(replies[0].metadata.message_id or 0)],
    )
    assert reason == "not usable"
    for bad in ("abc", "-3", "0", "1.5", ""):
        with pytest.raises(NotFound, match=f"message id {bad!r} is not one of run {fed.run_id}'s"):
            grid.pull_messages([bad])
    with pytest.raises(NotFound, match="'x1'"):
        grid.reject_replies([("x1", "no")])
