"""HTTP/1.1 message framing (RFC 9112), shared by the ingest server and the delivery client.

Why not h11: measured here, h11 costs ~100 µs of CPU per request on each side, and at saturation
it was the largest single item in the relay's profile (47% of the delivery side, 58% of ingest
with single-event requests). relay speaks a narrow HTTP: small JSON in, small answers out. So
heads are found with ``bytes.find`` and split once; bodies are framed by Content-Length, chunked
encoding, or (answers only) the connection's end. What this module does not accept, it refuses
loudly (``ProtocolError``, naming what was wrong), never guesses: both Content-Length and
Transfer-Encoding, a transfer coding other than chunked, a Content-Length that is not digits (or a
list of one value repeated), a header without a colon or with space before it, obsolete line
folding, a control character anywhere in a head (CR, LF and NUL are how headers get smuggled),
a chunk size that is not hex digits, oversized heads. Lenient parsing is how a message means one
thing to relay and another to the peer (RFC 9112 11.2).
"""

from __future__ import annotations

import re

import trio
from trio.lowlevel import (
    cancel_shielded_checkpoint,
    checkpoint_if_cancelled,
    wait_readable,
    wait_writable,
)

READ_SIZE = 65536
MAX_HEAD = 64 * 1024
MAX_HEADERS = 100
_TOKEN_TEXT = r"[-!#$%&'*+.^_`|~0-9A-Za-z]+\Z"  # RFC 9110 token: a header name
# What relay may send, checked before anything is: text h11 or any strict peer would refuse,
# or that could end a header line early (CR, LF, NUL), never goes out.
HEADER_NAME = re.compile(_TOKEN_TEXT)
HEADER_VALUE = re.compile(r"[\t\x20-\x7e]*\Z")  # visible ASCII, space and tab
REQUEST_TARGET = re.compile(r"[\x21-\x7e]*\Z")  # visible ASCII: no space, no control
_TOKEN = re.compile(_TOKEN_TEXT.encode())
_LENGTH = re.compile(rb"[0-9]{1,18}\Z")  # int() of 4,300+ digits raises; no body is that big
# chunk-size [ BWS ";" chunk-ext ] (RFC 9112 7.1.1): int(x, 16) alone takes "-1", "0x1", "1_0",
# " 1"; extensions are ignored but must be text.
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,15})(?:[ \t]*;[\t\x20-\x7e\x80-\xff]*)?\Z")
_FIELD_LINE = re.compile(_TOKEN_TEXT.removesuffix(r"\Z").encode() + rb":[\t\x20-\x7e\x80-\xff]*\Z")
# What no line of a head may hold: controls but HTAB (RFC 9110 5.5: field values are visible
# text, space, tab and obs-text), so CR and LF only as the CRLF that ends a line.
_CONTROLS = bytes([*range(0x09), *range(0x0A, 0x20), 0x7F])


class ProtocolError(Exception):
    """The peer's message is not HTTP/1.1 as relay reads it; ``status`` is the answer a server
    gives to it."""

    def __init__(self, message: str, status: int = 400):
        self.status = status
        super().__init__(message)


class Closed(ConnectionError):
    """The peer closed the connection cleanly before a new message began."""


