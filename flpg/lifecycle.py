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
    # The pool's own reconnection attempts run on its threads and can log after the
    # worker's one-line error; the worker reports connection failures itself.
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)


_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_memory(mmap_threshold: int = 4 << 20, trim_threshold: int = 16 << 20) -> bool:
    """Make glibc's malloc keep freed payload buffers for reuse instead of returning
    them to the kernel; returns whether it could (False off glibc: a no-op).

    Every stored chunk passes through a few 1 MiB buffers (libpq's result, the Python
    bytes). By default glibc hands freed ones back to the kernel (trims the heap, or
    unmaps them) and faults zeroed pages in again for the next chunk: with 8 ClientApps
    and a ServerApp moving 128 MB each, zeroing those pages took a quarter of a
    2-CPU machine (perf). Fixed thresholds keep up to `trim_threshold` bytes of freed
    heap for the next chunks; allocations above `mmap_threshold` (whole arrays) are
    still mapped and unmapped on their own. Call it first thing in a process that
    moves payloads (the ServerApp, a ClientApp process)."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return False
    done = mallopt(_M_MMAP_THRESHOLD, mmap_threshold) == 1
    return bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold) == 1 and done)
