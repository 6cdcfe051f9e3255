"""What every long-running worker shares: an identity and a clean stop on signals."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import uuid


def worker_id(kind: str) -> str:
    """A unique id for one worker process, readable in `claimed_by` and `exec_id`."""
    return f"{kind}:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT (call from the main thread)."""
    stop = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        logging.getLogger("flpg").info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def setup_logging(verbose: bool = False) -> None:
    """Worker logs: one line per event on stderr, with time and process."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
