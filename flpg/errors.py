"""The flpg error tree.

Every failure flpg reports on purpose is an `FlpgError`. The CLI prints its
message as one line and exits with its `exit_code`:

- 2 bad input: an option, a `k=v` string, an app directory, a value the database
  cannot store;
- 3 the database is unreachable: cannot connect, or the connection was lost;
- 4 not found: a run or node named by the user, or a node selection matching none;
- 5 invalid state: the request conflicts with the current state;
- 6 the database refuses: its schema is not this flpg's, the role lacks a privilege,
  or the server declined (read-only, out of resources).

Code 1 is left for "the followed run did not finish" (`flpg run --stream`) and bugs.
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


class BadValue(FlpgError):
    """A value the database would reject (out of a column's range, unstorable text, too
    long) or did reject as invalid; the message names the option or key."""

    exit_code = 2


class NotFound(FlpgError):
    """A run, node or message named by the user does not exist."""

    exit_code = 4


class NodeNotFound(NotFound):
    """`--nodes` names a node that is not registered, or a node selection matches no node."""


class InvalidState(FlpgError):
    """The request conflicts with the current state (e.g. stopping a finished run)."""

    exit_code = 5


class DatabaseRefused(FlpgError):
    """The database is reachable but refuses the command (the message says why and what
    to do); nothing was written."""

    exit_code = 6


class SchemaMismatch(DatabaseRefused):
    """The database's schema is not one this flpg can use: a revision it does not know
    (a newer flpg's, or another application's), or tables flpg did not create."""


class PermissionDenied(DatabaseRefused):
    """The database role lacks a privilege the command needs."""


class SelectionError(FlpgError):
    """A message was addressed to a node outside its run's node selection (raised to
    the ServerApp; submissions raise NodeNotFound)."""

    exit_code = 4


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


class LockConflict(DatabaseRefused):
    """A statement gave up on a row lock another session holds; retrying may succeed."""


class Deadlock(LockConflict):
    """The database broke a deadlock by cancelling this session's statement."""


class LockTimeout(LockConflict):
    """A statement waited longer than the session's lock timeout on a row lock."""
