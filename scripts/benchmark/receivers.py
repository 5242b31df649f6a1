"""The receivers the systems deliver to: the Python one (an epoll loop in a process of its own,
``--role receiver``, which counts deliveries in a shared counter and notes when each latency
event arrived) or nginx; how the bench counts what reached them, and their own ceiling."""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import re
import selectors
import shutil
import socket
import struct
import sys
import time
from pathlib import Path

import trio

from .events import compact, content_length, post_bytes, status_event
from .load import RawConnection
from .processes import BENCH, Processes, free_port, wait_for_line


def receiver_role(args) -> None:
    """Answer every request with 204; count them in ``--count-file`` (a shared 8-byte counter)
    and note when each latency event (``"lat-N"``) is answered; ``GET /_arrivals`` hands those
    over.

    A plain epoll loop, not trio: it shares the two CPUs with the systems it measures, and
    measured at 1,000 requests/s it costs ~40 µs a request where a minimal trio server costs
    ~120 (both answering from prebuilt bytes)."""
    fd = os.open(args.count_file, os.O_RDWR)
    counter = mmap.mmap(fd, 8)
    arrivals: list[tuple[int, float]] = []
    count = 0
    listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
    listener.setblocking(False)
    print(f"listening {listener.getsockname()[1]}", flush=True)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    buffers: dict[socket.socket, bytearray] = {}

    def close(conn: socket.socket) -> None:
        selector.unregister(conn)
        del buffers[conn]
        conn.close()

    while True:
        for key, _ in selector.select():
            conn = key.fileobj
            if conn is listener:
                with contextlib.suppress(BlockingIOError):
                    conn, _ = listener.accept()
                    conn.setblocking(False)
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    buffers[conn] = bytearray()
                    selector.register(conn, selectors.EVENT_READ)
                continue
            try:
                data = conn.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                close(conn)
                continue
            buffer = buffers[conn]
            buffer += data
            out = []
            try:
                while (end := buffer.find(b"\r\n\r\n")) >= 0:
                    head = bytes(buffer[:end]).lower()
                    length = content_length(head)
                    if len(buffer) < end + 4 + length:
                        break
                    body = bytes(buffer[end + 4 : end + 4 + length])
                    del buffer[: end + 4 + length]
                    target = head.split(b" ", 2)[1]
                    if target == b"/_arrivals":
                        data = json.dumps(arrivals).encode()
                        arrivals.clear()
                        out.append(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(data))
                        out.append(data)
                        continue
                    out.append(b"HTTP/1.1 204 No Content\r\n\r\n")
                    if target != b"/ceiling":
                        count += 1
                        struct.pack_into("<Q", counter, 0, count)
                        at = body.find(b'"lat-')
                        if at >= 0:
                            seq = int(body[at + 5 : body.index(b'"', at + 5)])
                            arrivals.append((seq, time.monotonic()))
                if out:
                    conn.setblocking(True)  # an answer bigger than the socket's buffer
                    conn.sendall(b"".join(out))
                    conn.setblocking(False)
            except (OSError, ValueError, IndexError):
                close(conn)


class Receiver:
    kind = "python"

    def __init__(self, procs: Processes, name: str):
        self.procs = procs
        self.name = name

    async def start(self) -> None:
        self.count_file = self.procs.tmp / f"{self.name}.count"
        self.count_file.write_bytes(bytes(8))
        argv = [sys.executable, str(BENCH), "--role", "receiver", "--count-file"]
        self.proc, out, _ = self.procs.start(self.name, [*argv, str(self.count_file)])
        (port,) = await wait_for_line(out, r"^listening (\d+)$", self.proc)
        self.port = int(port)
        self._fd = os.open(self.count_file, os.O_RDONLY)
        self._map = mmap.mmap(self._fd, 8, prot=mmap.PROT_READ)

    def count(self) -> int:
        return struct.unpack_from("<Q", self._map, 0)[0]

    async def arrivals(self) -> dict[int, float]:
        conn = await RawConnection.open(("127.0.0.1", self.port))
        try:
            request = f"GET /_arrivals HTTP/1.1\r\nHost: x:{self.port}\r\n\r\n".encode()
            status, body = await conn.request(request)
        finally:
            await conn.aclose()
        return {seq: t for seq, t in json.loads(body)}


