"""A small keep-alive HTTP/1.1 client on trio + h11: the component that owns outgoing connections.

Why not httpx: measured on this machine (../shared/design/performance.md), one shared
httpx.AsyncClient delivers ~800 requests/s and queues unfairly; a plain h11 loop ~8,000/s. relay
needs exactly one thing from a client: send a request, read a bounded answer, reuse the connection.

The caller bounds each request in time (a cancel scope); a request that is cancelled or fails
leaves its connection closed, never back in the pool. Redirects are not followed.
"""

from __future__ import annotations

import ssl
from collections import defaultdict, deque
from urllib.parse import urlsplit

import h11
import trio

from relay.model import Request, Response

USER_AGENT = "relay/0.1"
READ_SIZE = 65536


class Connection:
    def __init__(self, stream: trio.abc.Stream, origin: tuple[str, str, int]):
        self.stream = stream
        self.origin = origin
        self.h11 = h11.Connection(h11.CLIENT)
        self.idle_since = 0.0
        self.reused = False

    async def roundtrip(self, request: h11.Request, body: bytes, max_body: int) -> Response:
        out = self.h11.send(request)
        if body:
            out += self.h11.send(h11.Data(data=body))
        await self.stream.send_all(out + self.h11.send(h11.EndOfMessage()))
        response = await self._next_event()
        while isinstance(response, h11.InformationalResponse):
            response = await self._next_event()
        if not isinstance(response, h11.Response):
            raise ConnectionError("the connection closed before a response")
        chunks, size = [], 0
        while True:
            event = await self._next_event()
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > max_body:
                    # Enough to know the outcome; the rest is not worth reading. The connection
                    # cannot be reused mid-body, so the pool will close it.
                    break
                chunks.append(event.data)
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                break
        return Response(
            status=response.status_code,
            headers=tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in response.headers),
            body=b"".join(chunks),
        )

    async def _next_event(self):
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                data = await self.stream.receive_some(READ_SIZE)
                self.h11.receive_data(data)
                continue
            return event

    def reusable(self) -> bool:
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
            return True
        return False


class HTTPClient:
    """Pools of idle keep-alive connections, one per (scheme, host, port)."""

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None = None,
        max_idle_per_origin: int = 64,
        idle_timeout: float = 30.0,
        max_response_body: int = 64 * 1024,
    ):
        self._ssl_context = ssl_context
        self._idle: dict[tuple[str, str, int], deque[Connection]] = defaultdict(deque)
        self.max_idle_per_origin = max_idle_per_origin
        self.idle_timeout = idle_timeout
        self.max_response_body = max_response_body

    @property
    def ssl_context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context()
        return self._ssl_context

    async def send(self, request: Request) -> Response:
        url = urlsplit(request.url)
        origin = (
            url.scheme,
            url.hostname or "",
            url.port or (443 if url.scheme == "https" else 80),
        )
        target = (url.path or "/") + (f"?{url.query}" if url.query else "")
        default_port = origin[2] == (443 if url.scheme == "https" else 80)
        host = _host_header(origin[1], origin[2], default_port)
        headers = [("Host", host), ("User-Agent", USER_AGENT)]
        headers.extend(request.headers)
        if request.body or request.method in ("POST", "PUT", "PATCH"):
            headers.append(("Content-Length", str(len(request.body))))
        h11_request = h11.Request(method=request.method, target=target, headers=headers)

        connection = await self._checkout(origin)
        try:
            try:
                response = await connection.roundtrip(
                    h11_request, request.body, self.max_response_body
                )
            except (trio.BrokenResourceError, ConnectionError, h11.RemoteProtocolError, OSError):
                if not connection.reused:
                    raise
                # The server closed an idle keep-alive connection just as we reused it:
                # nothing was answered, so try once on a fresh connection.
                await trio.aclose_forcefully(connection.stream)
                connection = await self._connect(origin)
                response = await connection.roundtrip(
                    h11_request, request.body, self.max_response_body
                )
        except BaseException:
            await trio.aclose_forcefully(connection.stream)
            raise
        await self._checkin(connection)
        return response

    async def _checkout(self, origin) -> Connection:
        idle = self._idle.get(origin)
        now = trio.current_time()
        while idle:
            connection = idle.pop()
            if now - connection.idle_since < self.idle_timeout:
                connection.reused = True
                return connection
            await trio.aclose_forcefully(connection.stream)
        return await self._connect(origin)

    async def _connect(self, origin) -> Connection:
        scheme, host, port = origin
        stream = await trio.open_tcp_stream(host, port)
        if scheme == "https":
            stream = trio.SSLStream(
                stream, self.ssl_context, server_hostname=host, https_compatible=True
            )
            try:
                await stream.do_handshake()
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
        return Connection(stream, origin)

    async def _checkin(self, connection: Connection) -> None:
        idle = self._idle[connection.origin]
        if connection.reusable() and len(idle) < self.max_idle_per_origin:
            connection.idle_since = trio.current_time()
            idle.append(connection)
        else:
            await trio.aclose_forcefully(connection.stream)

    async def aclose(self) -> None:
        for idle in self._idle.values():
            while idle:
                await trio.aclose_forcefully(idle.pop().stream)
        self._idle.clear()


def _host_header(host: str, port: int, default_port: bool) -> str:
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return host if default_port else f"{host}:{port}"
