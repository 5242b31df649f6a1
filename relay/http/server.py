"""A small HTTP/1.1 server on trio, for the ingest API on TCP and on a Unix socket.

Why not hypercorn, nor h11: measured on this machine (../shared/design/performance.md),
hypercorn's trio worker serves ~2,200 requests/s and a plain h11 loop ~9,400/s, and with
single-event requests h11 was 58% of the relay's profile. Ingest must never be what limits the
relay. The API is tiny (JSON in, JSON out), so the server is too: keep-alive, a bounded body,
bounded waits, HTTP/1.1 framing from relay/http/http11.py, and a handler that maps
(method, path, headers, body) to (status, JSON).
"""

from __future__ import annotations

import errno
import http
import json
import logging
import math
import os
import socket as stdlib_socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import NamedTuple

import trio

from relay.http.http11 import Closed, HTTPStream, ProtocolError

log = logging.getLogger(__name__)

IDLE_TIMEOUT = 300.0  # a keep-alive connection may wait this long for its next request
REQUEST_TIMEOUT = 30.0  # a request's body must arrive whole within this, or the connection ends
SWEEP_INTERVAL = 1.0  # how often expired waits are looked for: timeouts end up to 2 of these late
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class HTTPRequest(NamedTuple):
    """One request, as a handler gets it. (A NamedTuple: immutable, and built in 0.6 µs where an
    attrs frozen class took 1.6 µs.)"""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    query: str = ""


class Reply(NamedTuple):
    """An answer that is not JSON, or that has headers of its own (``Deprecation``,
    ``WWW-Authenticate``, the admin listener's text/plain /metrics)."""

    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def json(cls, payload: dict, *, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
        return cls(json.dumps(payload).encode(), "application/json", headers)


# A handler answers a status and a dict to send as JSON, bytes that are JSON text already, or a
# Reply.
Handler = Callable[[HTTPRequest], Awaitable[tuple[int, dict | bytes | Reply]]]


class _Waits:
    """What a connection waits for, and until when: ``expires`` is a plain float on the
    sweeper's coarse clock; past it, the sweeper cancels ``scope`` and the connection ends."""

    __slots__ = ("scope", "expires")

    def __init__(self, scope: trio.CancelScope, expires: float):
        self.scope = scope
        self.expires = expires


class HTTPServer:
    def __init__(
        self, handler: Handler, *, max_body: int, on_too_large: Callable[[], None] | None = None
    ):
        self.handler = handler
        self.max_body = max_body
        self.on_too_large = on_too_large  # told of each body refused for max_body (413)
        self._waits: set[_Waits] = set()
        self._now = 0.0  # trio.current_time() at the last sweep

    async def serve(self, listeners, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self._now = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._sweep)
            await trio.serve_listeners(self._serve_connection, listeners, task_status=task_status)

    async def _sweep(self) -> None:
        """End the connections whose wait has run out (an idle client, a body that does not
        come).

        Why not a deadline on each connection's cancel scope: moving it twice per request (idle
        before the head, none while the handler runs) cost ~7 µs of a ~100 µs single-event
        request; storing a float costs nothing measurable. Timeouts of 30 s and 300 s need no
        better precision than this sweep's.
        """
        while True:
            self._now = now = trio.current_time()
            for waits in self._waits:
                if waits.expires < now:
                    waits.scope.cancel()
            await trio.sleep(SWEEP_INTERVAL)

    def _expires(self, timeout: float) -> float:
        # The coarse clock lags by up to one interval: add one, so no wait ends early.
        return self._now + timeout + SWEEP_INTERVAL

    async def _serve_connection(self, stream: trio.abc.Stream) -> None:
        io = HTTPStream(stream)
        waits = _Waits(trio.CancelScope(), 0.0)
        self._waits.add(waits)
        try:
            # One cancel scope bounds every wait of the connection; the sweeper cancels it when
            # the wait in progress has run out, and the connection closes.
            with waits.scope:
                while True:
                    waits.expires = self._expires(IDLE_TIMEOUT)
                    start, headers = await io.read_head()
                    if not await self._serve_request(io, start, headers, waits):
                        return
        except Closed:
            pass  # between requests: the client is done
        except ProtocolError as e:
            try:
                await io.send_all(_response(e.status, {"error": f"bad request: {e}"}, close=True))
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the client went away
        finally:
            self._waits.discard(waits)
            await io.aclose()

    async def _serve_request(
        self, io: HTTPStream, start: bytes, headers: dict, waits: _Waits
    ) -> bool:
        """Serve one request; whether the connection stays open for another."""
        parts = start.split(b" ")
        if len(parts) != 3 or parts[2] not in (b"HTTP/1.1", b"HTTP/1.0"):
            raise ProtocolError("malformed request line")
        method, target, version = parts
        connection = headers.get(b"connection", b"").lower()
        if version == b"HTTP/1.1":
            keep_alive = b"close" not in connection
        else:
            keep_alive = b"keep-alive" in connection
        length = io.body_length(headers)
        if length is not None and length > self.max_body:
            await self._too_large(io)
            return False
        if length != 0 and headers.get(b"expect", b"").lower() == b"100-continue":
            await io.send_all(CONTINUE)
        if length is None or len(io.buffer) < length:  # else it came with the head
            waits.expires = self._expires(REQUEST_TIMEOUT)
        if length is None:
            body, whole = await io.read_chunked(self.max_body)
            if not whole:
                await self._too_large(io)
                return False
        else:
            body = await io.read_exactly(length)
        waits.expires = math.inf  # the handler waits for the journal: never cut that short
        path, _, query = target.decode("latin-1").partition("?")
        request = HTTPRequest(  # positional: keywords cost 0.5 µs more
            method.decode("ascii", "replace"),
            path,
            {k.decode("latin-1"): v.decode("latin-1") for k, v in headers.items()},
            body,
            query,
        )
        try:
            status, payload = await self.handler(request)
        except Exception:  # noqa: BLE001 - the server keeps serving whatever a handler does
            log.exception("error handling %s %s", request.method, request.path)
            status, payload = 500, {"error": "internal error; see the relay's log"}
        await io.send_all(_response(status, payload, close=not keep_alive))
        return keep_alive

    async def _too_large(self, io: HTTPStream) -> None:
        if self.on_too_large is not None:
            self.on_too_large()
        await io.send_all(_response(413, _too_large(self.max_body), close=True))


def _too_large(limit: int) -> dict:
    return {"error": f"body too large: the limit is {limit} bytes ([relay] max_body)"}


_STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in http.HTTPStatus}


