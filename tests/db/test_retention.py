"""Retention (`flpg gc`): old ended runs lose their payload chunks and nothing else;
live, recently ended and `--keep-last` runs are untouched; a dry run changes nothing.

Runs are synthetic but made by flpg's own store functions (a broadcast, node replies
through the node's reply path, a checkpoint, round metrics, log lines, an outcome);
only their age is set by hand.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flpg import bus
from flpg.app import arrays
from flpg.app.message import Message
from flpg.app.records import ArrayRecord, MetricRecord, RecordDict
from flpg.errors import DatabaseRefused, PayloadCorrupt
from flpg.states import LogStream, RunStatus
from flpg.store import checkpoints as store_checkpoints
from flpg.store import logs as store_logs
from flpg.store import messages as store_messages
from flpg.store import payloads as store_payloads
from flpg.store import retention
from flpg.store import runs as store_runs
from flpg.store.db import Connection, connect
from flpg.store.errors import translated
from tests.db._chunks import ALL_CHUNKS

from . import _replies as reply_path
from ._served import flpg_cli
from .conftest import create_run, instruction, register, scalar

DAY = 86400.0
MONTH = 30 * DAY
CHUNK = 1024
"""Broadcasts and checkpoints are written in 1 KiB chunks: 8 chunks per model."""


def model(value: float) -> ArrayRecord:
    return ArrayRecord({"w": np.full(1000, value)})  # 8000 bytes


def launch(conn: Connection, run_id: int) -> None:
    claim = store_runs.claim_next(conn, "exec-gc")
    assert claim is not None and claim.run_id == run_id
    assert store_runs.mark_running(conn, run_id, "exec-gc", 4242)


def synthetic_run(
    conn: Connection, nodes: list[int], value: float, end: RunStatus | None = RunStatus.FINISHED
) -> int:
    """One round of a run: broadcast, replies, checkpoint, metrics, logs; then `end`
    (None: it stays running)."""
    run_id = create_run(conn, nodes)
    launch(conn, run_id)
    broadcast = RecordDict({"arrays": model(value)})  # stored once for all nodes
    sent = bus.send(conn, run_id, [instruction(n, broadcast) for n in nodes], CHUNK)
    claimed = store_messages.claim(conn, worker="w", node_ids=nodes, lease=30, limit=len(nodes))
    assert sorted(r.id for r in claimed) == sorted(sent)
    for received in bus.load(conn, claimed):
        update = RecordDict(
            {"arrays": ArrayRecord({"w": np.full(100, value)}), "m": MetricRecord({"n": 1})}
        )
        mid = received.metadata.message_id
        assert mid is not None
        reply_path.reply(conn, "w", mid, run_id, Message(update, reply_to=received))
    (model_id,) = store_payloads.write(
        conn, run_id, [arrays.encode(np.full(1000, value), "w")], CHUNK
    )
    store_checkpoints.save(conn, run_id, 1, 1, [("w", model_id)], {"train": {"1": {"n": 3}}})
    store_runs.record_round(conn, run_id, 1, "train", {"n": 3}, 3, 0)
    store_logs.append(conn, run_id, [(LogStream.STDOUT, f"round 1 of run {run_id}")])
    if end is not None:
        reason = "boom" if end == RunStatus.FAILED else None
        assert store_runs.finish(conn, run_id, end, reason) == end
    return run_id


def age(conn: Connection, run_id: int, days: float) -> None:
    """As if the run (and its payloads and messages) had ended `days` ago."""
    conn.execute(
        "UPDATE runs SET finished_at = now() - make_interval(secs => %s)"
        " WHERE id = %s AND finished_at IS NOT NULL",
        [days * DAY, run_id],
    )
    conn.execute(
        "UPDATE arrays SET created_at = now() - make_interval(secs => %s) WHERE run_id = %s",
        [(days + 1) * DAY, run_id],
    )


def chunk_stats(conn: Connection, run_id: int | None = None) -> tuple[int, int]:
    """`(chunks, bytes)` stored, of one run or of all."""
    row = conn.execute(
        "SELECT count(*), coalesce(sum(octet_length(c.data)), 0)::bigint"
        f" FROM {ALL_CHUNKS} c JOIN arrays a ON a.id = c.array_id"
        " WHERE %(run)s::bigint IS NULL OR a.run_id = %(run)s::bigint",
        {"run": run_id},
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def model_stats(conn: Connection, run_id: int) -> tuple[int, int]:
    """`(chunks, bytes)` of the run's final model (its checkpoint's arrays)."""
    row = conn.execute(
        "SELECT count(*), coalesce(sum(octet_length(c.data)), 0)::bigint"
        " FROM checkpoint_arrays ca JOIN array_chunks c ON c.array_id = ca.array_id"
        " WHERE ca.run_id = %s",
        [run_id],
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


AUDIT = {
    "runs": "SELECT id, status, reason, finished_at FROM runs",
    "messages": "SELECT id, state, metrics, error_code FROM messages",
    "message_arrays": "SELECT message_id, record_name, array_name, array_id FROM message_arrays",
    "arrays": "SELECT id, run_id, dtype, shape, nbytes, n_chunks, digest FROM arrays",
    "run_logs": "SELECT id, run_id, line FROM run_logs",
    "round_metrics": "SELECT run_id, round, phase, metrics FROM round_metrics",
    "checkpoints": "SELECT run_id, round, metrics FROM checkpoints",
    "checkpoint_arrays": "SELECT run_id, array_name, array_id FROM checkpoint_arrays",
}


def audit(conn: Connection) -> dict[str, list[Any]]:
    """Every audit row gc must keep, as it is."""
    return {t: sorted(map(tuple, conn.execute(q).fetchall()), key=repr) for t, q in AUDIT.items()}


@pytest.fixture
def nodes(conn: Connection) -> list[int]:
    """Three registered nodes, and no run yet."""
    return [register(conn, f"node-{i}", **{"partition-id": i}) for i in range(3)]


def gc(conn: Connection, **kwargs: Any) -> retention.GcResult:
    return retention.collect_retired(conn, **{"older_than": MONTH, **kwargs})


def test_old_run_loses_chunks_keeps_audit_rows_and_final_model(
    conn: Connection, nodes: list[int]
) -> None:
    old = synthetic_run(conn, nodes, 1.0)
    age(conn, old, 40)
    before = audit(conn)
    total, model_only = chunk_stats(conn, old), model_stats(conn, old)
    assert model_only == (8, 8000) and total == (8 + 8 + 3 * 1, 8000 + 8000 + 3 * 800)

    result = gc(conn)
    assert result.run_ids == {old}
    assert (result.chunks, result.bytes) == (total[0] - 8, total[1] - 8000)
    assert result.arrays == 1 + 3  # the broadcast (stored once) and the three replies
    assert audit(conn) == before
    assert chunk_stats(conn, old) == model_only
    refs = store_checkpoints.array_refs(conn, old)
    (loaded,) = store_payloads.read(conn, refs).values()
    np.testing.assert_array_equal(loaded, np.full(1000, 1.0))
    first = scalar(conn, "SELECT min(id) FROM messages WHERE run_id = %s", [old])
    with pytest.raises(PayloadCorrupt, match="was collected"):
        store_payloads.read(conn, store_payloads.refs(conn, [first]))
    assert gc(conn).chunks == 0  # nothing left to free

    dropped = gc(conn, keep_model=False)
    assert (dropped.run_ids, dropped.chunks, dropped.bytes) == ({old}, 8, 8000)
    assert chunk_stats(conn, old) == (0, 0)
    assert audit(conn) == before


def test_live_and_recently_ended_runs_are_untouched(conn: Connection, nodes: list[int]) -> None:
    ends = (RunStatus.FINISHED, RunStatus.FAILED, RunStatus.STOPPED)
    old = {s: synthetic_run(conn, nodes, 1.0, s) for s in ends}
    for run_id in old.values():
        age(conn, run_id, 31)
    recent = synthetic_run(conn, nodes, 2.0)
    age(conn, recent, 29)
    live = synthetic_run(conn, nodes, 3.0, end=None)
    age(conn, live, 100)  # its payloads are old, but it has not ended
    pending = create_run(conn, nodes)
    kept = {r: chunk_stats(conn, r) for r in (recent, live)}

    result = gc(conn)
    assert result.run_ids == set(old.values())
    assert (result.active, result.recent, result.kept) == (2, 1, 0)
    assert {r: chunk_stats(conn, r) for r in (recent, live)} == kept
    assert all(chunk_stats(conn, r) == model_stats(conn, r) for r in old.values())
    assert store_runs.get(conn, pending).status == RunStatus.PENDING
    # The live run carries on: its payloads read back whole.
    refs = store_checkpoints.array_refs(conn, live)
    np.testing.assert_array_equal(
        next(iter(store_payloads.read(conn, refs).values())), np.full(1000, 3.0)
    )


def test_keep_last_keeps_the_most_recently_ended_runs_whole(
    conn: Connection, nodes: list[int]
) -> None:
    runs = [synthetic_run(conn, nodes, float(i)) for i in range(4)]
    for days, run_id in zip((90, 80, 70, 60), runs, strict=True):
        age(conn, run_id, days)
    whole = {r: chunk_stats(conn, r) for r in runs}

    result = gc(conn, keep_last=2)
    assert result.run_ids == set(runs[:2])
    assert (result.kept, result.recent, result.active) == (2, 0, 0)
    assert {r: chunk_stats(conn, r) for r in runs[2:]} == {r: whole[r] for r in runs[2:]}
    # The newest ended run counts among the last N even while it is recent.
    fresh = synthetic_run(conn, nodes, 9.0)
    result = gc(conn, keep_last=2, keep_model=False)
    assert result.run_ids == set(runs[:3])  # the oldest two: their models; runs[2]: all
    assert (result.kept, result.recent) == (1, 1)
    assert chunk_stats(conn, runs[3]) == whole[runs[3]]
    assert chunk_stats(conn, fresh)[0] > 0


def test_dry_run_changes_nothing_and_reports_the_same_numbers(
    conn: Connection, nodes: list[int]
) -> None:
    runs = [synthetic_run(conn, nodes, float(i)) for i in range(5)]
    for i, run_id in enumerate(runs):
        age(conn, run_id, 40 + i)
    synthetic_run(conn, nodes, 7.0, end=None)
    before = (audit(conn), chunk_stats(conn))
    collected = "SELECT count(*) FROM arrays WHERE collected_at IS NOT NULL"
    assert scalar(conn, collected) == 0

    dry = gc(conn, keep_last=1, dry_run=True)
    assert (audit(conn), chunk_stats(conn)) == before
    assert scalar(conn, collected) == 0
    assert dry.chunks > 0 and len(dry.run_ids) == 4

    real = gc(conn, keep_last=1, batch=3)  # several transactions, the same totals
    assert real == dry
    assert chunk_stats(conn) == (before[1][0] - dry.chunks, before[1][1] - dry.bytes)
    assert scalar(conn, collected) == dry.arrays


@pytest.mark.parametrize("keep_model", [True, False], ids=["keep-model", "no-keep-model"])
def test_soak_gc_between_batches_keeps_chunk_bytes_bounded(
    conn: Connection, nodes: list[int], keep_model: bool
) -> None:
    """50 runs in batches of 5, gc after each batch (the previous batch having aged
    past --older-than), beside a run that never ends: stored chunk bytes are exactly
    the live run's, the --keep-last runs' (the newest batch among them) and, with
    keep_model, one model per retired run; without it, a bound independent of 50."""
    batch, keep_last = 5, 7
    live = synthetic_run(conn, nodes, -1.0, end=None)
    live_bytes = chunk_stats(conn, live)[1]
    ended: list[int] = []
    peak = 0
    for b in range(50 // batch):
        for run_id in ended[-batch:]:
            age(conn, run_id, 31 + 50 - b)  # older batches ended earlier
        ended += [synthetic_run(conn, nodes, float(b * batch + i)) for i in range(batch)]
        run_bytes = chunk_stats(conn, ended[-1])[1]
        model_bytes = model_stats(conn, ended[-1])[1]
        assert 0 < model_bytes < run_bytes

        result = gc(conn, keep_last=keep_last, keep_model=keep_model)
        assert (result.active, result.recent) == (1, batch)
        assert result.kept == min(len(ended), keep_last) - batch
        retired = ended[: max(0, len(ended) - keep_last)]
        kept_model = model_bytes if keep_model else 0
        assert all(chunk_stats(conn, r)[1] == kept_model for r in retired)
        stored = chunk_stats(conn)[1]
        whole = live_bytes + min(len(ended), keep_last) * run_bytes
        assert stored == whole + len(retired) * kept_model
        peak = max(peak, stored)
    if not keep_model:
        assert peak == live_bytes + keep_last * run_bytes  # whatever the number of runs
    assert chunk_stats(conn, live)[1] == live_bytes
    assert scalar(conn, "SELECT count(*) FROM arrays WHERE collected_at IS NULL") > 0


def test_refused_unless_admin(conn: Connection, nodes: list[int], db_url: str) -> None:
    """A role that does not own the tables (here one in `flpg_link`, which may delete
    payload chunks) is refused, and nothing changes."""
    old = synthetic_run(conn, nodes, 1.0)
    age(conn, old, 40)
    before = chunk_stats(conn)
    role, password = f"gc_outsider_{secrets.token_hex(4)}", secrets.token_hex(16)
    conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}' IN ROLE flpg_link")
    try:
        url = db_url.replace("postgresql://flpg@", f"postgresql://{role}:{password}@", 1)
        assert url != db_url
        with (
            connect(url) as outsider,
            pytest.raises(DatabaseRefused, match=r"admin|denied"),
            translated(url),
        ):
            retention.collect_retired(outsider, older_than=MONTH)
    finally:
        conn.execute(f"DROP ROLE IF EXISTS {role}")
    assert chunk_stats(conn) == before


# ------------------------------------------------------------------------ the CLI


flpg = flpg_cli  # `flpg ARGS` with FLPG_HOME=tmp_path and no FLPG_DATABASE_URL


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--older-than", "30x"], "'30x' is not a duration"),
        (["--older-than", "-1d"], "'-1d' is not a duration"),
        (["--older-than", ""], "is not a duration"),
        (["--older-than", "99999999d"], "too long"),
        (["--keep-last", "-1"], "--keep-last -1 is out of range"),
        (["--keep-last", "two"], "two"),
    ],
)
def test_bad_input_is_one_line_exit_2(
    tmp_path: Path, db_url: str, conn: Connection, nodes: list[int], args: list[str], needle: str
) -> None:
    old = synthetic_run(conn, nodes, 1.0)
    age(conn, old, 40)
    before = chunk_stats(conn)
    result = flpg(tmp_path, "gc", *args, "--db", db_url)
    assert result.returncode == 2, result
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("flpg: error: "), result.stderr
    assert needle in lines[0]
    assert chunk_stats(conn) == before


def test_cli_reports_what_it_freed_and_skipped(
    tmp_path: Path, db_url: str, conn: Connection, nodes: list[int]
) -> None:
    old = synthetic_run(conn, nodes, 1.0)
    age(conn, old, 40)
    synthetic_run(conn, nodes, 2.0, end=None)
    freed = chunk_stats(conn, old)[0] - model_stats(conn, old)[0]

    dry = flpg(tmp_path, "gc", "--older-than", "4w", "--dry-run", "--db", db_url)
    assert dry.returncode == 0, dry.stderr
    assert f"would free {freed} chunk(s)" in dry.stdout
    assert f"in 1 run(s): {old}" in dry.stdout
    assert "skipped: 1 active run(s), 0 run(s) that ended less than 4w ago" in dry.stdout
    real = flpg(tmp_path, "gc", "--older-than", "4w", "--db", db_url)
    assert real.returncode == 0, real.stderr
    assert f"freed {freed} chunk(s)" in real.stdout
    assert real.stdout.splitlines()[1:] == dry.stdout.splitlines()[1:]

    status = flpg(tmp_path, "db", "status", "--db", db_url)
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("database size: "))
    tables = [line.split()[0] for line in lines[at + 1 :]]
    assert "array_chunks" in tables and 1 <= len(tables) <= 8
