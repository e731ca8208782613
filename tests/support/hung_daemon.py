"""Stand-ins for the daemon's socket: one nothing listens on, and one that accepts connections and
never answers (a hung dockerd, for real)."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def hung_socket(path: Path, gid: int = 0) -> Iterator[list[socket.socket]]:
    """Listen on `path` (root:`gid` 0660), accept every connection, read nothing, answer nothing."""
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    os.chown(path, 0, gid)
    path.chmod(0o660)
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)  # kept open: the client waits for an answer that never comes

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield held
    finally:
        stop.set()
        t.join(2)
        for conn in held:
            conn.close()
        server.close()


@contextlib.contextmanager
def socket_file(path: Path, gid: int = 0) -> Iterator[Path]:
    """A unix socket bound at `path` (root:`gid` 0660) that nothing listens on: the socket file the
    socket control guards, with no daemon behind it (a connect is refused at once)."""
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    try:
        os.chown(path, 0, gid)
        path.chmod(0o660)
        yield path
    finally:
        server.close()
