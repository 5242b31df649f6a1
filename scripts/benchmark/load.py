"""The load generators: a raw trio HTTP/1.1 client that sends prebuilt bytes (the end-to-end
phases, the receiver's ceiling, the receiver's arrivals), and the sender, an epoll loop in a
process of its own (``--role sender``) for the paced and the ingest phases, which notes when each
request was due and when it was answered."""

from __future__ import annotations

import collections
import json
import os
import selectors
import socket
import time
from pathlib import Path

import trio

from .cpu import waits_of
from .events import compact, content_length, latency_event, post_bytes


class RawConnection:
    """A prebuilt-bytes HTTP/1.1 client: cheap, so the load generator is never the bottleneck."""

    def __init__(self, stream: trio.abc.Stream):
        self.stream = stream
        self.buf = bytearray()

    @classmethod
    async def open(cls, target) -> RawConnection:
        if isinstance(target, str):
            return cls(await trio.open_unix_socket(target))
        return cls(await trio.open_tcp_stream(*target))

    async def request(self, data: bytes) -> tuple[int, bytes]:
        await self.stream.send_all(data)
        buf = self.buf
        while (end := buf.find(b"\r\n\r\n")) < 0:
            await self._fill()
        head = bytes(buf[:end])
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        total = end + 4 + length
        while len(buf) < total:
            await self._fill()
        body = bytes(buf[end + 4 : total])
        del buf[:total]
        return status, body

    async def _fill(self) -> None:
        chunk = await self.stream.receive_some(65536)
        if not chunk:
            raise ConnectionError("connection closed")
        self.buf += chunk

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)


# -- role: the sender (subprocess) -----------------------------------------------------------


def sender_role(args) -> None:
    """``--events`` requests to ``--port`` (``--path``) on ``--connections`` keep-alive
    connections, each on the first free one; prints when each was answered, as JSON.

    Paced (``--rate`` per second): request i is due at t0 + i / rate, and the latency events
    (``latency_event``) are numbered; one that finds no free connection waits for one, and its
    latency still counts from when it was due (no coordinated omission). Flooding (``--rate
    0``): ``--body`` is sent as soon as a connection is free, for at most ``--seconds``.

    A plain epoll loop for the same reason as the receiver's: as trio code the sender took
    ~120 µs of CPU an event at 3,000/s, and ~60 a single-event request when flooding, CPU the
    systems measured beside it did not get."""
    n, rate = args.events, args.rate
    if args.body:
        payloads = [post_bytes(args.path, Path(args.body).read_bytes())] * n
    else:
        payloads = [post_bytes(args.path, compact(latency_event(seq))) for seq in range(n)]
    selector = selectors.DefaultSelector()
    idle: collections.deque[socket.socket] = collections.deque()
    buffers: dict[socket.socket, bytearray] = {}
    for _ in range(args.connections):
        conn = socket.create_connection(("127.0.0.1", args.port))
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.setblocking(False)
        selector.register(conn, selectors.EVENT_READ)
        buffers[conn] = bytearray()
        idle.append(conn)
    in_flight: dict[socket.socket, int] = {}
    waiting: collections.deque[int] = collections.deque()
    answered: list[float | None] = [None] * n
    errors = lost = due = 0
    cpu0, waits0 = time.process_time(), waits_of(os.getpid())
    if rate:  # the last is due at t0 + n / rate; past that, --seconds for the answers
        t0 = time.monotonic() + 0.01
        stop_sending = give_up = t0 + n / rate + args.seconds
    else:  # all are due now; past --seconds, only what was sent is waited for (30 s at most)
        t0 = time.monotonic()
        waiting, due = collections.deque(range(n)), n
        stop_sending, give_up = t0 + args.seconds, t0 + args.seconds + 30

    def drop(conn: socket.socket) -> None:
        """The system closed or broke a connection: what was in flight on it is lost."""
        nonlocal lost
        lost += conn in in_flight
        in_flight.pop(conn, None)
        selector.unregister(conn)
        del buffers[conn]
        conn.close()

    while True:
        now = time.monotonic()
        while due < n and t0 + due / rate <= now:
            waiting.append(due)
            due += 1
        if now > stop_sending:
            waiting.clear()
        while waiting and idle:
            conn = idle.popleft()
            in_flight[conn] = seq = waiting.popleft()
            conn.setblocking(True)  # a request is far smaller than the socket's buffer
            conn.sendall(payloads[seq])
            conn.setblocking(False)
        if not in_flight and not waiting and (due == n or now > stop_sending) or now > give_up:
            break
        if not buffers:
            break  # no connection left
        wake = give_up
        if due < n:
            wake = min(wake, t0 + due / rate)
        if now <= stop_sending:
            wake = min(wake, stop_sending)
        for key, _ in selector.select(max(0.0, wake - now)):
            conn = key.fileobj
            try:
                data = conn.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data or conn not in in_flight:  # closed, or an answer to nothing
                drop(conn)
                continue
            buffer = buffers[conn]
            buffer += data
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                continue
            length = content_length(bytes(buffer[:end]).lower())
            if len(buffer) < end + 4 + length:
                continue
            status = int(buffer[9:12])
            del buffer[: end + 4 + length]
            answered[in_flight.pop(conn)] = time.monotonic()
            errors += not 200 <= status < 300
            idle.append(conn)
    # errors: answers not 2xx; lost: sent on a connection the system closed, never answered
    result = {"t0": t0, "answered": answered, "errors": errors, "lost": lost}
    result.update(cpu=time.process_time() - cpu0, waits=waits_of(os.getpid()) - waits0)
    print(json.dumps(result), flush=True)
