"""A small HTTP/1.1 server on trio, for the ingest API on TCP and on a Unix socket.

Why not hypercorn, nor h11: measured on this machine (../shared/design/performance.md),
hypercorn's trio worker serves ~2,200 requests/s and a plain h11 loop ~9,400/s, and with
single-event requests h11 was 58% of the relay's profile. Ingest must never be what limits the
relay. The API is tiny (JSON in, JSON out), so the server is too: keep-alive, a bounded body,
bounded waits, HTTP/1.1 framing from relay/http/http11.py, and a handler that maps
(method, path, headers, body) to (status, JSON).

No client can lock the others out: every wait has a deadline (an idle connection, a request
head from its first byte, a body, an answer the client does not read), connections are capped
below the open-files limit (relay/http/limits.py) and at the cap the idle ones are closed,
oldest first, as nginx does with its idle keep-alive connections, so a newcomer is served;
accept errors (EMFILE) back off and are logged once per interval, not once per connection.
A listener may have a gate (relay/http/admission.py: the Host, a token), asked before a body
is read, so that a refused client costs no more than its head.
"""

from __future__ import annotations

import errno
import heapq
import http
import json
import logging
import math
import re
from collections.abc import Awaitable, Callable
from operator import attrgetter
from typing import NamedTuple

import trio

from relay.http.http11 import HEADER_NAME, Closed, HTTPStream, ProtocolError, shown
from relay.http.limits import RESERVE, Throttled, connection_cap, raise_open_files_limit

log = logging.getLogger(__name__)

IDLE_TIMEOUT = 300.0  # a keep-alive connection may wait this long for its next request
HEAD_TIMEOUT = 10.0  # a request head must arrive whole within this of its first byte
# A body must arrive whole within this of its head's end (a fixed bound, generous: 1 MB at
# 35 KB/s), and an answer be taken by the client within this.
REQUEST_TIMEOUT = 30.0
SWEEP_INTERVAL = 1.0  # how often expired waits are looked for: timeouts end up to 2 of these late
DRAIN_BATCH = 32  # at most, idle connections closed at once at the cap (nginx: 32 too)
ACCEPT_BACKOFF = 0.1  # after an accept failed for lack of descriptors (trio waits as long)
LOG_INTERVAL = 10.0  # at most one line per this about failed accepts, and about the cap
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# What accept fails with when the process or the system is out of descriptors or memory: a
# condition that passes, not a reason to stop serving (trio's serve_listeners treats these so).
_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})


class HTTPRequest(NamedTuple):
    """One request, as a handler gets it. (A NamedTuple: immutable, and built in 0.6 µs where an
    attrs frozen class took 1.6 µs.)"""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    query: str = ""
    stream: trio.abc.Stream | None = None  # its connection's: who asks (the admin's replays)


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
# A listener's gate (relay/http/admission.py): given a request's method, target and headers,
# before its body is read, None to serve it, else the answer that refuses it.
Gate = Callable[[bytes, bytes, dict[bytes, bytes]], tuple[int, dict | Reply] | None]


class _Connection:
    """One client connection, as the sweeper and the cap see it: ``expires`` is a plain float on
    the sweeper's coarse clock (past it, the sweeper cancels ``scope`` and the connection ends);
    ``idle`` while it waits for a request head, since ``since``; ``gate``: its listener's."""

    __slots__ = ("io", "scope", "expires", "idle", "since", "gate")

    def __init__(self, stream: trio.abc.Stream, now: float, gate: Gate | None = None):
        self.gate = gate
        self.io = HTTPStream(stream)
        self.scope = trio.CancelScope()
        self.expires = math.inf
        self.idle = True
        self.since = now


_since = attrgetter("since")


