"""Credential files: how an enrolled node or user connects as its own login role.

A credential file is JSON, written with mode 0600 by `flpg node enroll` / `flpg
user add`:

    {"flpg_credential": 1, "url": "postgresql://ROLE:PASSWORD@HOST:PORT/flpg?...",
     "role": "flpg_node_...", "kind": "node", "node": "hospital-a", "user": null,
     "ca_cert": "-----BEGIN CERTIFICATE-----..." or null}

Over TCP the URL has `sslmode=verify-full`, and `ca_cert` holds the cluster CA's
certificate; `load_credentials` writes it beside the file (`FILE.ca.crt`) when
missing or different, and points the URL's `sslrootcert` at it, so the one file
can be copied to another machine. On the cluster's own machine the URL names the
unix socket and `ca_cert` is null.

Every problem with a file raises `CredentialError` (exit code 2) with one line.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import psycopg.conninfo

from flpg.errors import ConfigError

FORMAT_VERSION = 1
REQUIRED = ("url", "role", "kind")


class CredentialError(ConfigError):
    """A credential file is missing, unreadable, malformed or lacks a field (exit 2)."""


@dataclass(frozen=True)
class Credentials:
    """What a credential file holds."""

    url: str
    role: str
    kind: str
    node: str | None = None
    user: str | None = None
    ca_cert: str | None = None


def role_url(params: dict[str, Any], role: str, password: str) -> str:
    """A libpq URL for `role` with `params` (host, port, dbname, sslmode, ...)."""
    rest = {k: str(v) for k, v in params.items() if v not in (None, "")}
    host, port = rest.pop("host", ""), rest.pop("port", "")
    dbname = rest.pop("dbname", "")
    netloc = f"{quote(role, safe='')}:{quote(password, safe='')}@"
    if host and not host.startswith("/") and "," not in host:
        netloc += f"[{host}]" if ":" in host else host
        netloc += f":{port}" if port else ""
    else:
        rest = {**({"host": host} if host else {}), **({"port": port} if port else {}), **rest}
    query = f"?{urlencode(rest, quote_via=quote)}" if rest else ""
    return f"postgresql://{netloc}/{quote(dbname, safe='')}{query}"


def ca_path(path: Path) -> Path:
    """Where the CA certificate of credential file `path` is kept."""
    return path.with_name(path.name + ".ca.crt")


def write_credentials(path: Path, cred: Credentials) -> None:
    """Write `cred` to `path` (mode 0600, replacing it atomically), and its CA
    certificate, if any, beside it (mode 0644)."""
    body = json.dumps({"flpg_credential": FORMAT_VERSION, **asdict(cred)}, indent=2) + "\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(body)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if cred.ca_cert:
        _write_ca(ca_path(path), cred.ca_cert)


def _write_ca(path: Path, pem: str) -> None:
    try:
        if path.read_text() == pem:
            return
    except OSError:
        pass
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(pem)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def read_credentials(path: Path | str) -> Credentials:
    """The credentials in `path`; CredentialError (one line) if it cannot be used."""
    path = Path(path)
    where = f"credential file {str(path)!r}"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CredentialError(f"{where} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise CredentialError(f"cannot read {where}: {reason}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CredentialError(f"{where} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(data, dict):
        raise CredentialError(f"{where} is malformed: expected a JSON object")
    missing = [f for f in REQUIRED if not isinstance(data.get(f), str) or not data[f]]
    if missing:
        raise CredentialError(f"{where} lacks the field(s) {', '.join(missing)}")
    optional = {f: data.get(f) for f in ("node", "user", "ca_cert")}
    wrong = [f for f, v in optional.items() if v is not None and not isinstance(v, str)]
    if wrong:
        raise CredentialError(f"{where} is malformed: {', '.join(wrong)} must be text or null")
    return Credentials(url=data["url"], role=data["role"], kind=data["kind"], **optional)


def load_credentials(path: Path | str) -> str:
    """The connection URL of credential file `path` (see the module's docstring);
    CredentialError (one line, exit 2) if the file is missing, unreadable,
    malformed or lacks a field."""
    path = Path(path)
    cred = read_credentials(path)
    if not cred.ca_cert:
        return cred.url
    ca = ca_path(path.resolve())
    try:
        _write_ca(ca, cred.ca_cert)
    except OSError as exc:
        raise CredentialError(
            f"cannot write the CA certificate {str(ca)!r}: {exc.strerror}"
        ) from None
    sep = "&" if "?" in cred.url else "?"
    return f"{cred.url}{sep}sslrootcert={quote(str(ca), safe='')}"


def url_params(url: str) -> dict[str, Any]:
    """The connection parameters of libpq `url` (URL or key=value string)."""
    params: dict[str, Any] = psycopg.conninfo.conninfo_to_dict(url)
    return params


def login_params(admin_url: str) -> dict[str, Any]:
    """The connection parameters of `admin_url` (URL or key=value string), without
    its user and password: what a role's credential starts from."""
    params = url_params(admin_url)
    for key in ("user", "password", "passfile"):
        params.pop(key, None)
    return params
