"""Serving the dashboard: bind the address first (a port in use is a one-line error),
then run the app with uvicorn until SIGINT or SIGTERM."""

from __future__ import annotations

import errno
import signal
import socket
from collections.abc import Callable
from types import FrameType

from flpg.errors import ConfigError, InvalidState

SHUTDOWN_GRACE = 2
"""Seconds open event streams get to close when the server stops."""


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on `host:port` (0: any free port). InvalidState (exit 5)
    if the port is in use, ConfigError (exit 2) if the address cannot be bound."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"--host {host!r} is not an address of this machine: {exc}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise InvalidState(
                f"port {port} on {host} is in use; choose another with --port (0: any free port)"
            ) from None
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    """The http URL a browser opens for `sock`."""
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def serve(app: object, sock: socket.socket, announce: Callable[[str], None]) -> None:
    """Run `app` on `sock` until a signal stops it; `announce(url)` once it listens."""
    import uvicorn

    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=SHUTDOWN_GRACE,
        lifespan="on",
    )

    class Server(uvicorn.Server):
        """Stops on SIGINT or SIGTERM and exits 0, like every flpg service (uvicorn's own
        handler re-raises the signal once it shut down)."""

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True
            self.should_exit = True

    server = Server(config)
    announce(url_of(sock))
    server.run(sockets=[sock])
