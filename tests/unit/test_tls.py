"""Tests for flpg.local.tls (the private CA and server certificate of the embedded
cluster) and flpg.local.listen (the --listen address); no database."""

from __future__ import annotations

import datetime as dt
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from flpg.errors import ConfigError, EmbeddedDatabaseError
from flpg.local.account import Account
from flpg.local.listen import Listen, check_cert_name, parse_listen
from flpg.local.tls import (
    RENEW_BEFORE,
    SERVER_LIFETIME,
    TlsFiles,
    ca_valid,
    cert_names,
    ensure_tls,
    new_ca,
    new_server_cert,
    san_names,
    server_cert_valid,
)

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
NAMES = ("db.example.org", "10.0.0.7", "localhost", "127.0.0.1")


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _verify(ca: x509.Certificate, leaf: x509.Certificate, name: x509.GeneralName) -> None:
    """Verify `leaf` for `name` against `ca` as a TLS client would (RFC 5280 profile)."""
    builder = PolicyBuilder().store(Store([ca])).time(NOW)
    verifier = builder.build_server_verifier(name)  # type: ignore[arg-type]
    verifier.verify(leaf, [])


def test_cert_names_put_the_host_first_and_always_add_localhost() -> None:
    assert cert_names("DB.example.org", ["10.0.0.7", "db.example.org"]) == NAMES
    assert cert_names("127.0.0.1") == ("127.0.0.1", "localhost")


def test_cert_names_of_a_wildcard_address_name_this_machine() -> None:
    import socket

    names = cert_names("0.0.0.0")
    assert "0.0.0.0" not in names
    assert socket.gethostname().lower() in names
    assert names[-2:] == ("localhost", "127.0.0.1")


def test_the_chain_verifies_for_every_name() -> None:
    ca_key, ca = new_ca(NOW)
    _key, leaf = new_server_cert(ca_key, ca, NAMES, NOW)
    assert san_names(leaf) == set(NAMES)
    _verify(ca, leaf, x509.DNSName("db.example.org"))
    _verify(ca, leaf, x509.DNSName("localhost"))
    import ipaddress

    _verify(ca, leaf, x509.IPAddress(ipaddress.ip_address("10.0.0.7")))
    with pytest.raises(VerificationError):
        _verify(ca, leaf, x509.DNSName("other.example.org"))
    _other_key, other_ca = new_ca(NOW)
    with pytest.raises(VerificationError):
        _verify(other_ca, leaf, x509.DNSName("localhost"))


def test_validity_checks() -> None:
    ca_key, ca = new_ca(NOW)
    key, leaf = new_server_cert(ca_key, ca, NAMES, NOW)
    assert ca_valid(ca_key, ca, NOW)
    assert not ca_valid(key, ca, NOW)  # not the CA's key
    assert not ca_valid(key, leaf, NOW)  # not a CA
    assert server_cert_valid(key, leaf, ca, ["localhost"], NOW)
    assert not server_cert_valid(key, leaf, ca, ["elsewhere.example.org"], NOW)
    assert not server_cert_valid(ca_key, leaf, ca, ["localhost"], NOW)  # another key
    _other_key, other_ca = new_ca(NOW)
    assert not server_cert_valid(key, leaf, other_ca, ["localhost"], NOW)
    almost_expired = NOW + SERVER_LIFETIME - RENEW_BEFORE + dt.timedelta(days=1)
    assert not server_cert_valid(key, leaf, ca, ["localhost"], almost_expired)
    assert server_cert_valid(key, leaf, ca, ["localhost"], almost_expired - dt.timedelta(days=2))


def test_ensure_tls_writes_the_files_with_private_keys(tmp_path: Path) -> None:
    directory = tmp_path / "tls"
    files = ensure_tls(directory, NAMES, None, NOW)
    assert files == TlsFiles.under(directory, renewed=True)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in directory.iterdir()}
    assert modes == {"ca.crt": 0o644, "ca.key": 0o600, "server.crt": 0o644, "server.key": 0o600}
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert all(p.stat().st_uid == os.geteuid() for p in directory.iterdir())
    _verify(_cert(files.ca_cert), _cert(files.server_cert), x509.DNSName("db.example.org"))


