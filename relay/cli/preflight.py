"""What ``relay run`` would meet when it starts, asked by ``relay check``: can it bind
``[relay] listen``, listen on ``socket``, keep its journal in ``state_dir``.

Nothing is created: the address is bound and closed at once, the paths are asked about. A relay
already running on the same file holds the address and the socket; that is a warning (it is
what ``relay reload`` is for), anything else holding them is an error.
"""

from __future__ import annotations

import errno
import socket
from pathlib import Path

import httpx
import trio

from relay.config import Config
from relay.config.paths import directory_problem, socket_problem
from relay.http.listeners import open_tcp_listeners
from relay.journal import FILENAME
from relay.startup import IN_USE, listen_error, state_dir_error

RUNNING = (
    "{key}: a relay is running on {where}; if it runs this file, `relay reload` applies changes "
    "(a second `relay run` would fail)"
)


def start_problems(config: Config) -> tuple[list[str], list[str]]:
    """The errors ``relay run`` would stop at, and the warnings, each naming the file."""
    name = config.path.name
    relay = config.relay
    errors, warnings = [], []
    if problem := directory_problem(relay.state_dir, (FILENAME, f"{FILENAME}-wal")):
        errors.append(f"{name}: {state_dir_error(relay.state_dir, problem)}")
    if relay.listen:
        error, running = _listen_problem(relay.listen)
        if running:
            warnings.append(f"{name}: " + RUNNING.format(key="[relay] listen", where=relay.listen))
        elif error:
            errors.append(f"{name}: {error}")
    if relay.socket:
        error, running = _socket_problem(relay.socket)
        if running:
            warnings.append(f"{name}: " + RUNNING.format(key="[relay] socket", where=relay.socket))
        elif error:
            errors.append(f"{name}: {error}")
    return errors, warnings


def _listen_problem(listen: str) -> tuple[str | None, bool]:
    """Bind the address as ``relay run`` does, then close: (the error, whether a relay holds
    it)."""

    async def bind_and_close():
        for listener in await open_tcp_listeners(listen):
            await listener.aclose()

    try:
        trio.run(bind_and_close)
    except OSError as e:
        if e.errno == errno.EADDRINUSE and _a_relay_answers(_local_url(listen)):
            return None, True
        return listen_error(listen, "[relay] listen", e), False
    return None, False


def _socket_problem(path: Path) -> tuple[str | None, bool]:
    if problem := socket_problem(path):
        return f"cannot listen on {path} ([relay] socket): {problem}", False
    if not path.is_socket():
        return None, False
    if _a_relay_answers("http://relay", httpx.HTTPTransport(uds=str(path))):
        return None, True
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with probe:
        try:
            probe.connect(str(path))
        except OSError:
            return None, False  # left by a crash: `relay run` replaces it
    return f"cannot listen on {path} ([relay] socket): in use ({IN_USE})", False


def _local_url(listen: str) -> str:
    host, _, port = listen.rpartition(":")
    if host in ("0.0.0.0", "*", ""):
        host = "127.0.0.1"
    elif host in ("[::]", "::"):
        host = "[::1]"
    return f"http://{host}:{port}"


def _a_relay_answers(url: str, transport: httpx.HTTPTransport | None = None) -> bool:
    """Whether a relay answers ``GET /healthz`` at ``url``: its server says it is one."""
    try:
        with httpx.Client(transport=transport, timeout=2) as client:
            response = client.get(f"{url}/healthz")
    except httpx.HTTPError:
        return False
    return response.headers.get("server") == "relay"
