"""A small keep-alive HTTP/1.1 client on trio: the component that owns outgoing connections.

Why not httpx, nor even h11: measured on this machine (../shared/design/performance.md), one
shared httpx.AsyncClient delivers ~800 requests/s and queues unfairly, an h11 loop ~8,000/s
(128 µs of CPU a request), prebuilt request bytes ~37,000/s. The delivery client decides the
relay's throughput, and relay needs one thing from it: send a request, read a bounded answer,
reuse the connection. So the request head is written directly (the parts that do not change for
a URL are built once) and the answer is parsed with ``bytes.find``: status line, headers, and a
body framed by Content-Length, chunked encoding, or the connection's end (RFC 9112, section 6).

Header text is checked before anything is sent: CR, LF, NUL or non-ASCII in a header is refused
(a request can never carry a smuggled header). The caller bounds each request in time (a cancel
scope); a request that is cancelled or fails leaves its connection closed, never back in the
pool. Redirects are not followed: a 3xx is an answer like any other.

Answers are read as strictly as requests are (relay/http/http11.py): a status line that is not
``HTTP/1.x SP 3DIGIT SP reason``, a code outside 100-599, a bad header line, Content-Length or
chunk is a ``ProtocolError`` naming what was wrong, never a guess. Reading "HTTP/1.1 2000" as a
200 would mark a delivery delivered that was not. A failed TLS handshake is a ``TLSError`` that
says why (the certificate and its host, a timeout, a peer that hung up), not trio's bare
BrokenResourceError.
"""

from __future__ import annotations

import math
import re
import ssl
from collections import defaultdict, deque
from urllib.parse import urlsplit

import trio

from relay.http.http11 import (
    HEADER_NAME,
    HEADER_VALUE,
    REQUEST_TARGET,
    HTTPStream,
    ProtocolError,
    shown,
)
from relay.http.messages import PermanentFailure, Request, Response
from relay.http.netpolicy import NetworkPolicy, resolve_allowed

USER_AGENT = "relay/0.1"
HANDSHAKE_TIMEOUT = 10.0  # at most; within the caller's deadline, a little before it
_HANDSHAKE_MARGIN = 0.1  # so that a hung handshake is reported as one, not as "no response"
_NO_BODY_STATUSES = frozenset({204, 304})
# status-line = HTTP-version SP status-code SP [ reason-phrase ] (RFC 9112 4); what the reason
# holds, read_head has checked (no control characters). Servers must send the SP before an
# empty reason, a few do not: "HTTP/1.1 200" can mean one thing only, and RFC 9112 2.2 lets a
# recipient split the line on whitespace, so that one is taken. Nothing else is.
_STATUS_LINE = re.compile(rb"HTTP/1\.[0-9] ([0-9]{3})(?: |\Z)")
_TARGETS_CACHED = 4096
_TOKEN = HEADER_NAME.pattern.removesuffix(r"\Z")
HEADER_NAMES = re.compile(rf"(?:{_TOKEN}(?::{_TOKEN})*)?\Z")  # names joined with ":"


def request_target(url: str) -> str:
    """The request target this client puts on the request line for ``url``: its path and
    query, "/" when the path is empty, never the fragment. Signers that sign a bodiless
    request sign this, so what they sign and what is sent cannot disagree."""
    return _target_of(urlsplit(url))


def _target_of(parts) -> str:
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


class Target:
    """What a URL means to the client, worked out once per URL."""

    __slots__ = ("origin", "head_start")

    def __init__(self, url: str, method: str):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise PermanentFailure(f"not an http(s) URL: {parts.scheme}://...")
        default_port = 443 if parts.scheme == "https" else 80
        port = parts.port or default_port
        self.origin = (parts.scheme, parts.hostname, port)
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        if port != default_port:
            host = f"{host}:{port}"
        path = _target_of(parts)
        if not REQUEST_TARGET.match(path):
            raise PermanentFailure("the URL has characters that cannot be sent unencoded")
        self.head_start = (
            f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {USER_AGENT}\r\n".encode(
                "ascii"
            )
        )


def encode_head(target: Target, request: Request) -> bytes:
    headers = request.headers
    # Both checks are character classes, so all values (and all names) pass together exactly
    # when each passes alone: two regex calls a request rather than two a header.
    names = ":".join(name for name, _ in headers)  # ":" is no token character: "a::b" fails
    if (
        not HEADER_NAMES.match(names)
        or names.count(":") != len(headers) - 1  # a name with ":" in it
        or not HEADER_VALUE.match("".join(value for _, value in headers))
    ):
        for name, value in headers:  # name the culprit
            if not HEADER_NAME.match(name) or not HEADER_VALUE.match(value):
                raise PermanentFailure(f"header {name!r} has characters that cannot be sent")
    lines = [f"{name}: {value}\r\n" for name, value in headers]
    if request.body or request.method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(request.body)}\r\n")
    lines.append("\r\n")
    return target.head_start + "".join(lines).encode("ascii")