def test_ensure_tls_reuses_valid_files(tmp_path: Path) -> None:
    first = ensure_tls(tmp_path, NAMES, None, NOW)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    again = ensure_tls(tmp_path, ["localhost", "10.0.0.7"], None, NOW + dt.timedelta(days=200))
    assert again.renewed is False
    assert again == TlsFiles.under(tmp_path) and first.renewed
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def _ca_and_server(directory: Path) -> tuple[bytes, bytes, bytes, bytes]:
    files = TlsFiles.under(directory)
    paths = (files.ca_cert, files.ca_key, files.server_cert, files.server_key)
    return tuple(p.read_bytes() for p in paths)  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("names", "later"),
    [
        (["new.example.org"], dt.timedelta(0)),  # a name the certificate lacks
        (["localhost"], SERVER_LIFETIME - RENEW_BEFORE + dt.timedelta(days=1)),  # expiring
    ],
)
def test_ensure_tls_reissues_the_server_cert_and_keeps_the_ca(
    tmp_path: Path, names: list[str], later: dt.timedelta
) -> None:
    ensure_tls(tmp_path, NAMES, None, NOW)
    ca_crt, ca_key, crt, key = _ca_and_server(tmp_path)
    files = ensure_tls(tmp_path, names, None, NOW + later)
    assert files.renewed
    new = _ca_and_server(tmp_path)
    assert new[:2] == (ca_crt, ca_key)
    assert new[2] != crt and new[3] != key
    leaf = _cert(files.server_cert)
    assert set(names) <= san_names(leaf)
    builder = PolicyBuilder().store(Store([_cert(files.ca_cert)])).time(NOW + later)
    builder.build_server_verifier(x509.DNSName(names[0])).verify(leaf, [])


def test_ensure_tls_replaces_a_broken_server_key_and_a_broken_ca(tmp_path: Path) -> None:
    files = ensure_tls(tmp_path, NAMES, None, NOW)
    files.server_key.write_text("not a key")
    assert ensure_tls(tmp_path, NAMES, None, NOW).renewed
    assert ensure_tls(tmp_path, NAMES, None, NOW).renewed is False  # valid again
    ca_before = files.ca_cert.read_bytes()
    files.ca_key.unlink()
    assert ensure_tls(tmp_path, NAMES, None, NOW).renewed
    assert files.ca_cert.read_bytes() != ca_before
    _verify(_cert(files.ca_cert), _cert(files.server_cert), x509.DNSName("localhost"))


def test_ensure_tls_reports_an_unwritable_directory(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(EmbeddedDatabaseError, match="cannot write the TLS files"):
        ensure_tls(blocker / "tls", NAMES, None, NOW)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another account needs root")
def test_as_root_the_server_files_belong_to_the_server_account(tmp_path: Path) -> None:
    import pwd

    nobody = pwd.getpwnam("nobody")
    account = Account("nobody", nobody.pw_uid, nobody.pw_gid)
    files = ensure_tls(tmp_path / "tls", NAMES, account, NOW)
    owners = {p.name: p.stat().st_uid for p in (tmp_path / "tls").iterdir()}
    assert owners == {
        "ca.crt": nobody.pw_uid,
        "ca.key": 0,  # the CA key stays with flpg's own account
        "server.crt": nobody.pw_uid,
        "server.key": nobody.pw_uid,
    }
    assert stat.S_IMODE(files.server_key.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "tls").stat().st_mode) == 0o711


# ---- the --listen address


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:5433", Listen("127.0.0.1", 5433)),
        ("0.0.0.0:1", Listen("0.0.0.0", 1)),
        ("*:65535", Listen("*", 65535)),
        ("[::1]:5433", Listen("::1", 5433)),
        ("db.example.org:5433", Listen("db.example.org", 5433)),
    ],
)
def test_parse_listen(text: str, expected: Listen) -> None:
    assert parse_listen(text) == expected
    assert parse_listen(str(expected)) == expected


@pytest.mark.parametrize(
    "text",
    ["5433", ":5433", "host:", "host:0", "host:65536", "host:x", "::1:5433", "[host]:5433",
     "a b:5433", "a,b:5433", "a'b:5433", "-x:5433"],
)  # fmt: skip
def test_parse_listen_refuses_malformed_addresses(text: str) -> None:
    with pytest.raises(ConfigError, match="--listen"):
        parse_listen(text)


def test_cert_names_from_the_command_line_are_checked() -> None:
    assert check_cert_name("10.1.2.3") == "10.1.2.3"
    with pytest.raises(ConfigError, match="--cert-name"):
        check_cert_name("evil'name")
