"""`flpg pull`: a run's final model (its checkpoint's arrays, streamed chunk by chunk)
and its per-round metrics, as the connected role may read them.

A user's role sees only its own runs (row-level security): another user's run is
"not found", exactly as a run that does not exist.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg

from flpg.app import arrays
from flpg.app.compressed import Decoder
from flpg.errors import NotFound, PayloadCorrupt
from flpg.states import LogStream
from flpg.store import checkpoints as store_checkpoints
from flpg.store import logs as store_logs
from flpg.store import runs as store_runs
from flpg.store.db import Connection
from flpg.store.payloads import ArrayRef
from flpg.store.sql import query

ARTIFACT_EVENT = "artifacts of attempt "
"""The start of the log event in which an exec names the artifact directory of an
attempt it launches (`flpg.exec.artifacts`)."""
ARTIFACT_EVENT_LINES = 1000
"""Log lines `artifact_dir` looks through (the event precedes each attempt's output)."""


def artifact_event(attempt: int, host: str, path: str) -> str:
    """The event line: attempt `attempt` writes its files in `path` on `host`."""
    return f"{ARTIFACT_EVENT}{attempt}: {host}:{path}"


def artifact_dir(conn: Connection, run_id: int) -> str | None:
    """`HOST:PATH` of the run's artifact directory, as the newest artifact event among
    the first ARTIFACT_EVENT_LINES lines of its log names it; None if none does (the
    run was never launched, or by an older flpg)."""
    found = None
    for line in store_logs.tail(conn, run_id, 0, ARTIFACT_EVENT_LINES):
        if line.stream == LogStream.EVENT and line.line.startswith(ARTIFACT_EVENT):
            found = line.line.partition(": ")[2] or None
    return found


@dataclass(frozen=True)
class Model:
    """The arrays of a run's checkpoint, in the order its ServerApp saved them."""

    run_id: int
    round: int
    arrays: list[ArrayRef]

    @property
    def nbytes(self) -> int:
        return sum(ref.nbytes for ref in self.arrays)


@contextmanager
def snapshot(conn: Connection) -> Iterator[None]:
    """One REPEATABLE READ transaction: every read in the block sees the database as
    at its first statement, so a checkpoint that a running ServerApp replaces (and
    whose arrays it deletes) meanwhile is still read whole."""
    before = conn.isolation_level
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    try:
        with conn.transaction():
            yield
    finally:
        conn.isolation_level = before


def model(conn: Connection, run_id: int, server_round: int | None = None) -> Model:
    """The run's checkpoint (of `server_round`, if given). NotFound when the run does
    not exist (or is not the role's), saved no checkpoint, has none of that round
    (flpg keeps the latest only), or its arrays' bytes were collected."""
    store_runs.get(conn, run_id)
    saved = store_checkpoints.get(conn, run_id)
    if saved is None:
        raise NotFound(
            f"run {run_id} has no model to pull: it saved no checkpoint (no round completed)"
        )
    if server_round is not None and server_round != saved.round:
        raise NotFound(
            f"run {run_id} has no checkpoint of round {server_round}: flpg keeps only the "
            f"latest checkpoint, of round {saved.round}"
        )
    refs = store_checkpoints.array_refs(conn, run_id)
    collected = [ref.array_name for ref in refs if ref.collected]
    if collected:
        raise NotFound(
            f"the arrays of run {run_id}'s checkpoint were collected ({collected[0]!r} "
            f"first; `flpg gc --no-keep-model`): there is no model to pull"
        )
    return Model(run_id, saved.round, refs)


def chunks(conn: Connection, ref: ArrayRef) -> Iterator[bytes]:
    """The stored bytes of one array, chunk by chunk, as the database streams them.

    Raises PayloadCorrupt on a missing chunk, a length mismatch or (after the last
    chunk) a digest mismatch: a caller writing a file must discard it then."""
    hasher = arrays.Digest(alg=ref.digest_alg)
    decoder = None
    if ref.codec is not None:
        decoder = Decoder(ref.codec, ref.dtype, ref.shape, ref.chunk_size, ref.array_name)
    seq = total = 0
    with conn.cursor(binary=True) as cur:
        for _, got, stored in cur.stream(
            query("array_chunks_stream"), {"array_ids": [ref.array_id]}
        ):
            if got != seq:
                raise PayloadCorrupt(f"array {ref.array_name!r} is missing chunk {seq}")
            hasher.update(stored)
            data = stored if decoder is None else decoder.decode(seq, stored)
            total += len(data)
            if total > ref.nbytes:
                raise PayloadCorrupt(f"array {ref.array_name!r} is longer than {ref.nbytes} bytes")
            seq += 1
            yield bytes(data)
    if seq != ref.n_chunks or total != ref.nbytes:
        raise PayloadCorrupt(
            f"array {ref.array_name!r} has {seq} of {ref.n_chunks} chunks, "
            f"{total} of {ref.nbytes} bytes"
        )
    if hasher.digest() != ref.digest:
        raise PayloadCorrupt(f"array {ref.array_name!r} fails its digest check")


def metrics(conn: Connection, run_id: int) -> list[dict[str, Any]]:
    """The run's round metrics (`{round, phase, metrics, num_replies, num_failures,
    recorded_at}`, by round then phase); NotFound if the role sees no such run."""
    store_runs.get(conn, run_id)
    return store_runs.round_metrics(conn, run_id)