class Connection:
    def __init__(self, stream: trio.abc.Stream, origin: tuple[str, str, int]):
        self.io = HTTPStream(stream)
        self.origin = origin
        self.idle_since = 0.0
        self.reused = False
        self.reusable = False

    async def roundtrip(self, data: bytes, max_body: int) -> Answer:
        self.reusable = False
        await self.io.send_all(data)
        while True:
            start, headers = await self.io.read_head()
            if not (found := _STATUS_LINE.match(start)):
                raise ProtocolError(f"not an HTTP/1.x response: status line {shown(start)}")
            status = int(found[1])
            if not 100 <= status <= 599 or status == 101:
                raise ProtocolError(_status_problem(status))
            if status >= 200:
                break  # 1xx answers (100 Continue, 103 Early Hints) precede the real one
        keep_alive = start[5:8] != b"1.0" and b"close" not in headers.get(b"connection", b"")
        if status in _NO_BODY_STATUSES:
            body, complete = b"", True
        elif b"transfer-encoding" in headers or b"content-length" in headers:
            length = self.io.body_length(headers)
            if length is None:
                body, complete = await self.io.read_chunked(max_body)
            elif length > max_body:
                # Enough to know the outcome; the rest is not worth reading, and the
                # connection cannot be reused mid-body.
                body, complete = await self.io.read_exactly(max_body), False
            else:
                body, complete = await self.io.read_exactly(length), True
        else:  # the body ends when the connection does
            body, complete = await self.io.read_to_close(max_body), False
        self.reusable = keep_alive and complete and not self.io.buffer
        return Answer(status, headers, body, self.io.last_head)


class Answer:
    """An answer as the wire gave it: ``headers`` by lowercased name, in bytes, and ``head`` as
    it came. ``HTTPClient.send`` makes a ``Response`` of it; relay's own attempt (relay/delivery/
    flat.py) reads it as it is, as decoding every header of every answer is work only a plugin
    would want done."""

    __slots__ = ("status", "headers", "body", "head")

    def __init__(self, status: int, headers: dict[bytes, bytes], body: bytes, head: bytes):
        self.status = status
        self.headers = headers
        self.body = body
        self.head = head

    def response(self) -> Response:
        return Response(
            status=self.status,
            headers=tuple(
                (k.decode("latin-1"), v.decode("latin-1")) for k, v in self.headers.items()
            ),
            body=self.body,
            head=self.head,
        )