class HTTPStream:
    """A byte stream with a read buffer, and the framing operations both sides need."""

    def __init__(self, stream: trio.abc.Stream):
        self.stream = stream
        self.buffer = bytearray()
        self.last_head = b""  # the last head read_head read, as it came (the client keeps it)
        # The stdlib socket itself, not trio's wrappers: measured, trio's socket methods cost
        # ~2.4 µs per call more than the same syscall and checkpoints done here (SocketStream's
        # context manager and conflict detector, then _nonblocking_helper's async context
        # manager), at two calls per request.
        self._sock = getattr(getattr(stream, "socket", None), "_sock", None)
        if isinstance(stream, trio.SocketStream) and self._sock is not None:
            self.send_all = self._socket_send_all
            self._receive_some = self._socket_receive_some
        else:
            self.send_all = stream.send_all
            self._receive_some = stream.receive_some

    async def _socket_receive_some(self, size: int) -> bytes:
        """What trio's ``socket.recv`` does: a cancel point, the call, a schedule point if
        it succeeded, else wait until the socket is readable."""
        sock = self._sock
        await checkpoint_if_cancelled()
        try:
            data = sock.recv(size)
        except BlockingIOError:
            pass
        else:
            await cancel_shielded_checkpoint()
            return data
        while True:
            await wait_readable(sock)
            try:
                return sock.recv(size)
            except BlockingIOError:
                pass

    async def _socket_send_all(self, data: bytes) -> None:
        """Send all of ``data``, then a schedule point (measured: yielding after each answer lets
        the other connections answer too before any reads, so reads find their data ready)."""
        sock = self._sock
        await checkpoint_if_cancelled()
        view = memoryview(data)
        while view:
            try:
                view = view[sock.send(view) :]
            except BlockingIOError:
                await wait_writable(sock)
        await cancel_shielded_checkpoint()

    async def fill(self) -> None:
        data = await self._receive_some(READ_SIZE)
        if not data:
            raise ConnectionError("the connection closed in the middle of a message")
        self.buffer += data

    async def read_head(self) -> tuple[bytes, dict[bytes, bytes]]:
        """The start line and the headers (names lowercased) of the next message.

        Raises ``Closed`` if the peer closes before sending a byte of it.
        """
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            if len(self.buffer) > MAX_HEAD:
                raise ProtocolError("message head too large", 431)
            data = await self._receive_some(READ_SIZE)
            if not data:
                if self.buffer.strip():
                    raise ConnectionError("the connection closed in the middle of a message")
                raise Closed
            self.buffer += data
        if end > MAX_HEAD:
            raise ProtocolError("message head too large", 431)
        head = self.last_head = bytes(self.buffer[:end])
        del self.buffer[: end + 4]
        lines = head.split(b"\r\n")
        # Every control character goes, CR and LF too: if only the CRLFs between lines went,
        # the head holds none other (one pass in C, ~0.2 µs, instead of a regex per line).
        if len(head.translate(None, _CONTROLS)) != len(head) - 2 * (len(lines) - 1):
            raise ProtocolError(_control_problem(lines))
        while lines and not lines[0]:  # RFC 9112 2.2: ignore empty lines before a request
            lines.pop(0)
        if not lines:
            raise ProtocolError("empty message head")
        if len(lines) > MAX_HEADERS + 1:
            raise ProtocolError("too many header lines", 431)
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not _TOKEN.match(name):
                raise ProtocolError(_header_line_problem(line))
            name = name.lower()
            value = value.strip(b" \t")
            if name in headers:  # a list (RFC 9110 5.3); body_length checks Content-Length's
                value = headers[name] + b", " + value
            headers[name] = value
        return lines[0], headers

    def body_length(self, headers: dict[bytes, bytes]) -> int | None:
        """Content-Length as an int; None when the body is chunked. Refuses what is ambiguous
        (RFC 9112 6.3: both headers is how requests get smuggled)."""
        encoding = headers.get(b"transfer-encoding")
        length = headers.get(b"content-length")
        if encoding is not None:
            if length is not None:
                raise ProtocolError("both Content-Length and Transfer-Encoding")
            if encoding.lower() != b"chunked":
                raise ProtocolError("only the chunked transfer coding is supported", 501)
            return None
        if length is None:
            return 0
        if not _LENGTH.match(length):
            return _one_length(length)
        return int(length)

    async def read_exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            await self.fill()
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    async def read_chunked(self, limit: int) -> tuple[bytes, bool]:
        """A chunked body, and whether it was read whole: past ``limit`` bytes reading stops."""
        chunks, size = [], 0
        while True:
            line = await self._read_line()
            if not (found := _CHUNK_LINE.match(line)):
                raise ProtocolError(f"bad chunk size line: {shown(line)}")
            chunk = int(found[1], 16)
            if chunk == 0:
                while trailer := await self._read_line():  # trailer fields, up to the empty line
                    if not _FIELD_LINE.match(trailer):
                        raise ProtocolError(f"bad trailer field line: {shown(trailer)}")
                return b"".join(chunks), True
            size += chunk
            if size > limit:
                return b"".join(chunks), False
            chunks.append(await self.read_exactly(chunk))
            if await self.read_exactly(2) != b"\r\n":
                raise ProtocolError("chunk not followed by CRLF")

    async def _read_line(self) -> bytes:
        while (end := self.buffer.find(b"\r\n")) < 0:
            if len(self.buffer) > MAX_HEAD:
                raise ProtocolError("line too long")
            await self.fill()
        line = bytes(self.buffer[:end])
        del self.buffer[: end + 2]
        return line

    async def read_to_close(self, limit: int) -> bytes:
        """A body that ends when the connection does (answers without framing)."""
        try:
            while len(self.buffer) <= limit:
                await self.fill()
        except ConnectionError:
            pass
        return bytes(self.buffer[:limit])

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)


def _one_length(value: bytes) -> int:
    """A Content-Length that came as a list: "42, 42" is one value repeated (an upstream merged
    two identical headers; RFC 9110 8.6 lets a recipient take it as 42), anything else a message
    whose length cannot be known (RFC 9112 6.3)."""
    values = {v.strip(b" \t") for v in value.split(b",")}
    if not all(_LENGTH.match(v) for v in values):
        raise ProtocolError(f"bad Content-Length: {shown(value)} (digits only)")
    if len({int(v) for v in values}) != 1:
        raise ProtocolError(f"conflicting Content-Length values: {shown(value)}")
    return int(values.pop())


def _control_problem(lines: list[bytes]) -> str:
    """Which line of a head holds a control character, and which one (the error path only)."""
    for i, line in enumerate(lines):
        bad = next((b for b in line if b in _CONTROLS), None)
        if bad is None:
            continue
        if i == 0 or b":" not in line:
            return f"control character 0x{bad:02x} in the head's line {shown(line)}"
        name = line.partition(b":")[0]
        return f"control character 0x{bad:02x} in the value of header {shown(name)}"
    return "control character in the message head"


def _header_line_problem(line: bytes) -> str:
    """Why ``line`` is no header field line (RFC 9112 5): the error path only."""
    name, colon, _ = line.partition(b":")
    if line[:1] in (b" ", b"\t"):
        return f"obsolete line folding (RFC 9112 5.2): {shown(line)}"
    if not colon:
        return f"header line without a colon: {shown(line)}"
    if name.rstrip(b" \t") != name:
        return f"whitespace between header name and colon (RFC 9112 5.1): {shown(name)}"
    if not name:
        return "header line with an empty name"
    return f"header name is not a token: {shown(name)}"


def shown(text: bytes, limit: int = 60) -> str:
    """Peer bytes as they may appear in an error: quoted, escaped, cut short."""
    quoted = repr(text[:limit])[1:]
    return quoted + ("..." if len(text) > limit else "")
