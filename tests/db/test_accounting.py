"""The accounting views (run_accounting, node_accounting) count what really moved and
what time was really spent, and show each role only the runs it may read; `flpg pull`
of a run is refused to another user by PostgreSQL itself.

Times are made exact by ageing rows in SQL (no sleeps).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from flpg.app.arrays import encode
from flpg.app.message import Message
from flpg.app.records import ArrayRecord, RecordDict
from flpg.bus import send
from flpg.cli import main
from flpg.errors import NotFound
from flpg.states import RunStatus
from flpg.store import accounting, checkpoints, payloads, pull, runroles
from flpg.store import messages as store_messages
from flpg.store import principals as store_principals
from flpg.store import runs as store_runs
from flpg.store.db import Connection, connect
from tests.db._replies import reply
from tests.db.test_enrolment import _credential, admin_session

from .conftest import APP_HASH, BUNDLE, make_federation, register

W = np.arange(100, dtype=np.float32)  # 400 bytes
B = np.array([1, 2, 3], dtype=np.int64)  # 24 bytes
R = np.linspace(0, 1, 10)  # float64: 80 bytes


@pytest.fixture
def admin(db_url: str) -> Iterator[Connection]:
    with admin_session(db_url) as conn:
        yield conn


def launch(conn: Connection, run_id: int) -> int:
    claim = store_runs.claim_next(conn, "exec-test")
    assert claim is not None and claim.run_id == run_id
    assert store_runs.mark_running(conn, run_id, "exec-test", 4242)
    return claim.attempt


def test_bytes_messages_and_times_per_run_and_node(admin: Connection, db_url: str) -> None:
    conn = admin
    fed = make_federation(conn, db_url)
    run_id = fed.run_id
    n0, n1, n2 = fed.selected
    launch(conn, run_id)
    first = runroles.serverapp_login(conn, run_id)
    runroles.drop(conn, first.role)
    second = runroles.serverapp_login(conn, run_id)
    model = RecordDict({"arrays": ArrayRecord({"w": W, "b": B})})
    sent = send(
        conn,
        run_id,
        [
            Message(model, n0, "train"),
            Message(model, n1, "train"),
            Message(RecordDict(), n2, "query"),
        ],
    )
    claimed = store_messages.claim(conn, worker="w1", node_ids=fed.selected, lease=60, limit=10)
    assert len(claimed) == 3
    reply(
        conn, "w1", sent[0], run_id, Message(RecordDict({"u": ArrayRecord({"r": R})}), n0, "train")
    )
    reply(conn, "w1", sent[1], run_id, Message(RecordDict(), n1, "train"))
    # Age the rows: created at T, claimed 2 s later; answered 3 s (n0) and 5 s (n1) after
    # the claim; n2's claim is never answered. ServerApp: launch 1 at T-1 s lasting 7 s,
    # launch 2 at T+10 s until the run ends at T+14 s. Submitted at T-2 s.
    conn.execute(
        "UPDATE messages SET created_at = '2026-01-01 00:00:00+00',"
        " claimed_at = '2026-01-01 00:00:02+00' WHERE reply_to IS NULL AND run_id = %s",
        [run_id],
    )
    for instruction, after in ((sent[0], 3), (sent[1], 5)):
        conn.execute(
            "UPDATE messages SET created_at = '2026-01-01 00:00:02+00'::timestamptz"
            " + make_interval(secs => %s) WHERE reply_to = %s",
            [after, instruction],
        )
    conn.execute(
        "UPDATE run_roles SET created_at = '2025-12-31 23:59:59+00',"
        " dropped_at = '2026-01-01 00:00:06+00' WHERE role_name = %s",
        [first.role],
    )
    conn.execute(
        "UPDATE run_roles SET created_at = '2026-01-01 00:00:10+00' WHERE role_name = %s",
        [second.role],
    )
    store_runs.finish(conn, run_id, RunStatus.FINISHED)
    conn.execute(
        "UPDATE runs SET submitted_at = '2025-12-31 23:59:58+00',"
        " finished_at = '2026-01-01 00:00:14+00' WHERE id = %s",
        [run_id],
    )

    acc = accounting.of_run(conn, run_id)
    assert (acc.instructions, acc.replies, acc.messages) == (3, 2, 5)
    assert acc.bytes_sent == 2 * (W.nbytes + B.nbytes) == 848
    assert acc.bytes_received == R.nbytes == 80
    assert acc.clientapp_seconds == pytest.approx(8.0)
    assert acc.wait_seconds == pytest.approx(6.0)
    assert acc.launches == 2
    assert acc.serverapp_seconds == pytest.approx(7.0 + 4.0)
    assert acc.queue_seconds == pytest.approx(1.0)
    by_node = {n.node_id: n for n in acc.nodes}
    assert sorted(by_node) == sorted(fed.selected)
    got = {
        node: (n.instructions, n.replies, n.bytes_received, n.bytes_sent, n.clientapp_seconds)
        for node, n in by_node.items()
    }
    assert got == {n0: (1, 1, 424, 80, 3.0), n1: (1, 1, 424, 0, 5.0), n2: (1, 0, 0, 0, 0.0)}
    assert all(n.wait_seconds == pytest.approx(2.0) for n in acc.nodes)
    # The views agree with the tables they read, for every run.
    assert conn.execute(
        "SELECT sum(bytes_sent) FROM node_accounting WHERE run_id = %s", [run_id]
    ).fetchone() == (80,)


def test_a_run_that_moved_nothing_counts_zero(admin: Connection, db_url: str) -> None:
    fed = make_federation(admin, db_url)
    acc = accounting.of_run(admin, fed.run_id)
    assert (acc.messages, acc.bytes_sent, acc.launches, acc.serverapp_seconds) == (0, 0, 0, 0.0)
    assert acc.queue_seconds is not None and acc.queue_seconds >= 0  # pending: up to now
    assert [n.messages for n in acc.nodes] == [0, 0, 0]
    with pytest.raises(NotFound, match="run 999 does not exist"):
        accounting.of_run(admin, 999)


def _user(admin: Connection, db_url: str, name: str) -> tuple[str, store_principals.Enrolled]:
    enrolled = store_principals.enrol(admin, "user", name)
    return runroles.RunLogin(enrolled.role, enrolled.password).url(db_url), enrolled


def _alices_run_with_a_model(admin: Connection, alice_url: str) -> int:
    node = register(admin, "n")
    with connect(alice_url) as alice:
        run_id = store_runs.create(
            alice, app_hash=APP_HASH, app_name="t", bundle=BUNDLE, run_config={}, node_ids=[node]
        )
    attempt = launch(admin, run_id)
    ids = payloads.write(admin, run_id, [encode(W, "w"), encode(B, "b")])
    checkpoints.save(admin, run_id, attempt, 2, [("w", ids[0]), ("b", ids[1])], {"loss": 0.5})
    store_runs.record_round(admin, run_id, 1, "train", {"loss": 0.9}, 1, 0)
    store_runs.record_round(admin, run_id, 2, "train", {"loss": 0.5, "acc": 0.8}, 1, 0)
    return run_id


def test_each_user_sees_only_their_own_runs_accounting_and_the_auditor_all(
    admin: Connection, db_url: str
) -> None:
    alice_url, _ = _user(admin, db_url, "alice")
    bob_url, _ = _user(admin, db_url, "bob")
    auditor = store_principals.enrol(admin, "auditor", "eve")
    auditor_url = runroles.RunLogin(auditor.role, auditor.password).url(db_url)
    run_id = _alices_run_with_a_model(admin, alice_url)
    with connect(alice_url) as alice, connect(bob_url) as bob, connect(auditor_url) as eve:
        assert accounting.of_run(alice, run_id).run_id == run_id
        for view in ("run_accounting", "node_accounting"):
            assert bob.execute(f"SELECT count(*) FROM {view}").fetchone() == (0,)
            assert eve.execute(f"SELECT count(*) FROM {view}").fetchone() == (1,)
        with pytest.raises(NotFound):
            accounting.of_run(bob, run_id)
        with pytest.raises(NotFound), pull.snapshot(bob):
            pull.model(bob, run_id)
        with pull.snapshot(alice):
            got = pull.model(alice, run_id)
            assert (got.round, [r.array_name for r in got.arrays]) == (2, ["w", "b"])
            assert b"".join(pull.chunks(alice, got.arrays[0])) == W.tobytes()


def test_pull_writes_a_users_own_model_and_refuses_another_users_run(
    admin: Connection, db_url: str, tmp_path: Path
) -> None:
    _, alice = _user(admin, db_url, "alice")
    _, bob = _user(admin, db_url, "bob")
    alice_url = runroles.RunLogin(alice.role, alice.password).url(db_url)
    run_id = _alices_run_with_a_model(admin, alice_url)
    alice_file, bob_file = _credential(tmp_path, db_url, alice), _credential(tmp_path, db_url, bob)
    runner = CliRunner()
    out = tmp_path / "alice.npz"
    metrics = tmp_path / "m.csv"
    args = ["pull", str(run_id), "-o", str(out), "--metrics", str(metrics)]
    done = runner.invoke(main, [*args, "--credentials", str(alice_file)])
    assert done.exit_code == 0, done.output
    assert f"model of round 2 (2 arrays, 424 B) written to {out}" in done.stdout
    with np.load(out) as npz:
        assert list(npz.keys()) == ["w", "b"]
        assert np.array_equal(npz["w"], W) and npz["b"].dtype == np.int64
    assert metrics.read_text().splitlines() == [
        "round,phase,num_replies,num_failures,acc,loss",
        "1,train,1,0,,0.9",
        "2,train,1,0,0.8,0.5",
    ]

    stolen = tmp_path / "bob.npz"
    refused = runner.invoke(
        main, ["pull", str(run_id), "-o", str(stolen), "--credentials", str(bob_file)]
    )
    assert refused.exit_code == 4
    assert refused.stderr == f"flpg: error: run {run_id} does not exist (see `flpg ls`)\n"
    assert not stolen.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []

    # An auditor reads every run's metadata, never payload bytes: refused, no file.
    auditor = store_principals.enrol(admin, "auditor", "eve")
    eve_file = _credential(tmp_path, db_url, auditor)
    audited = runner.invoke(
        main, ["pull", str(run_id), "-o", str(stolen), "--credentials", str(eve_file)]
    )
    assert audited.exit_code == 6, audited.output
    assert audited.stderr.startswith("flpg: error: ") and audited.stderr.count("\n") == 1
    assert not stolen.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []

    # The same run, asked for another round: one line, exit 4, no file.
    other = runner.invoke(
        main, [*args[:3], str(tmp_path / "r1.npz"), "--round", "1", "--db", db_url]
    )
    assert other.exit_code == 4
    assert "has no checkpoint of round 1: flpg keeps only the latest" in other.stderr
    assert not (tmp_path / "r1.npz").exists()


def test_a_pull_reads_whole_the_checkpoint_a_serverapp_replaces_meanwhile(
    admin: Connection, db_url: str
) -> None:
    alice_url, _ = _user(admin, db_url, "alice")
    run_id = _alices_run_with_a_model(admin, alice_url)
    attempt = store_runs.get(admin, run_id).attempt
    with connect(alice_url) as alice:
        with pull.snapshot(alice):
            found = pull.model(alice, run_id)
            # Meanwhile the ServerApp saves round 3: round 2's arrays are deleted.
            ids = payloads.write(admin, run_id, [encode(W * 2, "w")])
            checkpoints.save(admin, run_id, attempt, 3, [("w", ids[0])], {})
            assert admin.execute(
                "SELECT count(*) FROM arrays WHERE id = %s", [found.arrays[0].array_id]
            ).fetchone() == (0,)
            assert b"".join(pull.chunks(alice, found.arrays[0])) == W.tobytes()
            assert b"".join(pull.chunks(alice, found.arrays[1])) == B.tobytes()
        assert pull.model(alice, run_id).round == 3