class NginxReceiver:
    """nginx from Debian: ``return 204``; a 4-byte access-log line ("204\\n") per request, so the
    log's size counts deliveries. One process (master_process off), run as the current user."""

    kind = "nginx"

    def __init__(self, procs: Processes, binary: str):
        self.procs = procs
        self.binary = binary

    async def start(self) -> None:
        prefix = self.procs.tmp / "nginx"
        prefix.mkdir()
        self.log = prefix / "access.log"
        self.log.touch()
        last_error = None
        for _ in range(3):  # the free port may be taken between choosing and binding it
            self.port = free_port()
            user = ""
            if os.geteuid() == 0:
                import grp
                import pwd

                entry = pwd.getpwuid(os.getuid())
                user = f"user {entry.pw_name} {grp.getgrgid(entry.pw_gid).gr_name};"
            temp = "\n".join(
                f"    {kind}_temp_path {prefix}/{kind};"
                for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
            )
            conf = prefix / "nginx.conf"
            conf.write_text(
                f"""{user}
daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
{temp}
    log_format bench '$status';
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    server {{
        listen 127.0.0.1:{self.port};
        location /ceiling {{ return 204; }}
        location / {{ access_log {self.log} bench; return 204; }}
    }}
}}
"""
            )
            argv = [
                self.binary,
                "-p",
                str(prefix),
                "-c",
                str(conf),
                "-e",
                str(prefix / "error.log"),
            ]
            self.proc, _, err = self.procs.start("nginx", argv)
            if await _port_open(self.port, self.proc):
                return
            last_error = (prefix / "error.log").read_text(errors="replace")[-1000:]
            self.procs.stop(self.proc)
        raise RuntimeError(f"nginx did not start: {last_error}")

    def count(self) -> int:
        return os.stat(self.log).st_size // 4


async def _port_open(port: int, proc, timeout: float = 10.0) -> bool:
    with trio.move_on_after(timeout):
        while proc.poll() is None:
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                await trio.sleep(0.02)
                continue
            await trio.aclose_forcefully(stream)
            return True
    return False


async def wait_count(count, target: int, timeout: float) -> tuple[bool, float]:
    """Poll ``count()`` until it reaches ``target``; (reached, when)."""
    deadline = time.monotonic() + timeout
    while True:
        now = time.monotonic()
        if count() >= target:
            return True, now
        if now > deadline:
            return False, now
        await trio.sleep(0.002)


async def measure_ceiling(receiver, seconds: float, tmp: Path) -> dict:
    """The receiver's own ceiling: wrk when installed, else the raw client at 64 connections."""
    url = f"http://127.0.0.1:{receiver.port}/ceiling"
    body = compact(status_event())
    wrk = shutil.which("wrk")
    if wrk:
        script = tmp / "post.lua"
        script.write_text(
            'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.body = {json.dumps(body.decode())}\n"
        )
        argv = [wrk, "-t1", "-c64", f"-d{max(1, round(seconds))}s", "-s", str(script), url]
        out = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)
        match = re.search(rb"Requests/sec:\s+([\d.]+)", out.stdout)
        if match:
            return {"tool": "wrk -t1 -c64", "requests_per_s": float(match[1])}
    request = post_bytes("/ceiling", body)
    done = 0
    deadline = time.monotonic() + seconds

    async def worker():
        nonlocal done
        conn = await RawConnection.open(("127.0.0.1", receiver.port))
        try:
            while time.monotonic() < deadline:
                await conn.request(request)
                done += 1
        finally:
            await conn.aclose()

    t0 = time.monotonic()
    async with trio.open_nursery() as nursery:
        for _ in range(64):
            nursery.start_soon(worker)
    return {
        "tool": "raw trio client, 64 connections",
        "requests_per_s": done / (time.monotonic() - t0),
    }
