"""What ends a node worker's wait: a NOTIFY on one of its nodes' channels, a run's
submission (the exec channel, when it starts processes ahead), or `wake()` from
another thread (a ClientApp process answered, so a slot may be free)."""

from __future__ import annotations

import contextlib
import os
import select
import threading

from flpg.states import EXEC_CHANNEL, node_channel
from flpg.store.db import Listener


class Wakeup:
    """A LISTEN connection on the nodes' channels and a pipe that `wake` writes to."""

    def __init__(self, url: str, node_ids: list[int], *, submissions: bool) -> None:
        channels = [node_channel(i) for i in node_ids]
        if submissions:
            channels.append(EXEC_CHANNEL)
        self.listener = Listener(url, channels, application_name="flpg-node-listen")
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        self._submitted: set[int] = set()

    def wake(self) -> None:
        """End the current (or next) `wait` early; safe from any thread, and after close."""
        if self._write < 0:
            return
        with contextlib.suppress(OSError):  # full: already woken; closed: stopped
            os.write(self._write, b"x")

    def wait(self, timeout: float, stop: threading.Event) -> bool:
        """Wait up to `timeout` s for a NOTIFY or a wake-up; True if a node's NOTIFY
        (or a reconnect of the LISTEN connection, which may have missed one) came.
        Run submissions are collected for `submitted`."""
        listener = self.listener
        if listener.conn.closed or listener.conn.broken:
            listener.wait(timeout, stop)  # reconnects
            return True
        try:
            ready, _, _ = select.select([listener.fileno(), self._read], [], [], timeout)
        except (OSError, ValueError):
            return True
        if self._read in ready:
            with contextlib.suppress(BlockingIOError):
                while os.read(self._read, 4096):
                    pass
        if listener.fileno() in ready:
            notes = listener.wait(0.0)  # drains
            for note in notes:
                if note.channel == EXEC_CHANNEL:
                    with contextlib.suppress(ValueError):
                        self._submitted.add(int(note.payload))
            # A node's notification, or a reconnect (nothing drained): claim either way.
            return not notes or any(n.channel != EXEC_CHANNEL for n in notes)
        return False

    def submitted(self) -> list[int]:
        """The runs submitted since the last call, in id order."""
        runs, self._submitted = sorted(self._submitted), set()
        return runs

    def close(self) -> None:
        self.listener.close()
        read, write = self._read, self._write
        self._read = self._write = -1
        os.close(read)
        os.close(write)
