"""The TCP address the embedded cluster serves other machines on (``HOST:PORT``)."""

from __future__ import annotations

import errno
import ipaddress
import re
import socket
from dataclasses import dataclass

from flpg.errors import ConfigError, EmbeddedDatabaseError

__all__ = ["Listen", "check_cert_name", "check_port_free", "parse_listen"]

_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$")


@dataclass(frozen=True)
class Listen:
    """A host (name, IP address, or ``*`` / ``0.0.0.0`` / ``::`` for all) and a TCP port."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_listen(text: str) -> Listen:
    """Parse ``HOST:PORT`` (``[v6addr]:PORT`` for IPv6); raise `ConfigError` when malformed."""
    usage = f"--listen {text!r}: expected HOST:PORT, e.g. 0.0.0.0:5433 or [::1]:5433"
    host, sep, port_s = text.strip().rpartition(":")
    if not sep or not host:
        raise ConfigError(usage)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if not _is_ip(host):
            raise ConfigError(f"--listen {text!r}: {host!r} in brackets is not an IPv6 address")
    elif ":" in host:
        raise ConfigError(f"--listen {text!r}: write an IPv6 address in brackets, e.g. [::1]:5433")
    if not (host == "*" or _is_ip(host) or _HOSTNAME.match(host)):
        raise ConfigError(f"--listen {text!r}: {host!r} is not a host name or IP address")
    if not port_s.isdigit() or not 1 <= int(port_s) <= 65535:
        raise ConfigError(f"--listen {text!r}: the port must be a number from 1 to 65535")
    return Listen(host, int(port_s))


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def check_port_free(listen: Listen) -> None:
    """Raise `EmbeddedDatabaseError` when another process holds `listen`'s port, or when
    `listen`'s host is not an address of this machine (no address of it can be bound)."""
    host = None if listen.host == "*" else listen.host
    try:
        infos = socket.getaddrinfo(
            host, listen.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise EmbeddedDatabaseError(f"cannot resolve {listen.host!r}: {exc.strerror}") from exc
    bound = False
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise EmbeddedDatabaseError(
                        f"port {listen.port} on {listen.host} is in use by another process; "
                        "choose another port with --listen HOST:PORT"
                    ) from exc
                continue
            bound = True
    if not bound:
        raise EmbeddedDatabaseError(
            f"cannot listen on {listen}: {listen.host} is not an address of this machine"
        )


def check_cert_name(name: str) -> str:
    """`name` (a host name or IP address for the server certificate), or `ConfigError`."""
    if _is_ip(name) or _HOSTNAME.match(name):
        return name
    raise ConfigError(f"--cert-name {name!r} is not a host name or IP address")
