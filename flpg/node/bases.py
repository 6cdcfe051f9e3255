"""The arrays a top-k reply is a sparse delta against (flpg.reply-codec = "topk:F").

When a ClientApp process loads messages for a run whose replies are top-k deltas, it
keeps, per message, a copy of each float array as received together with its stored
id: the app may change the arrays it was given in place, but the ServerApp adds the
delta to the stored bytes, so the delta must be taken against exactly those. The
copies live until the message's reply is written (one model per message in flight).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from flpg.app.compressed import Base
from flpg.app.message import Message
from flpg.store import payloads as store_payloads
from flpg.store.db import Connection
from flpg.store.messages import MessageRow


class ReplyBases:
    """Per message id: `{(record name, array name): Base}` (thread-safe)."""

    def __init__(self) -> None:
        self._by_message: dict[int, dict[tuple[str, str], Base]] = {}
        self._lock = threading.Lock()

    def keep(self, conn: Connection, loaded: Sequence[tuple[MessageRow, Message]]) -> None:
        """Remember the float arrays of `loaded` messages (one query for their ids)."""
        refs = store_payloads.refs(conn, [row.id for row, _ in loaded])
        ids = {(r.message_id, r.record_name, r.array_name): r.array_id for r in refs}
        for row, message in loaded:
            kept: dict[tuple[str, str], Base] = {}
            for record_name, record in message.content.array_records.items():
                for array_name, array in record.items():
                    array_id = ids.get((row.id, record_name, array_name))
                    values = array.numpy()
                    if array_id is None or values.dtype.kind != "f":
                        continue
                    key = f"{row.dst_node_id}/{record_name}/{array_name}"
                    kept[(record_name, array_name)] = Base(array_id, values.copy(), key)
            with self._lock:
                self._by_message[row.id] = kept

    def take(self, message_id: int) -> dict[tuple[str, str], Base] | None:
        """The bases of one message, forgotten here (None if none were kept)."""
        with self._lock:
            return self._by_message.pop(message_id, None)
