"""Clients that try to lock ingest out: idle connections up to the open-files limit, a head sent
a byte at a time, answers never read, accept failing with EMFILE. The real daemon where the
limit is the process's; elsewhere the server on in-memory streams under trio's MockClock, so that
deadlines of 10 s and 300 s pass in no time and nothing races a real socket."""

from __future__ import annotations

import errno
import logging
import math
import re
import resource

import httpx
import pytest
import trio
import trio.testing

from relay.http import server as http_server
from relay.http.server import HTTPServer
from tests.conftest import seed_events
from tests.daemon import Daemon

OPEN_FILES = 256  # the daemon's hard limit in the test: a cap reached with a few hundred sockets


def low_open_files_limit():
    # The soft limit below the hard one: the relay raises it.
    resource.setrlimit(resource.RLIMIT_NOFILE, (OPEN_FILES // 2, OPEN_FILES))


async def test_idle_connections_up_to_the_open_files_limit_do_not_lock_ingest_out(tmp_path):
    config = tmp_path / "relay.toml"
    config.write_text(
        """
[relay]
listen = "127.0.0.1:0"
state_dir = "state"
log_level = "debug"

[[webhooks]]
id = "crm"
url = "http://127.0.0.1:9/never"
events = ["nothing:*"]
"""
    )
    daemon = await Daemon(config, preexec_fn=low_open_files_limit).start()
    limits = (trio.Path("/proc") / str(daemon.process.pid) / "limits").read_text
    assert re.search(rf"Max open files\s+{OPEN_FILES}\s+{OPEN_FILES}", await limits())
    host, port = daemon.url.removeprefix("http://").rsplit(":", 1)
    idle = []
    try:
        with trio.fail_after(20):  # a hang guard, not a measure of speed
            for _ in range(2 * OPEN_FILES):  # twice what the relay could hold
                idle.append(await trio.open_tcp_stream(host, int(port)))
            async with httpx.AsyncClient(base_url=daemon.url, timeout=None) as client:
                response = await client.post("/events", json=seed_events()[0])
                assert response.status_code == 202
                assert (await client.get("/healthz")).status_code == 200
    finally:
        for stream in idle:
            await stream.aclose()
        daemon.process.terminate()
        await daemon.wait()
    log = daemon.log.read_text()
    assert "Traceback" not in log
    assert f"open files limit: {OPEN_FILES}" in log
    assert re.search(r"at the connection limit \(\d+\): closed \d+ idle connections", log)
    assert len(re.findall("cannot accept", log)) <= 3


class MemoryListener(trio.abc.Listener):
    """Connections as in-memory stream pairs: ``connect()`` gives the client's end."""

    def __init__(self, pair=trio.testing.memory_stream_pair):
        self.pair = pair
        self._send, self._receive = trio.open_memory_channel(math.inf)

    async def connect(self) -> trio.abc.Stream:
        client, server = self.pair()
        self._send.send_nowait(server)
        return client

    async def accept(self) -> trio.abc.Stream:
        return await self._receive.receive()

    async def aclose(self) -> None:
        pass


async def echo(request):
    return 200, {"path": request.path}


async def serve(nursery, listener, **settings) -> HTTPServer:
    server = HTTPServer(echo, max_body=65536, **settings)
    await nursery.start(server.serve, [listener])
    return server


REQUEST = b"GET /x HTTP/1.1\r\nHost: relay\r\n\r\n"


async def answer_or_close(stream: trio.abc.Stream) -> bytes:
    """The next answer's bytes, or b"" if the server closed the connection instead."""
    data = b""
    while b"\r\n\r\n" not in data or not data.endswith(b"}"):
        chunk = await stream.receive_some(65536)
        if not chunk:
            return data
        data += chunk
    return data


async def test_a_head_sent_a_byte_every_3_s_is_cut_at_the_head_deadline(nursery, autojump_clock):
    listener = MemoryListener()
    await serve(nursery, listener)
    client = await listener.connect()

    async def drip():  # 33 bytes in 99 s: with no deadline the whole head would come in time
        for byte in REQUEST:
            try:
                await client.send_all(bytes([byte]))
            except trio.BrokenResourceError:
                return
            await trio.sleep(3)

    started = trio.current_time()
    nursery.start_soon(drip)
    with trio.fail_after(http_server.IDLE_TIMEOUT / 2):  # the idle timeout is not what ends it
        assert await client.receive_some(65536) == b""  # closed, nothing answered
    cut_after = trio.current_time() - started
    # Late by up to three sweeps: the one that sees the first byte, the margin the coarse clock
    # adds, the one that finds the deadline passed.
    assert http_server.HEAD_TIMEOUT <= cut_after <= http_server.HEAD_TIMEOUT + 3


async def test_a_connection_idle_before_its_first_byte_gets_the_idle_timeout(
    nursery, autojump_clock
):
    listener = MemoryListener()
    await serve(nursery, listener)
    client = await listener.connect()
    await trio.sleep(http_server.HEAD_TIMEOUT * 5)  # the head deadline starts at its first byte
    await client.send_all(REQUEST)
    assert (await answer_or_close(client)).startswith(b"HTTP/1.1 200 OK")
    await trio.sleep(http_server.IDLE_TIMEOUT + 3 * http_server.SWEEP_INTERVAL)
    assert await answer_or_close(client) == b""  # idle after its answer: closed


@pytest.mark.parametrize(
    "request_bytes",
    [
        REQUEST,  # 200
        b"GET /x HTTP/1.1\r\n\r\n",  # 400: no Host
        b"POST /x HTTP/1.1\r\nHost: relay\r\nContent-Length: 99999999\r\n\r\n",  # 413
    ],
)
async def test_an_answer_the_client_never_reads_ends_the_connection(
    nursery, autojump_clock, request_bytes
):
    # Lockstep streams: the server's send blocks until the client reads, as on a full socket.
    listener = MemoryListener(trio.testing.lockstep_stream_pair)
    await serve(nursery, listener)
    client = await listener.connect()
    await client.send_all(request_bytes)
    await trio.sleep(http_server.REQUEST_TIMEOUT + 3 * http_server.SWEEP_INTERVAL)
    with trio.move_on_after(1):  # still reading nothing: has it given up on us?
        try:
            await client.send_all(b"x")
        except trio.BrokenResourceError:
            return  # it closed the connection
    pytest.fail("the server is still waiting for the client to read its answer")


async def test_at_the_cap_the_longest_idle_connections_are_closed_and_newcomers_served(
    nursery, autojump_clock
):
    listener = MemoryListener()
    await serve(nursery, listener, max_connections=4)
    partial = await listener.connect()  # the oldest, but it has begun a request
    await partial.send_all(REQUEST[:10])
    idle = []
    for _ in range(3):  # all within the head deadline of the partial one
        await trio.sleep(2)
        idle.append(await listener.connect())
    await trio.sleep(1)  # the fourth reached the cap: the longest idle one went
    newcomer = await listener.connect()  # the cap again: the next longest idle one goes
    await newcomer.send_all(REQUEST)
    assert (await answer_or_close(newcomer)).startswith(b"HTTP/1.1 200 OK")
    assert [await answer_or_close(s) for s in idle[:2]] == [b"", b""]
    for stream in (idle[2], partial):  # the youngest idle one, and the one that had sent bytes
        await stream.send_all(REQUEST if stream is idle[2] else REQUEST[10:])
        assert (await answer_or_close(stream)).startswith(b"HTTP/1.1 200 OK")


class FailingListener(trio.abc.Listener):
    """accept() fails with EMFILE until ``fail_until``, then gives in-memory connections."""

    def __init__(self, fail_until: float):
        self.fail_until = fail_until
        self.calls = 0
        self.memory = MemoryListener()

    async def accept(self) -> trio.abc.Stream:
        self.calls += 1
        await trio.lowlevel.checkpoint()
        if trio.current_time() < self.fail_until:
            raise OSError(errno.EMFILE, "Too many open files")
        return await self.memory.accept()

    async def aclose(self) -> None:
        pass


async def test_emfile_on_accept_is_logged_once_per_interval_and_accept_backs_off(
    nursery, autojump_clock, caplog
):
    caplog.set_level(logging.DEBUG)
    listener = FailingListener(fail_until=trio.current_time() + 60)
    await serve(nursery, listener)
    await trio.sleep(61)
    # The descriptors came back: connections are accepted again.
    client = await listener.memory.connect()
    await client.send_all(REQUEST)
    assert (await answer_or_close(client)).startswith(b"HTTP/1.1 200 OK")

    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert 2 <= len(lines) <= 60 / http_server.LOG_INTERVAL + 1
    assert all("cannot accept connections: Too many open files (EMFILE)" in x for x in lines)
    assert re.search(r"\(\d+ times in 10 s\)", lines[-1])
    assert not any(r.exc_info for r in caplog.records)  # no tracebacks
    assert listener.calls <= 61 / http_server.ACCEPT_BACKOFF + 2  # it waited between tries