def _head(status: int, close: bool) -> tuple[bytes, bytes]:
    """An answer's head, split where its Content-Length goes."""
    status_line = _STATUS_LINES.get(status) or f"HTTP/1.1 {status} \r\n".encode()
    close_line = b"Connection: close\r\n" if close else b""
    return (
        status_line + b"Content-Type: application/json\r\nContent-Length: ",
        b"\r\nServer: relay\r\n" + close_line + b"\r\n",
    )


_HEADS = {
    (status, close): _head(status, close) for status in _STATUS_LINES for close in (False, True)
}


def _response(status: int, payload: dict | bytes | Reply, *, close: bool = False) -> bytes:
    """The whole answer. ``payload`` as bytes is JSON text already (Api's 202): measured, a
    json.dumps was 2.3 µs of the 3.9 µs this took, and formatting the head each time most of the
    rest; now ~0.5 µs."""
    if isinstance(payload, bytes):
        body = payload
    elif isinstance(payload, Reply):
        return _reply(status, payload, close)
    else:
        body = json.dumps(payload).encode()
    before, after = _HEADS.get((status, close)) or _head(status, close)
    return b"%b%d%b%b" % (before, len(body), after, body)


def _reply(status: int, reply: Reply, close: bool) -> bytes:
    status_line = _STATUS_LINES.get(status) or f"HTTP/1.1 {status} \r\n".encode()
    lines = [("Content-Type", reply.content_type), ("Content-Length", str(len(reply.body)))]
    lines += [("Server", "relay"), *reply.headers]
    if close:
        lines.append(("Connection", "close"))
    head = "".join(f"{name}: {value}\r\n" for name, value in lines).encode("latin-1")
    return status_line + head + b"\r\n" + reply.body


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
