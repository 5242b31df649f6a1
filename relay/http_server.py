"""A small HTTP/1.1 server on trio + h11, for the ingest API on TCP and on a Unix socket.

Why not hypercorn: measured on this machine (../shared/design/performance.md), hypercorn's trio
worker serves ~2,200 requests/s, a plain h11 loop ~9,400/s, and ingest must never be what limits
the relay. The API is tiny (JSON in, JSON out), so the server is too: keep-alive, a bounded body,
bounded waits, and a handler that maps (method, path, headers, body) to (status, JSON).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket as stdlib_socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import h11
import trio
from attrs import frozen

log = logging.getLogger(__name__)

READ_SIZE = 65536
IDLE_TIMEOUT = 300.0  # a keep-alive connection may wait this long for its next request
REQUEST_TIMEOUT = 30.0  # a started request must arrive whole within this


@frozen
class HTTPRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


Handler = Callable[[HTTPRequest], Awaitable[tuple[int, dict]]]


class HTTPServer:
    def __init__(self, handler: Handler, *, max_body: int):
        self.handler = handler
        self.max_body = max_body

    async def serve(self, listeners, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        await trio.serve_listeners(self._serve_connection, listeners, task_status=task_status)

    async def _serve_connection(self, stream: trio.abc.Stream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
        try:
            while True:
                with trio.move_on_after(IDLE_TIMEOUT) as idle:
                    event = await _next_event(conn, stream)
                if idle.cancelled_caught or not isinstance(event, h11.Request):
                    return  # idle too long, or the client closed
                await self._serve_request(conn, stream, event)
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return  # Connection: close, or a body we did not read
                conn.start_next_cycle()
        except h11.RemoteProtocolError as e:
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                await _respond(conn, stream, e.error_status_hint, {"error": f"bad request: {e}"})
        except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError):
            pass  # the client went away
        finally:
            await trio.aclose_forcefully(stream)

    async def _serve_request(self, conn, stream, request: h11.Request) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.headers}
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            await _respond(conn, stream, 413, _too_large(self.max_body), close=True)
            return
        body = bytearray()
        with trio.move_on_after(REQUEST_TIMEOUT) as scope:
            while True:
                event = await _next_event(conn, stream)
                if isinstance(event, h11.Data):
                    body += event.data
                    if len(body) > self.max_body:
                        await _respond(conn, stream, 413, _too_large(self.max_body), close=True)
                        return
                elif isinstance(event, h11.EndOfMessage):
                    break
                else:  # the client closed mid-request
                    return
        if scope.cancelled_caught:
            await _respond(
                conn, stream, 408, {"error": "request body not received in time"}, close=True
            )
            return
        target = request.target.decode("latin-1")
        http_request = HTTPRequest(
            method=request.method.decode("ascii"),
            path=target.split("?", 1)[0],
            headers=headers,
            body=bytes(body),
        )
        try:
            status, payload = await self.handler(http_request)
        except Exception:  # noqa: BLE001 - the server keeps serving whatever a handler does
            log.exception("error handling %s %s", http_request.method, http_request.path)
            status, payload = 500, {"error": "internal error; see the relay's log"}
        await _respond(conn, stream, status, payload)


def _too_large(limit: int) -> dict:
    return {"error": f"body too large: the limit is {limit} bytes ([relay] max_body)"}


async def _next_event(conn: h11.Connection, stream: trio.abc.Stream):
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(READ_SIZE))
            continue
        if event is h11.PAUSED:
            return None
        return event


async def _respond(conn, stream, status: int, payload: dict, *, close: bool = False) -> None:
    body = json.dumps(payload).encode()
    headers = [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
        ("Server", "relay"),
    ]
    if close:
        headers.append(("Connection", "close"))
    await stream.send_all(
        conn.send(h11.Response(status_code=status, headers=headers))
        + conn.send(h11.Data(data=body))
        + conn.send(h11.EndOfMessage())
    )


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