class HTTPClient:
    """Pools of idle keep-alive connections, one per (scheme, host, port)."""

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None = None,
        network_policy: NetworkPolicy | None = None,
        max_idle_per_origin: int = 64,
        idle_timeout: float = 30.0,
        max_response_body: int = 64 * 1024,
    ):
        self._ssl_context = ssl_context
        self.network_policy = network_policy  # None: connect anywhere (tests, tools)
        self._idle: dict[tuple[str, str, int], deque[Connection]] = defaultdict(deque)
        self._targets: dict[tuple[str, str], Target] = {}
        self.max_idle_per_origin = max_idle_per_origin
        self.idle_timeout = idle_timeout
        self.max_response_body = max_response_body

    @property
    def ssl_context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context()
        return self._ssl_context

    def target(self, method: str, url: str) -> Target:
        """What ``url`` means to this client, worked out once per (method, URL); raises
        ``PermanentFailure`` for a URL it cannot send to."""
        target = self._targets.get((method, url))
        if target is None:
            if len(self._targets) >= _TARGETS_CACHED:  # composed URLs differ per event
                self._targets.clear()
            target = self._targets[(method, url)] = Target(url, method)
        return target

    async def send(self, request: Request) -> Response:
        return (await self.ask(request)).response()

    async def ask(self, request: Request, deadline: float = math.inf) -> Answer:
        """``send``'s answer as the wire gave it (``deadline``: as for ``exchange``)."""
        target = self.target(request.method, request.url)
        return await self.exchange(target, encode_head(target, request) + request.body, deadline)

    async def exchange(self, target: Target, data: bytes, deadline: float = math.inf) -> Answer:
        """Send ``data``, a whole request for ``target`` (head and body), on a pooled
        connection, and read the answer. ``deadline``: when the caller will cut the exchange
        short, if it does so by other means than a cancel scope's deadline (a TLS handshake
        that would outlive it times out a little before, and says so)."""
        connection = await self._checkout(target.origin, deadline)
        try:
            try:
                answer = await connection.roundtrip(data, self.max_response_body)
            except (trio.BrokenResourceError, ConnectionError, OSError):
                if not connection.reused or connection.io.buffer:
                    raise
                # The server closed an idle keep-alive connection just as we reused it:
                # nothing was answered, so try once on a fresh connection.
                await connection.io.aclose()
                connection = await self._connect(target.origin, deadline)
                answer = await connection.roundtrip(data, self.max_response_body)
        except BaseException as e:
            await connection.io.aclose()
            if isinstance(e, trio.BrokenResourceError) and not str(e):  # TLS says nothing
                raise ConnectionError(_broken(e.__cause__, target.origin[1])) from e
            raise
        await self._checkin(connection)
        return answer

    async def _checkout(self, origin, deadline: float = math.inf) -> Connection:
        idle = self._idle.get(origin)
        now = trio.current_time()
        while idle:
            connection = idle.pop()
            if now - connection.idle_since < self.idle_timeout:
                connection.reused = True
                return connection
            await connection.io.aclose()
        return await self._connect(origin, deadline)

    async def _connect(self, origin, deadline: float = math.inf) -> Connection:
        scheme, host, port = origin
        if self.network_policy is None:
            stream = await trio.open_tcp_stream(host, port)
        else:  # connect to the address that was checked: no second lookup
            stream = await _open_first(await resolve_allowed(self.network_policy, host, port), port)
        if scheme == "https":
            stream = trio.SSLStream(
                stream, self.ssl_context, server_hostname=host, https_compatible=True
            )
            try:
                await _handshake(stream, host, deadline)
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
        return Connection(stream, origin)

    async def _checkin(self, connection: Connection) -> None:
        idle = self._idle[connection.origin]
        if connection.reusable and len(idle) < self.max_idle_per_origin:
            connection.idle_since = trio.current_time()
            idle.append(connection)
        else:
            await connection.io.aclose()

    async def aclose(self) -> None:
        for idle in self._idle.values():
            while idle:
                await idle.pop().io.aclose()
        self._idle.clear()


async def _open_first(addresses: list[str], port: int) -> trio.SocketStream:
    """A connection to the first of ``addresses`` that accepts one, tried in order."""
    for address in addresses[:-1]:
        try:
            return await trio.open_tcp_stream(address, port)
        except OSError:
            continue
    return await trio.open_tcp_stream(addresses[-1], port)


class TLSError(ConnectionError):
    """A TLS handshake with a webhook's host failed; the message says how. (A ConnectionError:
    the attempt fails and is retried, as for any connection that could not be made.)"""


async def _handshake(stream: trio.SSLStream, host: str, cut_at: float) -> None:
    started = trio.current_time()
    deadline = min(
        started + HANDSHAKE_TIMEOUT,
        min(trio.current_effective_deadline(), cut_at) - _HANDSHAKE_MARGIN,
    )
    with trio.move_on_at(deadline) as scope:
        try:
            await stream.do_handshake()
        except trio.BrokenResourceError as e:
            raise TLSError(_tls_problem(e.__cause__, host)) from e
    if scope.cancelled_caught:
        elapsed = trio.current_time() - started
        raise TLSError(f"TLS handshake with {host} timed out after {elapsed:.1f} s")


def _tls_problem(cause: BaseException | None, host: str) -> str:
    """What a failed handshake's cause means, in words (ssl's own are in its reason codes)."""
    if isinstance(cause, ssl.SSLCertVerificationError):
        return f"certificate verify failed for host {host} ({cause.verify_message})"
    if cause is None or isinstance(cause, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return f"connection closed by {host} during the TLS handshake"
    if isinstance(cause, ssl.SSLError) and cause.reason:
        reason = cause.reason.lower().replace("_", " ")
        if cause.reason == "WRONG_VERSION_NUMBER":
            reason += " (is it a TLS port?)"
        return f"TLS handshake with {host} failed: {reason}"
    detail = cause.strerror if isinstance(cause, OSError) and cause.strerror else cause
    return f"TLS handshake with {host} failed: {detail}"


def _broken(cause: BaseException | None, host: str) -> str:
    if isinstance(cause, ssl.SSLError) and cause.reason:
        return f"connection to {host} broken: TLS {cause.reason.lower().replace('_', ' ')}"
    if isinstance(cause, OSError) and cause.strerror:
        return f"connection to {host} broken: {cause.strerror}"
    return f"connection to {host} broken" + (f": {cause}" if cause is not None else "")


def _status_problem(status: int) -> str:
    if status == 101:
        return "101 Switching Protocols, and relay asked for no upgrade"
    return f"status code {status:03d} is not one (RFC 9110 15: 100 to 599)"
