"""The flpg error tree.

Every failure flpg reports on purpose is an `FlpgError`. The CLI prints its
message as one line and exits with its `exit_code`.
"""

from __future__ import annotations


class FlpgError(Exception):
    """Root of all flpg errors; `str(err)` is a one-line, user-facing message."""

    exit_code = 1


class ConfigError(FlpgError):
    """A setting, a `k=v` string or an app's pyproject is malformed."""

    exit_code = 2


class AppError(FlpgError):
    """An app directory or bundle is missing, malformed, or does not import."""

    exit_code = 2


class DatabaseUnavailable(FlpgError):
    """The database cannot be reached (the message names the URL, never the password)."""

    exit_code = 3


class EmbeddedDatabaseError(FlpgError):
    """The embedded PostgreSQL cluster cannot be initialised, started or stopped."""

    exit_code = 3


class NotFound(FlpgError):
    """A run, node or message named by the user does not exist."""

    exit_code = 4


class InvalidState(FlpgError):
    """The request conflicts with the current state (e.g. stopping a finished run)."""

    exit_code = 5


class SelectionError(FlpgError):
    """A message was addressed to a node outside its run's node selection."""


class RecordError(FlpgError, TypeError):
    """A record holds a value it cannot carry (e.g. an object-dtype array)."""


class PayloadCorrupt(FlpgError):
    """A stored array payload is missing chunks or fails its length or hash check."""


class LeaseLost(InvalidState):
    """A worker no longer holds the claim on a message (its lease ran out or it ended)."""


class DuplicateReply(InvalidState):
    """An instruction already has its reply; the database allows only one."""


class StaleAttempt(InvalidState):
    """This ServerApp's run was restarted (or ended) meanwhile; another attempt owns it."""
