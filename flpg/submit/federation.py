"""`flpg run APP [FEDERATION]`: the federations an app's pyproject declares, as Flower's.

Flower's `flwr run . local-simulation` names a table of `[tool.flwr.federations]`
(`default = "NAME"` picks one when none is named). flpg reads the same table (or
`[tool.flpg.federations]`, which wins when both exist) and maps what fits a federation
that lives in PostgreSQL:

- `address` a PostgreSQL URL (`postgresql://...`): that database;
- `address` the path of an flpg user's credential file (from `flpg user add`; a
  relative path starts at the app directory): that user's role and database;
- no `address` (Flower's simulation federations, `options.num-supernodes = N`): the
  default database (`--db`, `$FLPG_DATABASE_URL`, else the embedded cluster);
- `address` anything else (a SuperLink's `host:port`): refused, one line.

Flower's other keys (`insecure`, `root-certificates`, `options.*`, ...) are not used:
TLS settings belong in the URL or come with the credential file, and the size of a
local federation is `flpg up --nodes N`.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flpg.errors import ConfigError

__all__ = ["Federation", "choose_federation", "federation_url"]

_TABLES = ("tool.flpg.federations", "tool.flwr.federations")  # first found wins
_URL_SCHEMES = ("postgresql://", "postgres://")
CREDENTIAL_KINDS = ("user",)


class FederationError(ConfigError):
    """FEDERATION is not declared, or its table cannot be used (exit 2)."""


@dataclass(frozen=True)
class Federation:
    """One federation of an app's pyproject, as flpg uses it."""

    name: str
    address: str | None
    """Its `address`, None for a federation without one (simulation)."""
    where: str
    """`federation 'NAME' of PATH`, for messages."""
    app_dir: Path


def _table(doc: dict[str, Any], dotted: str) -> Any:
    value: Any = doc
    for key in dotted.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _declared(app_dir: Path) -> tuple[str, dict[str, Any]]:
    """`([header], table)` of the app's federations; an empty table if it has none.
    ConfigError for a pyproject that cannot be read as TOML (one line)."""
    path = app_dir / "pyproject.toml"
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read the federations of {path}: {exc}") from None
    for dotted in _TABLES:
        table = _table(doc, dotted)
        if table is not None:
            if not isinstance(table, dict):
                raise FederationError(f"{path}: [{dotted}] must be a table")
            return f"[{dotted}]", table
    return f"[{_TABLES[1]}]", {}


def choose_federation(app_dir: Path, name: str | None) -> Federation | None:
    """The federation `name` of the app in `app_dir`, else its pyproject's `default`;
    None when no name is given and no default is declared. FederationError (one line,
    naming the federations that exist) for a name the pyproject does not declare."""
    header, table = _declared(app_dir)
    path = app_dir / "pyproject.toml"
    names = sorted(k for k, v in table.items() if k != "default" and isinstance(v, dict))
    chosen = name
    if chosen is None:
        default = table.get("default")
        if default is None:
            return None
        if not isinstance(default, str):
            raise FederationError(f"{path}: {header} default must be a federation's name")
        chosen = default
    if chosen not in names:
        what = "FEDERATION" if name is not None else f"{header} default"
        raise FederationError(
            f"{what} {chosen!r} is not declared in {header} of {path} "
            f"(federations: {', '.join(names) or 'none'})"
        )
    address = table[chosen].get("address")
    where = f"federation {chosen!r} of {path}"
    if address is not None and (not isinstance(address, str) or not address.strip()):
        raise FederationError(f"{where}: address must be a non-empty string")
    return Federation(chosen, address, where, app_dir)


def federation_url(federation: Federation) -> str | None:
    """The database URL `federation` names (None: the default database).
    FederationError (one line) for an address flpg cannot use; CredentialError for a
    credential file that cannot be read or is not a user's."""
    address = federation.address
    if address is None:
        return None
    if address.startswith(_URL_SCHEMES):
        from flpg.store.db import redact, url_problem

        problem = url_problem(address)
        if problem is not None:
            raise FederationError(
                f"{federation.where}: address {redact(address)} is not a PostgreSQL URL: "
                f"{redact(problem)}"
            )
        return address
    path = Path(address).expanduser()
    if not path.is_absolute():
        path = federation.app_dir / path
    if not path.is_file():
        raise FederationError(
            f"{federation.where}: address {address!r} is neither a PostgreSQL URL "
            "(postgresql://...) nor an flpg credential file (a Flower SuperLink address "
            "cannot be used: flpg's federation is its database)"
        )
    from flpg.store.credentials import CredentialError, load_credentials, read_credentials

    cred = read_credentials(path)
    if cred.kind not in CREDENTIAL_KINDS:
        raise CredentialError(
            f"{federation.where}: credential file {str(path)!r} is a {cred.kind!r} "
            "credential; submitting a run needs a 'user' credential (from `flpg user add`)"
        )
    return load_credentials(path)
