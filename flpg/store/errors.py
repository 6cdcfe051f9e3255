"""Database errors in flpg's terms: a psycopg error becomes an FlpgError by SQLSTATE.

Callers outside the store (the CLI) wrap their work in `translated()` and handle
only FlpgError. By SQLSTATE:

- 08xxx (connection), 57P01-57P03 (server shutting down), 53300 (too many
  connections), or no SQLSTATE (connection lost): DatabaseUnavailable, exit 3;
- 22xxx (data exception; also psycopg's own DataError, e.g. a NUL in text),
  54xxx (program limit exceeded): BadValue, exit 2;
- 23xxx (integrity constraint violation): InvalidState, exit 5;
- 42501 (insufficient privilege): PermissionDenied, exit 6;
- 28P01, 28000 with a refused password or an unknown role (a revoked credential,
  or a wrong password): CredentialRefused, exit 6, naming the role;
- 42P01, 42703, 42704, 42883 (undefined table, column, type, function):
  SchemaMismatch, exit 6;
- anything else (read-only, out of space, cancelled, internal): DatabaseRefused, exit 6.
"""

from __future__ import annotations

import contextlib
import getpass
import os
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import psycopg.conninfo

from flpg.errors import (
    BadValue,
    DatabaseRefused,
    DatabaseUnavailable,
    FlpgError,
    InvalidState,
    PermissionDenied,
    SchemaMismatch,
)

_UNAVAILABLE = {"57P01", "57P02", "57P03", "53300"}
_UNDEFINED = {"42P01", "42703", "42704", "42883"}


def _detail(exc: psycopg.Error) -> str:
    """The server's one-line message, else the last line of the error text."""
    primary = (exc.diag.message_primary or "").strip()
    if primary:
        return primary.splitlines()[0]
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(exc).__name__


def role_of(exc: psycopg.Error, url: str | None = None) -> str:
    """The database role of the failed connection, for messages: the connection's
    user if psycopg kept it, else the user `url` (or libpq's defaults) names."""
    user = exc.pgconn.user.decode(errors="replace") if exc.pgconn is not None else None
    if not user and url is not None:
        with contextlib.suppress(psycopg.Error):
            user = psycopg.conninfo.conninfo_to_dict(url).get("user")  # type: ignore[assignment]
        user = user or os.environ.get("PGUSER") or getpass.getuser()
    return f"role {user!r}" if user else "the role"


class CredentialRefused(PermissionDenied):
    """The server refused the login: the role was revoked (dropped) or its password
    is wrong (exit 6)."""


_AUTH_STATES = {"28P01", "28000"}


def credential_refused(exc: psycopg.Error, url: str | None = None) -> CredentialRefused | None:
    """The one-line CredentialRefused for a login the server refused (a password it
    rejected, a role that does not exist, one without CONNECT), else None."""
    text = str(exc)
    if exc.sqlstate is not None and exc.sqlstate not in _AUTH_STATES:
        return None
    if "User does not have CONNECT privilege" in text:
        return CredentialRefused(
            f"{role_of(exc, url)} may not connect to this database: it is not an flpg "
            "role (enrol it, or connect with a credential file flpg wrote)"
        )
    if "password authentication failed for user" not in text and not (
        'role "' in text and "does not exist" in text
    ):
        return None
    user: str | None = None
    if url is not None:
        with contextlib.suppress(psycopg.Error):
            user = psycopg.conninfo.conninfo_to_dict(url).get("user")  # type: ignore[assignment]
    role = user or role_of(exc, url).removeprefix("role ").strip("'")
    return CredentialRefused(
        f"credential for role {role} was refused: revoked, or the password is wrong"
    )


def translate(exc: psycopg.Error, url: str | None = None) -> FlpgError:
    """The FlpgError that says what went wrong (see above); `url` (the database's)
    names the role in a privilege error."""
    refused = credential_refused(exc, url)
    if refused is not None:
        return refused
    state = exc.sqlstate or ""
    detail = _detail(exc)
    code = f" (SQLSTATE {state})" if state else ""
    if (not state and isinstance(exc, psycopg.OperationalError)) or (
        state.startswith("08") or state in _UNAVAILABLE
    ):
        return DatabaseUnavailable(f"database connection failed: {detail}")
    if state.startswith("22") or (not state and isinstance(exc, psycopg.DataError)):
        return BadValue(f"the database rejected a value: {detail}{code}")
    if state.startswith("54"):
        return BadValue(f"the database refused a value as too large or complex: {detail}{code}")
    if state.startswith("23"):
        return InvalidState(f"the database refused the change: {detail}{code}")
    if state == "42501":
        return PermissionDenied(
            f"{role_of(exc, url)} lacks a privilege this command needs: {detail}; ask the "
            "database's owner to grant it, or connect as a role that has it (--db)"
        )
    if state in _UNDEFINED:
        return SchemaMismatch(
            f"the database schema is not the one this flpg expects: {detail}; "
            "run `flpg db upgrade`, or point --db at flpg's own database"
        )
    if state == "25006":
        return DatabaseRefused(
            f"the database is read-only ({detail}); point --db at the primary server"
        )
    return DatabaseRefused(f"the database refused the command: {detail}{code}")


@contextmanager
def translated(url: str | None = None) -> Iterator[None]:
    """Run the block; a psycopg error raised in it is re-raised as its FlpgError."""
    try:
        yield
    except psycopg.Error as exc:
        raise translate(exc, url) from exc
