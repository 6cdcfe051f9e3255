"""A hostile bundle reaching a node: the run's ClientApp process (a real
`python -m flpg.node.appprocess`, fed claimed messages as its node worker does)
refuses to extract a zip bomb and answers each of the run's messages with an error
reply naming why; it keeps serving and exits cleanly, and the cache keeps nothing."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from flpg import bus
from flpg.node.protocol import encode_batch
from flpg.store import messages as store_messages
from flpg.store import runs as store_runs
from flpg.store.db import Connection
from tests.unit.test_appbundle import raw_zip, stored, zero_bomb

from .conftest import instruction, register


def _next_done(proc: subprocess.Popen[str]) -> list[dict[str, Any]]:
    """The next `done` line of the process's protocol (skipping `started` lines)."""
    assert proc.stdout is not None
    while True:
        line = proc.stdout.readline()
        assert line, "the ClientApp process closed its protocol pipe"
        doc = json.loads(line)
        if "done" in doc:
            return doc["done"]  # type: ignore[no-any-return]


def test_a_zip_bomb_becomes_an_error_reply_not_a_dead_process(
    conn: Connection, db_url: str, tmp_path: Path
) -> None:
    bomb = raw_zip([stored("pyproject.toml", b"x"), zero_bomb("weights.bin", 2100)])
    app_hash = hashlib.sha256(bomb).hexdigest()
    node = register(conn, "node-0")
    run_id = store_runs.create(
        conn, app_hash=app_hash, app_name="bomb", bundle=bomb, run_config={}, node_ids=[node]
    )
    cache = tmp_path / "cache"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flpg.node.appprocess",
            "--run",
            str(run_id),
            "--worker",
            "w",
            "--cache-dir",
            str(cache),
        ],
        env={**os.environ, "FLPG_DATABASE_URL": db_url},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdin is not None
        answered = []
        for _ in range(2):  # two batches: the process goes on after the first
            [sent] = bus.send(conn, run_id, [instruction(node)])
            rows = store_messages.claim(conn, worker="w", node_ids=[node], lease=60, limit=10)
            assert [r.id for r in rows] == [sent]
            proc.stdin.write(encode_batch(rows, {node: {}}) + "\n")
            proc.stdin.flush()
            done = _next_done(proc)
            assert [(d["id"], d["outcome"]) for d in done] == [(sent, "error")]
            assert proc.poll() is None
            answered.append(sent)
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    replies = conn.execute(
        "SELECT reply_to, error_code, error_reason FROM messages WHERE reply_to = ANY(%s)"
        " ORDER BY reply_to",
        [answered],
    ).fetchall()
    assert [r[0] for r in replies] == answered
    for _, code, reason in replies:
        assert code is not None
        assert "the run's ClientApp did not load" in reason
        assert "would extract to 2202009601 bytes" in reason and "refused" in reason
    states = conn.execute(
        "SELECT state::text FROM messages WHERE id = ANY(%s)", [answered]
    ).fetchall()
    assert states == [("done",), ("done",)]
    assert not (cache / app_hash).exists()
    assert not any(p.name.startswith(".tmp-") for p in cache.iterdir())
