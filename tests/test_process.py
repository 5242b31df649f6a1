"""The real daemon as a subprocess: kill -9 loses no acknowledged event; SIGTERM drains."""

import json
import os
import signal
import sqlite3
from pathlib import Path

import httpx
import trio

from tests.conftest import seed_events
from tests.daemon import Daemon, add_plugin, webhook_toml, write_config

STATUS = seed_events()[0]


def marked(i: int) -> dict:
    return {**STATUS, "payload": {**STATUS["payload"], "foreign_id": f"m{i}"}}


async def test_kill_9_loses_no_acknowledged_event(tmp_path, nursery):
    from tests.conftest import start_receiver

    receiver = await start_receiver(nursery)
    receiver.statuses = [503] * 1_000_000  # down: everything accepted stays pending
    daemon = await Daemon(write_config(tmp_path, receiver.url)).start()

    acknowledged: set[str] = set()

    async def send(client: httpx.AsyncClient, first: int):
        for batch in range(first, first + 10_000, 5):
            events = [marked(i) for i in range(batch, batch + 5)]
            try:
                response = await client.post("/events", json=events)
            except httpx.HTTPError:
                return  # the relay died mid-request: not acknowledged
            assert response.status_code == 202
            acknowledged.update(e["payload"]["foreign_id"] for e in events)

    async with httpx.AsyncClient(base_url=daemon.url, timeout=10) as client:
        async with trio.open_nursery() as senders:
            for n in range(8):
                senders.start_soon(send, client, n * 10_000)
            with trio.fail_after(20):
                while len(acknowledged) < 500:
                    await trio.sleep(0.01)
            daemon.process.kill()  # SIGKILL while requests are in flight
    assert await daemon.wait() == -signal.SIGKILL

    receiver.statuses.clear()  # the receiver comes back
    restarted = await Daemon(daemon.config).start()
    try:
        with trio.fail_after(60):
            while not acknowledged <= {b["payload"]["foreign_id"] for b in receiver.bodies()}:
                await trio.sleep(0.1)
    finally:
        restarted.process.terminate()
        await restarted.wait()


async def test_sigterm_lets_the_attempt_in_flight_finish_and_exits_0(tmp_path, nursery):
    from tests.conftest import start_receiver

    receiver = await start_receiver(nursery)
    receiver.hang = 1.0
    daemon = await Daemon(write_config(tmp_path, receiver.url)).start()
    async with httpx.AsyncClient(base_url=daemon.url) as client:
        assert (await client.post("/events", json=STATUS)).status_code == 202
    await receiver.wait_for(1)
    daemon.process.send_signal(signal.SIGTERM)
    assert await daemon.wait() == 0
    with sqlite3.connect(tmp_path / "state" / "journal.sqlite3") as conn:
        assert conn.execute("SELECT state FROM deliveries").fetchall() == [("delivered",)]


async def test_sigterm_past_the_grace_keeps_the_delivery_for_the_next_run(tmp_path, nursery):
    receiver, config, daemon = await one_attempt_in_flight(tmp_path, nursery, grace=0.5)
    daemon.process.send_signal(signal.SIGTERM)
    assert await daemon.wait(timeout=5) == 0
    await next_run_delivers_it_again(receiver, config)


async def test_a_dead_journal_writer_stops_the_relay_and_nothing_is_acknowledged(tmp_path, nursery):
    from tests.conftest import start_receiver

    receiver = await start_receiver(nursery)
    daemon = await Daemon(write_config(tmp_path, receiver.url)).start()
    os.kill(daemon.child("relay.journal.writer"), signal.SIGKILL)
    async with httpx.AsyncClient(base_url=daemon.url) as client:
        try:
            response = await client.post("/events", json=STATUS)
        except httpx.HTTPError:
            pass  # the relay may be gone already
        else:
            assert response.status_code == 503
    assert await daemon.wait() == 1
    assert "stopping: the journal writer failed" in daemon.log.read_text()


async def test_a_dead_delivery_process_stops_the_relay_and_the_next_run_delivers(tmp_path, nursery):
    receiver, config, daemon = await one_attempt_in_flight(tmp_path, nursery)
    os.kill(daemon.child("relay.delivery.process"), signal.SIGKILL)
    assert await daemon.wait() == 1
    assert "stopping: the delivery process exited" in daemon.log.read_text()
    await next_run_delivers_it_again(receiver, config)


async def test_kill_9_of_the_relay_ends_its_delivery_process(tmp_path, nursery):
    _, _, daemon = await one_attempt_in_flight(tmp_path, nursery)
    delivery = daemon.child("relay.delivery.process")
    daemon.process.kill()
    assert await daemon.wait() == -signal.SIGKILL
    with trio.fail_after(10):
        while _alive(delivery):
            await trio.sleep(0.05)


async def test_sigterm_while_the_delivery_process_starts_exits_0(tmp_path):
    add_plugin(
        tmp_path,
        "slow",
        "import sys, time\n"
        "if sys.argv[0].endswith('delivery/process.py'):\n"
        "    time.sleep(30)  # a heavy import, in the delivery process only\n",
    )
    daemon = await Daemon(write_config(tmp_path, "http://127.0.0.1:9/", grace=0.5)).launch()
    await trio.sleep(1.5)
    daemon.process.send_signal(signal.SIGTERM)
    assert await daemon.wait(timeout=15) == 0, daemon.log.read_text()
    assert "did not stop within the grace period" in daemon.log.read_text()


async def test_a_reload_while_draining_is_ignored(tmp_path, nursery):
    receiver, config, daemon = await one_attempt_in_flight(tmp_path, nursery, grace=20)
    config.write_text(config.read_text() + webhook_toml("new", receiver.url))
    daemon.process.send_signal(signal.SIGTERM)
    with trio.fail_after(5):  # pending together, trio would hand over SIGHUP first
        while "SIGTERM: stopping" not in daemon.log.read_text():
            await trio.sleep(0.02)
    daemon.process.send_signal(signal.SIGHUP)
    # The attempt in flight ends at its 3 s timeout; a lane the reload had added would have
    # kept the drain waiting for the whole 20 s grace period.
    assert await daemon.wait(timeout=19) == 0
    assert "reload ignored: the relay is stopping" in daemon.log.read_text()


async def one_attempt_in_flight(tmp_path, nursery, **settings):
    """A relay whose one delivery is being attempted (its receiver takes 30 s to answer)."""
    from tests.conftest import start_receiver

    receiver = await start_receiver(nursery)
    receiver.hang = 30.0
    config = write_config(tmp_path, receiver.url, **settings)
    daemon = await Daemon(config).start()
    async with httpx.AsyncClient(base_url=daemon.url) as client:
        assert (await client.post("/events", json=STATUS)).status_code == 202
    await receiver.wait_for(1)
    return receiver, config, daemon


async def next_run_delivers_it_again(receiver, config) -> None:
    """The next run on ``config`` attempts that delivery again, with the same id."""
    receiver.hang = 0
    restarted = await Daemon(config).start()
    try:
        requests = await receiver.wait_for(2)
        assert json.loads(requests[1].body) == STATUS
        assert requests[0].headers["relay-delivery-id"] == requests[1].headers["relay-delivery-id"]
    finally:
        restarted.process.terminate()
        assert await restarted.wait() == 0


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
