"""TLS material for serving the embedded cluster over TCP: a private CA and a server
certificate it signs.

Files, under one directory (``root/tls`` of the cluster)::

    ca.crt       the CA certificate clients trust (sslrootcert), mode 0644
    ca.key       the CA key, mode 0600, owned by the account flpg runs as
    server.crt   the server certificate (SANs: the names it is reached by), mode 0644
    server.key   the server key, mode 0600, owned by the server account

The CA is kept as long as it is valid (clients keep trusting it); the server
certificate is reissued when it lacks a requested name, does not match its key or
the CA, or expires within `RENEW_BEFORE`.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from flpg.errors import EmbeddedDatabaseError
from flpg.local.account import Account, chown

__all__ = [
    "CA_LIFETIME",
    "RENEW_BEFORE",
    "SERVER_LIFETIME",
    "TlsFiles",
    "ca_valid",
    "cert_names",
    "ensure_tls",
    "new_ca",
    "new_server_cert",
    "san_names",
    "server_cert_valid",
]

CA_LIFETIME = dt.timedelta(days=3650)
SERVER_LIFETIME = dt.timedelta(days=397)
RENEW_BEFORE = dt.timedelta(days=30)
"""A certificate expiring within this is replaced."""

_ALWAYS = ("localhost", "127.0.0.1")
_WILDCARDS = ("", "*", "0.0.0.0", "::")

Key = ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class TlsFiles:
    """Where the CA and server files are; `renewed` tells whether this call wrote any."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    renewed: bool = False

    @classmethod
    def under(cls, directory: Path, renewed: bool = False) -> TlsFiles:
        """The files' paths in `directory`."""
        return cls(
            directory / "ca.crt",
            directory / "ca.key",
            directory / "server.crt",
            directory / "server.key",
            renewed,
        )


def cert_names(host: str, extra: Iterable[str] = ()) -> tuple[str, ...]:
    """The names a server listening on `host` is reached by, without duplicates.

    `host` itself (for a wildcard address: this machine's host name and FQDN), then
    `extra`, then ``localhost`` and ``127.0.0.1``.
    """
    first = [socket.gethostname(), socket.getfqdn()] if host in _WILDCARDS else [host]
    names: list[str] = []
    for name in [*first, *extra, *_ALWAYS]:
        name = name.strip().lower()
        if name and name not in names:
            names.append(name)
    return tuple(names)


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def san_names(cert: x509.Certificate) -> set[str]:
    """The DNS names and IP addresses of `cert`'s subjectAltName (lower case)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    dns = {n.lower() for n in san.get_values_for_type(x509.DNSName)}
    return dns | {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "flpg"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64]),
        ]
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def new_ca(
    now: dt.datetime, common_name: str = "flpg embedded cluster CA"
) -> tuple[Key, x509.Certificate]:
    """A new CA key and its self-signed certificate, valid from `now` for `CA_LIFETIME`."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(common_name)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def new_server_cert(
    ca_key: Key, ca_cert: x509.Certificate, names: Sequence[str], now: dt.datetime
) -> tuple[Key, x509.Certificate]:
    """A new server key and a certificate for `names` (SANs) signed by the CA."""
    if not names:
        raise ValueError("a server certificate needs at least one name")
    key = ec.generate_private_key(ec.SECP256R1())
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(min(now + SERVER_LIFETIME, ca_cert.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _same_key(key: Key, cert: x509.Certificate) -> bool:
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    return key.public_key().public_bytes(der, fmt) == cert.public_key().public_bytes(der, fmt)


def _fresh(cert: x509.Certificate, now: dt.datetime) -> bool:
    return cert.not_valid_before_utc <= now and cert.not_valid_after_utc > now + RENEW_BEFORE


def ca_valid(key: Key, cert: x509.Certificate, now: dt.datetime) -> bool:
    """True when `cert` is a CA certificate for `key`, fresh at `now` (see `RENEW_BEFORE`)."""
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        cert.verify_directly_issued_by(cert)
    except (x509.ExtensionNotFound, InvalidSignature, ValueError, TypeError):
        return False
    return constraints.ca and _same_key(key, cert) and _fresh(cert, now)


def server_cert_valid(
    key: Key,
    cert: x509.Certificate,
    ca_cert: x509.Certificate,
    names: Iterable[str],
    now: dt.datetime,
) -> bool:
    """True when `cert` is `key`'s, signed by `ca_cert`, names all `names`, and is fresh."""
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (InvalidSignature, ValueError, TypeError):
        return False
    wanted = {str(_general_name(n).value).lower() for n in names}
    return _same_key(key, cert) and wanted <= san_names(cert) and _fresh(cert, now)


# ---- files


def _load(cert_path: Path, key_path: Path) -> tuple[Key, x509.Certificate] | None:
    """The key and certificate at the paths, or None when missing or unreadable."""
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError, TypeError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        return None
    return key, cert


def _write(path: Path, data: bytes, mode: int, account: Account | None) -> None:
    """Write `data` to `path` atomically with `mode`, owned by `account` (None: as is)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(tmp, mode)
    chown(tmp, account)
    os.replace(tmp, path)


def _key_pem(key: Key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def ensure_tls(
    directory: Path,
    names: Sequence[str],
    account: Account | None,
    now: dt.datetime | None = None,
) -> TlsFiles:
    """Make `directory` hold a valid CA and a server certificate for `names`; return the files.

    Idempotent: valid files are reused (``renewed`` False). An invalid or expiring CA is
    replaced together with the server certificate; otherwise only the server
    certificate and key are. ``server.key`` and the certificates belong to `account`
    (the server's, when flpg runs as root); ``ca.key`` stays with the current user.
    Raises `EmbeddedDatabaseError` when the directory cannot be written.
    """
    now = now or dt.datetime.now(dt.UTC)
    files = TlsFiles.under(directory)
    try:
        directory.mkdir(mode=0o700, exist_ok=True)
        # As root the server account must reach server.key, but not list or change the directory.
        os.chmod(directory, 0o700 if account is None else 0o711)
        ca = _load(files.ca_cert, files.ca_key)
        renewed = False
        if ca is None or not ca_valid(*ca, now):
            ca = new_ca(now)
            _write(files.ca_key, _key_pem(ca[0]), 0o600, None)
            _write(files.ca_cert, _cert_pem(ca[1]), 0o644, account)
            renewed = True
        server = _load(files.server_cert, files.server_key)
        if renewed or server is None or not server_cert_valid(*server, ca[1], names, now):
            key, cert = new_server_cert(ca[0], ca[1], names, now)
            _write(files.server_key, _key_pem(key), 0o600, account)
            _write(files.server_cert, _cert_pem(cert), 0o644, account)
            renewed = True
    except OSError as exc:
        raise EmbeddedDatabaseError(
            f"cannot write the TLS files in {directory} ({exc.strerror or exc}); "
            "check that directory's permissions"
        ) from exc
    return TlsFiles.under(directory, renewed)
