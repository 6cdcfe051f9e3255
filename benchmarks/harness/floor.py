"""The raw PostgreSQL floor: the bytes of one round, moved by plain psycopg in one
process, with nothing else (no messages, no notifications, no ClientApp, no
aggregation arithmetic).

One round with N nodes and a payload of S bytes is

1. the payload written once (one transaction, 1 MiB `bytea` chunk rows with
   `executemany`, STORAGE EXTERNAL: the fastest write path in PERF-NOTES.md);
2. read N times (`cursor.stream(..., binary=True)` copied into a preallocated
   numpy buffer, the fastest read path);
3. N replies of S bytes written (one transaction each, as N nodes would);
4. the N replies read once.

`FloorSide.run(..., unlogged=True)` does the same with `CREATE UNLOGGED TABLE`
(no WAL for the rows): the floor of the durability class flpg uses for
round-transient payloads (replies, broadcasts no checkpoint needs), while the
logged table is the floor of checkpoints. Its outcome has variant `unlogged`.

All of it runs sequentially in the harness process over the cluster's unix socket,
in a fresh database of the same cluster flpg uses. Round times are
`time.perf_counter()` spans; the chunk table is truncated between rounds (not
timed). A system that reaches this time moves its payload at the speed of the
database itself: flpg's "% of floor" is floor time / flpg time.
"""

from __future__ import annotations

import time

import numpy as np
import psycopg

from harness.cluster import BenchCluster
from harness.procs import HarnessError, is_ours
from harness.results import Config, Outcome
from harness.rss import TreeSampler

CHUNK = 1 << 20
UNLOGGED = "unlogged"
"""The variant of the floor measured with an UNLOGGED chunk table."""

_SCHEMA = """
CREATE {unlogged}TABLE floor_chunks (
    blob_id bigint NOT NULL,
    seq integer NOT NULL,
    data bytea NOT NULL,
    PRIMARY KEY (blob_id, seq)
);
ALTER TABLE floor_chunks ALTER COLUMN data SET STORAGE EXTERNAL;
"""


def write_blob(
    conn: psycopg.Connection[tuple[object, ...]], blob_id: int, data: memoryview
) -> None:
    rows = [
        (blob_id, seq, data[off : off + CHUNK])
        for seq, off in enumerate(range(0, max(len(data), 1), CHUNK))
    ]
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany("INSERT INTO floor_chunks (blob_id, seq, data) VALUES (%s, %s, %b)", rows)


def read_blob(
    conn: psycopg.Connection[tuple[object, ...]],
    blob_id: int,
    out: np.ndarray[tuple[int], np.dtype[np.uint8]],
) -> int:
    offset = 0
    with conn.cursor(binary=True) as cur:
        for (chunk,) in cur.stream(
            "SELECT data FROM floor_chunks WHERE blob_id = %s ORDER BY seq", [blob_id]
        ):
            assert isinstance(chunk, bytes)
            n = len(chunk)
            out[offset : offset + n] = np.frombuffer(chunk, dtype=np.uint8)
            offset += n
    return offset


def one_round(
    conn: psycopg.Connection[tuple[object, ...]],
    payload: memoryview,
    nodes: int,
    out: np.ndarray[tuple[int], np.dtype[np.uint8]],
) -> float:
    began = time.perf_counter()
    write_blob(conn, 0, payload)
    for _ in range(nodes):
        if read_blob(conn, 0, out) != len(payload):
            raise HarnessError("floor: the payload read back has the wrong size")
    for node in range(1, nodes + 1):
        write_blob(conn, node, payload)
    for node in range(1, nodes + 1):
        if read_blob(conn, node, out) != len(payload):
            raise HarnessError("floor: a reply read back has the wrong size")
    return time.perf_counter() - began


class FloorSide:
    """Runs floor configurations on the invocation's cluster."""

    def __init__(self, cluster: BenchCluster) -> None:
        self.cluster = cluster
        self.counter = 0

    def run(self, config: Config, timeout: float, *, unlogged: bool = False) -> Outcome:
        """One configuration through a logged chunk table, or an UNLOGGED one."""
        outcome = Outcome("floor", config, variant=UNLOGGED if unlogged else "")
        began = time.monotonic()
        self.counter += 1
        db = f"floor_{self.counter}_{config.slug}" + ("_unlogged" if unlogged else "")
        url = self.cluster.create_database(db)
        sampler = TreeSampler()
        sampler.add("pg", self.cluster.postmaster_pid, mode="pss")
        sampler.start(is_ours)
        try:
            rng = np.random.default_rng(0)
            model = rng.random(max(config.nbytes // 4, 1), dtype=np.float32)
            payload = model.data.cast("B")
            out = np.empty(len(payload), dtype=np.uint8)
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(_SCHEMA.format(unlogged="UNLOGGED " if unlogged else ""))
                for _ in range(config.rounds):
                    outcome.round_seconds.append(one_round(conn, payload, config.nodes, out))
                    conn.execute("TRUNCATE floor_chunks")
                    if time.monotonic() - began > timeout:
                        raise TimeoutError
        except TimeoutError:
            outcome.status, outcome.reason = "timeout", f"timed out after {timeout:g} s"
        except (HarnessError, psycopg.Error) as exc:
            outcome.status, outcome.reason = "failed", str(exc)
        finally:
            outcome.rss_mib = sampler.stop()
            outcome.other_cpu = sampler.other_cpu
            self.cluster.drop_database(db)
            outcome.wall = time.monotonic() - began
        return outcome
