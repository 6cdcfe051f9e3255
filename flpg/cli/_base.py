"""What every command shares: the `--db` and `--format` options, resolving and
opening the database, and the one error handler.

Every failure (a usage error, an FlpgError, a database error translated by
`flpg.store.errors`) prints one line `flpg: error: ...` and exits with the code of
its class (see `flpg.errors`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from flpg.cli import options
from flpg.errors import FlpgError
from flpg.settings import DATABASE_URL_ENV, explicit_database_url
from flpg.store.db import Connection, connect
from flpg.store.errors import translated

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int) -> None:
    """Print `flpg: error: MESSAGE` as one line (whatever the message holds) and exit."""
    line = " ".join(part.strip() for part in message.splitlines() if part.strip())
    line = line.encode("utf-8", "backslashreplace").decode("utf-8")
    click.echo(f"flpg: error: {line or 'failed'}", err=True)
    sys.exit(code)


def handle_errors(fn: F) -> F:
    """Turn FlpgError (database errors translated first) into one line and its exit code."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with translated(explicit_database_url(kwargs.get("db"))):
                return fn(*args, **kwargs)
        except FlpgError as exc:
            fail(str(exc), exc.exit_code)
        return None

    return wrapper  # type: ignore[return-value]


_NoArgsIsHelp: type[click.UsageError] = getattr(
    click.exceptions, "NoArgsIsHelpError", type("_Never", (click.UsageError,), {})
)


class FlpgGroup(click.Group):
    """Click's usage errors, and FlpgErrors raised by option types, as one line."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        if not kwargs.get("standalone_mode", True):
            return super().main(*args, **kwargs)
        try:
            code = super().main(*args, **{**kwargs, "standalone_mode": False})
        except _NoArgsIsHelp as exc:  # `flpg` or `flpg db` alone: the help, as click shows it
            exc.show()
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
            fail(exc.format_message() + hint, 2)
        except click.ClickException as exc:
            fail(exc.format_message(), exc.exit_code)
        except click.Abort:
            fail("aborted", 130)
        except FlpgError as exc:
            fail(str(exc), exc.exit_code)
        sys.exit(code if isinstance(code, int) else 0)


db_option = click.option(
    "--db",
    "db",
    type=options.DATABASE_URL,
    metavar="URL",
    envvar=DATABASE_URL_ENV,
    help=f"PostgreSQL URL (default: ${DATABASE_URL_ENV}, else the embedded cluster).",
)
format_option = click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True
)


GROUP_DB = "flpg.group.db"
"""`ctx.meta` key: the `--db` given to a worker group (`flpg node`, `flpg link`,
`flpg exec`) before an admin subcommand such as `enroll`."""

_CREDENTIALS = "flpg.credentials"
_CREDENTIAL_KINDS = "flpg.credential_kinds"

ENROLLED_BY = {
    "node": "flpg node enroll",
    "user": "flpg user add",
    "link": "flpg link enroll",
    "exec": "flpg exec enroll",
    "auditor": "flpg auditor add",
}
"""The command that writes each kind of credential file."""


def credentials_option(*kinds: str) -> Callable[[F], F]:
    """`--credentials FILE`: connect as the role of a credential file of one of
    `kinds` (another kind is refused, exit 2) instead of `--db`."""

    def remember(ctx: click.Context, _: click.Parameter, value: Path | None) -> None:
        if value is not None:
            ctx.meta[_CREDENTIALS] = value
            ctx.meta[_CREDENTIAL_KINDS] = kinds

    made_by = " or ".join(f"`{ENROLLED_BY[k]}`" for k in kinds)
    return click.option(
        "--credentials",
        type=click.Path(path_type=Path, dir_okay=False),
        metavar="FILE",
        expose_value=False,
        callback=remember,
        help=f"Connect as the role of this credential file (from {made_by}) instead of --db.",
    )


def credentials_db_option(*kinds: str) -> Callable[[F], F]:
    """`--db` and `--credentials FILE` of one of `kinds` (one or the other)."""

    def decorate(command: F) -> F:
        return db_option(credentials_option(*kinds)(command))

    return decorate


def user_db_option(command: F) -> F:
    """`--db` and `--credentials FILE` (a user's own role, or an auditor's, which
    reads every run and may change none; one or the other)."""
    return credentials_db_option("user", "auditor")(command)


def _credentials_url() -> str | None:
    """The URL of `--credentials FILE` if the command was given one (UsageError when
    `--db` was given too; CredentialError, exit 2, when the file's kind does not fit
    the command)."""
    ctx = click.get_current_context(silent=True)
    path = None if ctx is None else ctx.meta.get(_CREDENTIALS)
    if path is None or ctx is None:
        return None
    if ctx.get_parameter_source("db") == ParameterSource.COMMANDLINE:
        raise click.UsageError("--credentials and --db each name a database; give one")
    from flpg.store.credentials import CredentialError, load_credentials, read_credentials

    kinds: tuple[str, ...] = ctx.meta.get(_CREDENTIAL_KINDS, ())
    cred = read_credentials(path)
    if kinds and cred.kind not in kinds:
        wanted = " or ".join(repr(k) for k in kinds)
        made_by = " or ".join(f"`{ENROLLED_BY[k]}`" for k in kinds)
        raise CredentialError(
            f"credential file {str(path)!r} is a {cred.kind!r} credential (role {cred.role}); "
            f"`{ctx.command_path}` needs a {wanted} credential (from {made_by})"
        )
    return load_credentials(path)


def credentials_node_name() -> str | None:
    """The node name recorded in the command's `--credentials FILE`, if it was given
    one of an enrolled node (CredentialError, exit 2, if the file cannot be read)."""
    ctx = click.get_current_context(silent=True)
    path = None if ctx is None else ctx.meta.get(_CREDENTIALS)
    if path is None:
        return None
    from flpg.store.credentials import read_credentials

    cred = read_credentials(path)
    return cred.node if cred.kind == "node" else None


def resolve_url(db: str | None) -> str:
    """The database URL to use, starting the embedded cluster if none was given."""
    return resolve_url_started(db)[0]


def resolve_url_started(db: str | None) -> tuple[str, bool]:
    """The database URL (of `--credentials` if given), and whether this call started
    the embedded cluster."""
    url = _credentials_url() or explicit_database_url(db)
    if url:
        return url, False
    from flpg.local.embedded import cluster

    embedded = cluster()
    was_running = embedded.status().running
    return embedded.ensure_running(), not was_running


def open_db(db: str | None) -> tuple[str, Connection]:
    """Resolve, migrate if needed, and connect."""
    from flpg.store.migrate import ensure_schema

    url = resolve_url(db)
    connect(url, application_name="flpg-cli").close()  # a clear error before migrating
    ensure_schema(url)
    return url, connect(url, application_name="flpg-cli")