class HTTPServer:
    """Serves ``handler`` on listeners. ``max_connections`` (default: the open-files limit, raised
    to the hard limit when serving starts, less ``reserve`` descriptors the process needs for
    everything else) bounds the connections held at once."""

    def __init__(
        self,
        handler: Handler,
        *,
        max_body: int,
        reserve: int = RESERVE,
        max_connections: int | None = None,
        on_too_large: Callable[[], None] | None = None,
    ):
        self.handler = handler
        self.max_body = max_body
        self.on_too_large = on_too_large  # told of each body refused for max_body (413)
        self.reserve = reserve
        self.open_files = 0  # the soft limit, once serving
        self._max_connections = max_connections
        self._connections: dict[_Connection, None] = {}  # in the order they were accepted
        self._freed: trio.Event | None = None  # set when a connection ends
        self._now = 0.0  # trio.current_time() at the last sweep
        self._accept_errors = Throttled(LOG_INTERVAL, log)
        self._drained = Throttled(LOG_INTERVAL, log)

    @property
    def max_connections(self) -> int:
        if self._max_connections is not None:
            return self._max_connections
        return connection_cap(self.open_files, self.reserve)

    async def serve(
        self, listeners, gates: dict | None = None, *, task_status=trio.TASK_STATUS_IGNORED
    ) -> None:
        """``gates``: a Gate for some of ``listeners`` (the TCP ones), asked about each request
        read there before its body; a refused request's connection closes."""
        self.open_files = raise_open_files_limit()
        self._now = trio.current_time()
        gates = gates or {}
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._sweep)
            for listener in listeners:
                nursery.start_soon(self._accept, listener, nursery, gates.get(listener))
            task_status.started(listeners)

    async def _accept(
        self, listener: trio.abc.Listener, nursery: trio.Nursery, gate: Gate | None = None
    ) -> None:
        """trio.serve_listeners, with the cap, and without a traceback logged per failed accept
        (under EMFILE that was hundreds a minute)."""
        while True:
            while len(self._connections) >= self.max_connections:
                await self._make_room()
            try:
                stream = await listener.accept()
            except OSError as e:
                if e.errno not in _CAPACITY_ERRNOS:
                    raise
                self._accept_errors.note(
                    trio.current_time(),
                    f"cannot accept connections: {e.strerror} ({errno.errorcode[e.errno]});"
                    f" {len(self._connections)} open, open files limit {self.open_files};"
                    f" retrying every {ACCEPT_BACKOFF:g} s",
                )
                self._drain()  # if the descriptors went to idle clients, this frees some
                await trio.sleep(ACCEPT_BACKOFF)
                continue
            connection = _Connection(stream, self._now, gate)
            self._connections[connection] = None
            nursery.start_soon(self._serve_connection, connection)

    async def _make_room(self) -> None:
        """At the cap: close idle connections, oldest first, and wait until one has ended. With
        none idle (every connection is mid-request, each under a deadline), accepting waits and
        newcomers wait in the listen backlog."""
        if self._freed is None or self._freed.is_set():
            self._freed = trio.Event()
        freed = self._freed
        if closed := self._drain():
            self._drained.note(
                trio.current_time(),
                f"at the connection limit ({self.max_connections}): closed {closed} idle"
                " connections, oldest first",
            )
        await freed.wait()

    def _drain(self) -> int:
        """Close some of the connections that have sent nothing of a request, longest idle
        first (a sixteenth of the cap, at most DRAIN_BATCH); how many."""
        idle = [
            c for c in self._connections if c.idle and not c.io.buffer and not c.scope.cancel_called
        ]
        batch = max(1, min(DRAIN_BATCH, self.max_connections // 16))
        oldest = heapq.nsmallest(batch, idle, key=_since)  # stable: accept order on ties
        for connection in oldest:
            connection.scope.cancel()
        return len(oldest)

    async def _sweep(self) -> None:
        """End the connections whose wait has run out (an idle client, a head or a body that
        does not come, an answer not taken), and give a head its deadline once bytes of it came.

        Why not a deadline on each connection's cancel scope: moving it twice per request (idle
        before the head, none while the handler runs) cost ~7 µs of a ~100 µs single-event
        request; storing a float costs nothing measurable. Timeouts of 10 s and more need no
        better precision than this sweep's. The head deadline costs the request path nothing:
        a connection waiting for a head whose buffer holds bytes has begun one.
        """
        while True:
            self._now = now = trio.current_time()
            head_expires = self._expires(HEAD_TIMEOUT)
            for connection in self._connections:
                if connection.expires < now:
                    connection.scope.cancel()
                elif connection.idle and connection.io.buffer and connection.expires > head_expires:
                    connection.expires = head_expires
            self._accept_errors.flush(now)
            self._drained.flush(now)
            await trio.sleep(SWEEP_INTERVAL)

    def _expires(self, timeout: float) -> float:
        # The coarse clock lags by up to one interval: add one, so no wait ends early.
        return self._now + timeout + SWEEP_INTERVAL

    async def _serve_connection(self, connection: _Connection) -> None:
        io = connection.io
        try:
            # One cancel scope bounds every wait of the connection, the answer to a bad request
            # too; the sweeper cancels it when the wait in progress has run out (or the cap
            # drains it), and the connection closes.
            with connection.scope:
                try:
                    while True:
                        connection.since = self._now
                        connection.expires = self._expires(IDLE_TIMEOUT)
                        connection.idle = True
                        start, headers = await io.read_head()
                        connection.idle = False
                        if not await self._serve_request(io, start, headers, connection):
                            return
                except ProtocolError as e:
                    connection.idle = False
                    connection.expires = self._expires(REQUEST_TIMEOUT)
                    answer = {"error": f"bad request: {e}"}
                    await io.send_all(_response(e.status, answer, close=True))
        except Closed:
            pass  # between requests: the client is done
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the client went away
        finally:
            del self._connections[connection]
            try:
                await io.aclose()
            finally:
                if self._freed is not None:
                    self._freed.set()

    async def _serve_request(
        self, io: HTTPStream, start: bytes, headers: dict, connection: _Connection
    ) -> bool:
        """Serve one request; whether the connection stays open for another."""
        parts = start.split(b" ")
        if (
            len(parts) != 3
            or parts[2] not in (b"HTTP/1.1", b"HTTP/1.0")
            or (parts[0] not in _METHODS and not _TOKEN.match(parts[0]))
            or not parts[1]
        ):
            raise ProtocolError(f"malformed request line (RFC 9112 3): {shown(start)}")
        method, target, version = parts
        connection_header = headers.get(b"connection", b"").lower()
        host = headers.get(b"host")
        if version == b"HTTP/1.1":
            keep_alive = b"close" not in connection_header
            if host is None:
                raise ProtocolError("no Host header (RFC 9112 3.2: HTTP/1.1 requests have one)")
        else:
            keep_alive = b"keep-alive" in connection_header
            if b"transfer-encoding" in headers:  # RFC 9112 6.1: faulty framing in HTTP/1.0
                raise ProtocolError("Transfer-Encoding in an HTTP/1.0 request (RFC 9112 6.1)")
        if host is not None and not _HOST.match(host):
            raise ProtocolError(_host_problem(host))
        if connection.gate is not None and (refused := connection.gate(method, target, headers)):
            connection.expires = self._expires(REQUEST_TIMEOUT)  # for the answer
            await io.send_all(_response(*refused, close=True))  # the body unread: closed
            return False
        length = io.body_length(headers)
        if length is None or len(io.buffer) < length:  # else it came with the head
            connection.expires = self._expires(REQUEST_TIMEOUT)
        if length is not None and length > self.max_body:
            connection.expires = self._expires(REQUEST_TIMEOUT)  # for the answer
            await _send_too_large(self, io)
            return False
        if length != 0 and headers.get(b"expect", b"").lower() == b"100-continue":
            await io.send_all(CONTINUE)
        if length is None:
            body, whole = await io.read_chunked(self.max_body)
            if not whole:
                await _send_too_large(self, io)
                return False
        else:
            body = await io.read_exactly(length)
        connection.expires = math.inf  # the handler waits for the journal: never cut that short
        path, _, query = target.decode("latin-1").partition("?")
        request = HTTPRequest(  # positional: keywords cost 0.5 µs more
            method.decode("ascii", "replace"),
            path,
            {k.decode("latin-1"): v.decode("latin-1") for k, v in headers.items()},
            body,
            query,
            connection.io.stream,
        )
        try:
            status, payload = await self.handler(request)
        except Exception:  # noqa: BLE001 - the server keeps serving whatever a handler does
            log.exception("error handling %s %s", request.method, request.path)
            status, payload = 500, {"error": "internal error; see the relay's log"}
        connection.expires = self._expires(REQUEST_TIMEOUT)  # a client that reads no answers
        answer = _response(status, payload, close=not keep_alive)
        if method == b"HEAD":  # the head GET would get, no content (RFC 9110 9.3.2)
            answer = answer[: answer.index(b"\r\n\r\n") + 4]
        await io.send_all(answer)
        return keep_alive


_METHODS = frozenset({b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"PATCH", b"OPTIONS"})
_TOKEN = re.compile(HEADER_NAME.pattern.encode())  # method = token (RFC 9112 3.1)
# Host = uri-host [ ":" port ] (RFC 3986 3.2.2): an IP literal in brackets or a reg-name, which
# has no space and no comma; "a, b" is what two Host headers look like once read.
_HOST = re.compile(rb"(?:\[[0-9A-Za-z:.]+\]|[-._~!$&'()*+;=%0-9A-Za-z]*)(?::[0-9]*)?\Z")


def _host_problem(host: bytes) -> str:
    if b"," in host:
        return "more than one Host header (RFC 9112 3.2)"
    return f"bad Host header (RFC 9112 3.2): {shown(host)}"


async def _send_too_large(server: HTTPServer, io: HTTPStream) -> None:
    if server.on_too_large is not None:
        server.on_too_large()
    await io.send_all(_response(413, _too_large(server.max_body), close=True))


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
