"""A TCP proxy in front of the test cluster's unix socket that can cut one connection
between a statement's commit and the client hearing of it.

It reads the PostgreSQL wire protocol just enough to find message boundaries: once a
client message containing the armed marker (e.g. the text of one SQL statement) has
passed, the server's answers are held back until its ReadyForQuery (the implicit
transaction of the statement has committed by then), and then both sockets are
closed, so the client sees a lost connection for a statement that did commit. Armed
`before`, it closes both instead of passing the message on: the statement is lost.
Connections must not ask for SSL or GSS encryption (`sslmode=disable`).
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
from urllib.parse import parse_qs, quote, urlsplit


def unix_socket_of(url: str) -> tuple[str, str, str, int]:
    """(socket path, user, dbname, port) of a unix-socket libpq URL of the test cluster."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    host, port = query["host"][0], int(query["port"][0])
    return f"{host}/.s.PGSQL.{port}", parts.username or "", parts.path.lstrip("/"), port


class CuttingProxy:
    """Forwards 127.0.0.1:`port` to a PostgreSQL unix socket; `arm(marker)` cuts the next
    connection that sends `marker`, after the server has answered it in full (for a
    statement prepared first, as hot connections do: after it ran, not after its
    Parse)."""

    def __init__(self, db_url: str) -> None:
        self._target, self._user, self._dbname, _ = unix_socket_of(db_url)
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._marker: bytes | None = None
        self._before = False
        self._lock = threading.Lock()
        self.cuts: list[bytes] = []
        """The client messages that led to a cut, in order."""
        self.held_back: list[bytes] = []
        """Type bytes of the server messages the client never received, per cut."""
        self._closing = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._accept_loop, daemon=True)
        self._accept.start()

    @property
    def url(self) -> str:
        """A libpq URL that connects through the proxy."""
        return (
            f"postgresql://{quote(self._user)}@127.0.0.1:{self.port}/{quote(self._dbname)}"
            "?sslmode=disable&gssencmode=disable"
        )

    def arm(self, marker: bytes, *, before: bool = False) -> None:
        """Cut the next connection that sends a message containing `marker` (once):
        after the server answered it in full, or, with `before`, instead of passing
        the message on (the statement never reaches the server)."""
        with self._lock:
            self._marker, self._before = marker, before

    def _take_marker(self, message: bytes) -> str:
        """What to do with a client message: "" pass it on, "hold" pass it on and cut
        after the answer, "drop" cut now."""
        with self._lock:
            if self._marker is not None and self._marker in message:
                self._marker = None
                self.cuts.append(message)
                return "drop" if self._before else "hold"
        return ""

    def _accept_loop(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(self._target)
            thread = threading.Thread(target=self._pump, args=(client, upstream), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        from_client, from_server = b"", b""
        started = False  # the untyped startup packet has passed
        holding = False
        held: list[bytes] = []
        try:
            while not self._closing.is_set():
                ready, _, _ = select.select([client, upstream], [], [], 0.2)
                if client in ready:
                    data = client.recv(65536)
                    if not data:
                        return
                    from_client += data
                    messages, from_client, started = _split_client(from_client, started)
                    for message in messages:
                        taken = self._take_marker(message)
                        if taken == "drop":
                            return
                        holding = holding or taken == "hold"
                        upstream.sendall(message)
                if upstream in ready:
                    data = upstream.recv(65536)
                    if not data:
                        return
                    from_server += data
                    messages, from_server = _split_server(from_server)
                    for message in messages:
                        if not holding:
                            client.sendall(message)
                            continue
                        held.append(message)
                        if message[:1] != b"Z":
                            continue
                        kinds = b"".join(m[:1] for m in held)
                        if b"C" in kinds or b"E" in kinds:  # answered in full: cut here
                            self.held_back.append(kinds)
                            return
                        # Only prepared (Parse, Sync): the statement runs next; pass on.
                        for m in held:
                            client.sendall(m)
                        held = []
        except OSError:
            return
        finally:
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def close(self) -> None:
        self._closing.set()
        self._server.close()
        self._accept.join(5)
        for thread in self._threads:
            thread.join(5)


def _split_client(buf: bytes, started: bool) -> tuple[list[bytes], bytes, bool]:
    """Complete frontend messages of `buf`, the rest, and whether startup has passed."""
    out: list[bytes] = []
    while True:
        if not started:
            if len(buf) < 4:
                break
            (length,) = struct.unpack("!I", buf[:4])
            if len(buf) < length:
                break
            out.append(buf[:length])
            buf, started = buf[length:], True
            continue
        if len(buf) < 5:
            break
        (length,) = struct.unpack("!I", buf[1:5])
        if len(buf) < 1 + length:
            break
        out.append(buf[: 1 + length])
        buf = buf[1 + length :]
    return out, buf, started


def _split_server(buf: bytes) -> tuple[list[bytes], bytes]:
    """Complete backend messages of `buf` and the rest."""
    out: list[bytes] = []
    while len(buf) >= 5:
        (length,) = struct.unpack("!I", buf[1:5])
        if len(buf) < 1 + length:
            break
        out.append(buf[: 1 + length])
        buf = buf[1 + length :]
    return out, buf
