"""App-produced text reaches the database only through the store, which makes it
storable: NUL, unpaired surrogates and any length never fail a statement, and the
exec's log writer never loses one run's lines to another's (or to one bad line)."""

from __future__ import annotations

import pytest

from flpg import bus
from flpg.app.records import ConfigRecord, RecordDict
from flpg.errors import NotFound
from flpg.exec.logwriter import LogWriter
from flpg.store import logs as store_logs
from flpg.store import messages as store_messages
from flpg.store import runs as store_runs
from flpg.store.db import Connection
from flpg.store.recordjson import config_records_from_json
from flpg.store.text import LINE_LIMIT, REASON_LIMIT, storable
from tests.db import _replies as reply_path
from tests.db.conftest import Federation, create_run, instruction, scalar

NASTY = "bad\x00text\x01\x1b[31m\r\n\udc80 end"


def _set_running(conn: Connection, run_id: int, exec_id: str = "e") -> None:
    conn.execute(
        "UPDATE runs SET status = 'running', exec_id = %s, started_at = now(), "
        "heartbeat_at = now() WHERE id = %s",
        (exec_id, run_id),
    )


def test_a_run_reason_with_nul_surrogates_and_any_length_is_stored(
    conn: Connection, fed: Federation
) -> None:
    reason = NASTY + "x" * (3 * REASON_LIMIT)
    assert store_runs.finish(conn, fed.run_id, "failed", reason) == "failed"
    stored = store_runs.get(conn, fed.run_id).reason
    assert stored == storable(reason, REASON_LIMIT)
    assert stored is not None and stored.startswith("bad\\x00text\x01\x1b[31m\r\n\ufffd")
    assert stored.endswith(" more characters cut]") and len(stored) < REASON_LIMIT + 40


def test_log_lines_are_stored_storable_and_a_missing_run_is_not_found(
    conn: Connection, fed: Federation
) -> None:
    long = "y" * (LINE_LIMIT + 10)
    store_logs.append(conn, fed.run_id, [("stdout", NASTY), ("stderr", long)])
    got = [line.line for line in store_logs.tail(conn, fed.run_id)]
    assert got == [storable(NASTY, LINE_LIMIT), storable(long, LINE_LIMIT)]
    with pytest.raises(NotFound):
        store_logs.append(conn, 10**9, [("stdout", "orphan")])


def test_error_replies_and_reject_reasons_are_stored_storable(
    conn: Connection, fed: Federation
) -> None:
    node = fed.selected[0]
    first, second = bus.send(conn, fed.run_id, [instruction(node), instruction(node)])
    store_messages.claim(conn, worker="w", node_ids=[node], lease=60, limit=2)
    reason = f"ValueError: {NASTY}" + "z" * REASON_LIMIT
    reply_path.reply_new(
        conn, worker="w", new=store_messages.NewReply(first, {}, {}, [], 1, reason)
    )
    done = store_messages.reply_batch(
        conn, worker="w", replies=[store_messages.NewReply(second, {}, {}, [], 1, NASTY)]
    )
    assert list(done) == [second]
    stored = dict(
        conn.execute(
            "SELECT reply_to, error_reason FROM messages WHERE reply_to IS NOT NULL"
        ).fetchall()
    )
    assert stored == {
        first: storable(reason, REASON_LIMIT),
        second: storable(NASTY, REASON_LIMIT),
    }
    reply_id = scalar(conn, "SELECT id FROM messages WHERE reply_to = %s", (first,))
    assert store_messages.reject_replies(conn, fed.run_id, [(reply_id, f"array {NASTY!s}")]) == 1
    rejected = scalar(conn, "SELECT rejected_reason FROM messages WHERE id = %s", (reply_id,))
    assert rejected == storable(f"array {NASTY}", REASON_LIMIT)


def test_config_strings_jsonb_cannot_hold_round_trip_through_the_database(
    conn: Connection, fed: Federation
) -> None:
    node = fed.selected[0]
    record = ConfigRecord({"text": NASTY, "list": ["a\x00", "\udc80", "plain"], "ok": "plain"})
    (mid,) = bus.send(conn, fed.run_id, [instruction(node, RecordDict({"cfg": record}))])
    stored = scalar(conn, "SELECT configs FROM messages WHERE id = %s", (mid,))
    assert stored["cfg"]["ok"] == "plain"  # plain strings stay plain (queryable)
    assert config_records_from_json(stored) == {"cfg": record}


def test_the_log_writer_keeps_every_storable_line_of_every_run(
    conn: Connection, fed: Federation, db_url: str
) -> None:
    other = create_run(conn, fed.selected)
    writer = LogWriter(db_url)
    writer.put(fed.run_id, "stdout", "first")
    writer.put(fed.run_id, "stdout", NASTY)
    writer.put(10**9, "stdout", "of a run that does not exist")
    writer.put(other, "stdout", "other run, before")
    writer.put(other, "no-such-stream", "refused: the enum has no such stream")
    writer.put(other, "stdout", "other run, after")
    writer.put(fed.run_id, "stdout", "last")
    writer.close()

    def lines(run_id: int) -> list[str]:
        return [line.line for line in store_logs.tail(conn, run_id)]

    assert lines(fed.run_id) == ["first", storable(NASTY, LINE_LIMIT), "last"]
    # The run whose lines were refused together got them written one by one:
    # only the bad one is lost.
    assert lines(other) == ["other run, before", "other run, after"]


def test_superseded_names_the_attempts_that_no_longer_run_for_this_exec(
    conn: Connection, fed: Federation
) -> None:
    ended, moved, mine = fed.run_id, create_run(conn, fed.selected), create_run(conn, fed.selected)
    for run_id in (ended, moved, mine):
        _set_running(conn, run_id)
    store_runs.finish(conn, ended, "failed", "silent")
    conn.execute("UPDATE runs SET attempt = 2 WHERE id = %s", (moved,))
    other_exec = create_run(conn, fed.selected)
    _set_running(conn, other_exec, exec_id="another")
    children = [(ended, 1), (moved, 1), (mine, 1), (other_exec, 1), (10**9, 1)]
    assert sorted(store_runs.superseded(conn, "e", children)) == sorted(
        [(ended, 1), (moved, 1), (other_exec, 1), (10**9, 1)]
    )
