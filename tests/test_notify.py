"""sd_notify (relay/notify.py): the real daemon, as a subprocess, tells the datagram socket named
by NOTIFY_SOCKET when it is ready, reloading and stopping, as systemd's Type=notify expects
(docs/relay.service)."""

import re
import signal
import time
import uuid

import httpx
import trio

from relay.journal import FILENAME
from tests.conftest import seed_events, start_receiver
from tests.daemon import Daemon, write_config


class NotifySocket:
    """What a service manager listens on: an AF_UNIX datagram socket."""

    def __init__(self, address: str):
        self.sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_DGRAM)
        self.address = address  # as NOTIFY_SOCKET says it: a path, or "@name" (abstract)

    async def bind(self) -> "NotifySocket":
        await self.sock.bind("\0" + self.address[1:] if self.address[0] == "@" else self.address)
        return self

    async def message(self) -> dict[str, str]:
        with trio.fail_after(20):
            data = await self.sock.recv(4096)
        return dict(line.split("=", 1) for line in data.decode().split("\n"))


async def test_ready_once_it_takes_events_reloading_then_ready_and_stopping(
    tmp_path, nursery, monkeypatch
):
    notify = await NotifySocket(str(tmp_path / "notify")).bind()
    monkeypatch.setenv("NOTIFY_SOCKET", notify.address)
    receiver = await start_receiver(nursery)
    daemon = await Daemon(write_config(tmp_path, receiver.url)).launch()

    ready = await notify.message()
    assert ready["READY"] == "1", ready
    # Ready means ready: the journal is open and both listeners take events, with no retry.
    assert (tmp_path / "state" / FILENAME).exists()
    assert (tmp_path / "relay.sock").exists()
    (tcp,) = re.findall(r"127\.0\.0\.1:\d+", ready["STATUS"])
    async with httpx.AsyncClient(base_url=f"http://{tcp}", timeout=10) as client:
        assert (await client.post("/events", json=seed_events()[0])).status_code == 202
    await receiver.wait_for(1)

    daemon.process.send_signal(signal.SIGHUP)
    reloading = await notify.message()
    assert reloading["RELOADING"] == "1", reloading
    # CLOCK_MONOTONIC is the machine's, the same in this process and the relay's.
    assert 0 <= time.monotonic_ns() // 1000 - int(reloading["MONOTONIC_USEC"]) < 60_000_000
    assert (await notify.message())["READY"] == "1"

    daemon.process.terminate()
    assert (await notify.message())["STOPPING"] == "1"
    assert await daemon.wait() == 0


async def test_an_abstract_socket_address_starts_with_an_at_sign(tmp_path, nursery, monkeypatch):
    notify = await NotifySocket(f"@relay-test-{uuid.uuid4().hex}").bind()
    monkeypatch.setenv("NOTIFY_SOCKET", notify.address)
    daemon = await Daemon(write_config(tmp_path, "http://127.0.0.1:9/")).launch()
    assert (await notify.message())["READY"] == "1"
    daemon.process.terminate()
    assert (await notify.message())["STOPPING"] == "1"
    assert await daemon.wait() == 0


async def test_a_socket_that_is_not_there_is_logged_and_the_relay_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    daemon = await Daemon(write_config(tmp_path, "http://127.0.0.1:9/")).start()
    async with httpx.AsyncClient(base_url=daemon.url, timeout=10) as client:
        assert (await client.post("/events", json=seed_events()[0])).status_code == 202
    assert "cannot tell the service manager READY=1 (NOTIFY_SOCKET)" in daemon.log.read_text()
    daemon.process.terminate()
    assert await daemon.wait() == 0
