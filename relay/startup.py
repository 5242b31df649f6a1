"""What stops a relay at start, said in one line that names the address or path and its key,
and the listeners opened with those words (``cannot listen on 127.0.0.1:8765 ([relay] listen):
address already in use``)."""

from __future__ import annotations

import errno
from pathlib import Path

import trio

from relay import config as config_module
from relay.config.paths import describe, socket_problem
from relay.http.listeners import open_tcp_listeners, open_unix_listener

IN_USE = "is a relay already running with this file?"


class StartError(Exception):
    """What keeps a relay from starting, in one line naming the address or path and its key
    (``cannot listen on 127.0.0.1:8765 ([relay] listen): address already in use``)."""


async def open_listeners(relay: config_module.RelaySettings) -> list[trio.SocketListener]:
    """The listeners of ``[relay] listen`` and ``socket``; raise StartError naming the one that
    cannot be opened, and why."""
    listeners = []
    try:
        if relay.listen:
            try:
                listeners.extend(await open_tcp_listeners(relay.listen))
            except OSError as e:
                raise StartError(listen_error(relay.listen, "[relay] listen", e)) from None
        if relay.socket:
            if problem := socket_problem(relay.socket):
                raise StartError(f"cannot listen on {relay.socket} ([relay] socket): {problem}")
            try:
                listeners.append(await open_unix_listener(relay.socket))
            except OSError as e:
                raise StartError(listen_error(relay.socket, "[relay] socket", e)) from None
    except BaseException:
        for listener in listeners:
            listener.socket.close()
        raise
    return listeners


def listen_error(address, key: str, error: OSError) -> str:
    if error.errno == errno.EADDRINUSE:
        reason = f"address already in use ({IN_USE})"
    else:
        reason = describe(error)
    return f"cannot listen on {address} ({key}): {reason}"


def state_dir_error(path: Path, problem: str) -> str:
    return f"cannot keep the journal in {path} ([relay] state_dir): {problem}"
