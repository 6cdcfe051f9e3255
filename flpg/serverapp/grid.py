"""Grid: the ServerApp's handle on the federation, backed by the database.

Mirrors Flower's Grid: `run`, `get_node_ids`, `create_message`, `push_messages`,
`pull_messages`, `send_and_receive`; adds `receive` (replies one at a time as
they arrive, for streaming aggregation) and `wait_for_nodes`. Message ids are str
outward, as Flower types them (the row's integer id in decimal), and taken back
as str (or int) by every method that accepts ids.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from flpg import bus
from flpg.app.message import DEFAULT_TTL, Message
from flpg.app.records import Array, ArrayRecord, MetricRecord, RecordDict
from flpg.errors import FlpgError, NotFound
from flpg.serverapp.runinfo import Run, from_stored
from flpg.states import run_channel
from flpg.store import checkpoints as store_checkpoints
from flpg.store import messages as store_messages
from flpg.store import runs as store_runs
from flpg.store.db import Connection, Listener, Session
from flpg.store.payloads import DEFAULT_CHUNK_SIZE, ArrayRef, Chunks
from flpg.store.recordjson import records_to_json
from flpg.store.storedarray import StoredArray


class NodesUnavailable(FlpgError):
    """Fewer nodes than required came online within the timeout."""


MessageId = str | int
"""A message id as a Grid takes it: Flower's str (what `push_messages` returns) or
the row's int."""


def row_ids(message_ids: Iterable[MessageId], run_id: int) -> list[int]:
    """The row ids of `message_ids`; NotFound (one line) for one that cannot be a
    message of run `run_id` (not a positive decimal integer)."""
    out = []
    for value in message_ids:
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            out.append(value)
        elif isinstance(value, str) and value.isascii() and value.isdecimal() and int(value) > 0:
            out.append(int(value))
        else:
            raise NotFound(
                f"message id {value!r} is not one of run {run_id}'s messages "
                "(ids are the strings push_messages returns)"
            )
    return out


@dataclass(frozen=True)
class Checkpoint:
    """A run's state after its last completed round, as a ServerApp saved it."""

    round: int
    arrays: ArrayRecord
    metrics: dict[str, Any]
    attempt: int
    """The attempt that saved it."""


