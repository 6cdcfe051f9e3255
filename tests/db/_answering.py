"""Threaded stand-ins for node workers: claim a run's instructions for some node ids
as they arrive (woken by LISTEN) and answer each with `answer`, which a test defines."""

from __future__ import annotations

import threading

from flpg import bus
from flpg.app.message import Message
from flpg.states import node_channel
from flpg.store import messages as store_messages
from flpg.store.db import Connection, Listener, connect


class AnsweringNodes(threading.Thread):
    """Claims the instructions of `node_ids` until `stop` is set and passes each to
    `answer`; anything raised ends the thread and is kept in `errors`."""

    def __init__(self, url: str, node_ids: list[int], name: str) -> None:
        super().__init__(daemon=True)
        self.url, self.node_ids, self.label = url, node_ids, name
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        channels = [node_channel(n) for n in node_ids]
        self.listener = Listener(url, channels, application_name=f"{name}-listen")

    def run(self) -> None:
        try:
            with connect(self.url, application_name=self.label) as conn:
                while not self.stop.is_set():
                    rows = store_messages.claim(
                        conn, worker="t", node_ids=self.node_ids, lease=30, limit=10
                    )
                    if not rows:
                        self.listener.wait(2.0)
                    for msg in bus.load(conn, rows):
                        self.answer(conn, msg)
        except BaseException as exc:
            self.errors.append(exc)
        finally:
            self.listener.close()

    def answer(self, conn: Connection, msg: Message) -> None:
        """Reply to one claimed instruction (a test's subclass says how)."""
        raise NotImplementedError
