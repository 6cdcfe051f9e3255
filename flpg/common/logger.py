"""`log(level, msg, *args)`, shaped like Flower's `flwr.common.logger.log`.

Records go to the logger `flpg.app`, which writes `LEVEL : message` lines of level
INFO and above to the process's stderr at the time of the call (in app processes
flpg streams that into the run's log) and does not pass them on to the root logger.
"""

from __future__ import annotations

import logging
import sys

__all__ = ["LOGGER_NAME", "log", "logger"]

LOGGER_NAME = "flpg.app"


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is when a record is emitted."""

    def emit(self, record: logging.LogRecord) -> None:
        self.setStream(sys.stderr)
        super().emit(record)


logger = logging.getLogger(LOGGER_NAME)
logger.setLevel(logging.DEBUG)
logger.propagate = False
if not logger.handlers:
    _handler = _StderrHandler(sys.stderr)
    _handler.setLevel(logging.INFO)
    _handler.setFormatter(logging.Formatter("%(levelname)-8s: %(message)s"))
    logger.addHandler(_handler)

log = logger.log
"""`log(level, msg, *args)`: one record of `level` (e.g. `logging.INFO`), `%`-formatted."""