class Grid:
    """One run's view of the federation: its selected, online nodes and its messages.

    Holds two connections: one for queries, one dedicated to LISTEN on the run's
    reply channel (opened before anything is sent, so no wake-up is missed).
    """

    def __init__(
        self,
        url: str,
        run_id: int,
        *,
        attempt: int | None = None,
        poll: float = 2.0,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        self._run_id = run_id
        self._poll = poll
        self._chunk_size = chunk_size
        self._session = Session(url, application_name=f"flpg-serverapp-{run_id}", hot=True)
        self._listener = Listener(
            url, [run_channel(run_id)], application_name=f"flpg-serverapp-{run_id}-listen"
        )
        self._attempt = attempt or store_runs.get(self._session.conn, run_id).attempt

    @property
    def run_id(self) -> int:
        """The id of the run this grid serves."""
        return self._run_id

    @property
    def run(self) -> Run:
        """The run's details as Flower's `Grid.run` gives them (read now: its status
        and times are current)."""
        return from_stored(self._session.call(lambda c: store_runs.get(c, self._run_id)))

    @property
    def attempt(self) -> int:
        """1 on the run's first launch; one more after each restart or resume."""
        return self._attempt

    def get_node_ids(self) -> list[int]:
        """The run's selected nodes that are online now, ascending."""
        return self._session.call(lambda c: store_runs.online_node_ids(c, self._run_id))

    def wait_for_nodes(self, min_nodes: int, timeout: float) -> list[int]:
        """Wait until at least `min_nodes` selected nodes are online.

        Raises NodesUnavailable after `timeout` s with how many were online.
        """
        deadline = time.monotonic() + timeout
        while True:
            node_ids = self.get_node_ids()
            if len(node_ids) >= min_nodes:
                return node_ids
            if time.monotonic() >= deadline:
                raise NodesUnavailable(
                    f"run {self._run_id} needs {min_nodes} online node(s) of its selection but "
                    f"only {len(node_ids)} were online after {timeout:g} s"
                )
            time.sleep(min(0.25, max(deadline - time.monotonic(), 0.0)))

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        """A new instruction of this run for `dst_node_id` (not sent until pushed);
        `ttl` None is `DEFAULT_TTL`, as in Flower."""
        message = Message(
            content,
            dst_node_id=dst_node_id,
            message_type=message_type,
            ttl=ttl if ttl is not None else DEFAULT_TTL,
            group_id=group_id,
        )
        message.metadata.run_id = self._run_id
        return message

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        """Send instructions; returns their ids (str, as each `metadata.message_id`).
        Raises SelectionError (nothing sent) if any destination is outside the run's
        node selection. Sent once, even when the connection drops and the send is
        retried (one send key for all tries)."""
        batch = list(messages)
        key = uuid.uuid4().hex
        sent = self._session.call(
            lambda c: bus.send(c, self._run_id, batch, self._chunk_size, send_key=key)
        )
        return [str(message_id) for message_id in sent]

    def pull_messages(self, message_ids: Iterable[MessageId]) -> list[Message]:
        """The replies that have arrived for the given instructions (each returned once).
        NotFound for an id that cannot be one of the run's messages; the id of another
        run's message returns nothing."""
        return self._pull(row_ids(message_ids, self._run_id), again=False)

    def _pull(self, ids: list[int], *, again: bool, stored: bool = False) -> list[Message]:
        """Take the replies to `ids`; with `again`, also those taken before, so that a
        retry after a lost connection cannot lose a reply (the caller deduplicates).
        With `stored`, their arrays stay in the database until used (`Array.stored`)."""
        source = self._source if stored else None

        def pull(conn: Connection) -> list[Message]:
            taken = store_messages.pull_replies(conn, self._run_id, ids, again=again)
            return bus.load(conn, taken, source)

        return self._session.call(pull)

    def _source(self, ref: ArrayRef, chunks: Chunks | None = None) -> StoredArray:
        return StoredArray(self._session, self._run_id, ref, chunks)

    def _stored(self, refs: Sequence[ArrayRef]) -> ArrayRecord:
        return ArrayRecord(
            {ref.array_name: Array.stored(ref.dtype, ref.shape, self._source(ref)) for ref in refs}
        )

    def receive(
        self, message_ids: Iterable[MessageId], *, timeout: float | None = None
    ) -> Iterator[Message]:
        """Yield replies to `message_ids` as they arrive, until all arrived or `timeout` s.

        Woken by NOTIFY, with a slow poll as a safety net. Replies that do not arrive
        in time are simply not yielded (their instructions expire at their TTL).
        The replies' arrays are *stored* (`Array.stored`): they are read when used,
        so a consumer that handles one reply at a time holds one in memory at most,
        and a streaming aggregator reads them chunk by chunk. Use them within
        FLPG_PAYLOAD_GRACE seconds (default 60) of receiving them.
        Each reply to `message_ids` is yielded once, even one an earlier
        `pull_messages` returned, and none is lost if the database connection drops
        (the grid reconnects and asks again). NotFound (before anything is read) for
        an id that cannot be one of the run's messages.
        """
        pending = set(row_ids(message_ids, self._run_id))
        deadline = None if timeout is None else time.monotonic() + timeout
        while pending:
            for reply in self._pull(sorted(pending), again=True, stored=True):
                pending.discard(int(reply.metadata.reply_to_message_id or 0))
                yield reply
            if not pending:
                return
            wait = self._poll
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                wait = min(wait, remaining)
            self._listener.wait(wait)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        """Push `messages` and wait up to `timeout` s for their replies (error replies
        included); returns the replies that arrived."""
        ids = self.push_messages(messages)
        return list(self.receive(ids, timeout=timeout))

    def reject_replies(self, rejections: Sequence[tuple[MessageId, str]]) -> None:
        """Record on each reply `(message id, reason)` why it was left out of a round
        (ids as `metadata.message_id` gives them; NotFound, nothing recorded, for an id
        that cannot be one of the run's messages)."""
        if rejections:
            ids = row_ids([message_id for message_id, _ in rejections], self._run_id)
            batch = [(i, reason) for i, (_, reason) in zip(ids, rejections, strict=True)]
            self._session.call(lambda c: store_messages.reject_replies(c, self._run_id, batch))

    def record_round(
        self,
        server_round: int,
        phase: str,
        metrics: MetricRecord | None,
        *,
        num_replies: int = 0,
        num_failures: int = 0,
    ) -> None:
        """Store one round's aggregated metrics so SQL and `flpg ls` can see them."""
        doc: dict[str, Any] = records_to_json({"m": metrics or MetricRecord()})["m"]
        self._session.call(
            lambda c: store_runs.record_round(
                c, self._run_id, server_round, phase, doc, num_replies, num_failures
            )
        )

    def save_checkpoint(
        self, server_round: int, arrays: ArrayRecord, metrics: dict[str, Any] | None = None
    ) -> ArrayRecord:
        """Store `arrays` and JSON `metrics` as the run's state after `server_round`,
        replacing the previous checkpoint (a restarted run continues from here).

        Returns the arrays as stored (`Array.stored`): sending them, or saving them
        again, references the stored bytes instead of writing them again. Arrays
        that are already stored for this run (and unchanged) are not written again.
        One transaction (checkpoints send no NOTIFY). Raises StaleAttempt, having
        written nothing, if the run was restarted or ended meanwhile.
        """
        content = [RecordDict({"checkpoint": arrays})]
        # Arrays written now are durable; only stored ones kept from a reply or a
        # broadcast can be round-transient and need moving.
        promote = any(
            isinstance(a.source, StoredArray) and not a.source.ref.durable for a in arrays.values()
        )

        def save(conn: Connection) -> ArrayRecord:
            with conn.transaction():  # one commit; a stale attempt writes nothing at all
                links = bus.write_arrays(
                    conn, self._run_id, content, self._chunk_size, durable=True
                )[0]
                store_checkpoints.save(
                    conn,
                    self._run_id,
                    self._attempt,
                    server_round,
                    [(link.array_name, link.array_id) for link in links],
                    metrics or {},
                    promote=promote,
                )
                return self._stored(store_checkpoints.array_refs(conn, self._run_id))

        return self._session.call(save)

    def load_checkpoint(self) -> Checkpoint | None:
        """The run's last saved checkpoint (from this or an earlier attempt), if any.

        Its arrays are stored (`Array.stored`): they are read when used.
        """

        def load(conn: Connection) -> Checkpoint | None:
            stored = store_checkpoints.get(conn, self._run_id)
            if stored is None:
                return None
            arrays = self._stored(store_checkpoints.array_refs(conn, self._run_id))
            return Checkpoint(stored.round, arrays, dict(stored.metrics), stored.attempt)

        return self._session.call(load)

    def close(self) -> None:
        """Close both connections."""
        self._listener.close()
        self._session.close()
