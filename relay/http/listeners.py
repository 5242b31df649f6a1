"""Opening the listeners relay's server serves: TCP on ``HOST:PORT``, and a Unix socket that
only its owner may use."""

from __future__ import annotations

import errno
import os
import socket as stdlib_socket
from pathlib import Path

import trio


async def open_tcp_listeners(listen: str) -> list[trio.SocketListener]:
    host, _, port = listen.rpartition(":")
    return await trio.open_tcp_listeners(int(port), host=host.strip("[]"))


async def open_unix_listener(path: Path) -> trio.SocketListener:
    """Listen on ``path`` with mode 0600, replacing a stale socket left by a crash.

    trio has no Unix-socket listener of its own (trio#279), so: socket, bind, chmod, listen.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_socket():
        if await _socket_answers(path):
            raise OSError(errno.EADDRINUSE, f"{path}: another process is listening on it")
        path.unlink()
    sock = trio.socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
    try:
        old_umask = os.umask(0o177)  # never a moment with wider permissions
        try:
            await sock.bind(str(path))
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(sock)


async def _socket_answers(path: Path) -> bool:
    probe = trio.socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
    with probe:
        try:
            await probe.connect(str(path))
        except OSError:
            return False
    return True
