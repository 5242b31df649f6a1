"""The real daemon as a subprocess: kill -9 loses no acknowledged event; SIGTERM drains."""

import json
import os
import random
import signal
import sqlite3
from pathlib import Path

import httpx
import pytest
import trio

from relay.children import DELIVERY, WRITER
from tests.conftest import seed_events
from tests.daemon import Daemon, add_plugin, alive, webhook_toml, write_config

STATUS = seed_events()[0]


def marked(i: int) -> dict:
    return {**STATUS, "payload": {**STATUS["payload"], "foreign_id": f"m{i}"}}


@pytest.mark.parametrize(
    ("victim", "stall"),
    [("group", False), ("group", True), ("relay", True), ("writer", True), ("delivery", True)],
)
async def test_kill_9_loses_no_acknowledged_event(tmp_path, nursery, victim, stall):
    """SIGKILL while clients send: the whole process group at once (nothing the writer was
    sent but had not committed gets committed after), or one process alone. Every event
    acknowledged is then delivered by the next run.

    ``stall``: the writer stops (SIGSTOP: a disk that takes 0.2 s to fsync) just before the
    kill. Events acknowledged before they are on disk are then certainly lost: without it, a
    relay that answered before the commit loses events only if the kill lands in the
    fraction of a millisecond between its answer and the fsync."""
    from tests.conftest import start_receiver

    down, up = await start_receiver(nursery), await start_receiver(nursery)
    down.statuses = [503] * 1_000_000  # everything accepted stays pending
    daemon = await Daemon(write_config(tmp_path, down.url), session=True).start()

    acknowledged: set[str] = set()

    async def send(client: httpx.AsyncClient, first: int):
        for batch in range(first, first + 10_000, 5):
            events = [marked(i) for i in range(batch, batch + 5)]
            try:
                response = await client.post("/events", json=events)
            except httpx.HTTPError:
                return  # the relay died mid-request: not acknowledged
            if response.status_code == 503:  # the journal failed: not acknowledged
                return
            assert response.status_code == 202, response.text
            acknowledged.update(e["payload"]["foreign_id"] for e in events)

    async with httpx.AsyncClient(base_url=daemon.url, timeout=10) as client:
        async with trio.open_nursery() as senders:
            for n in range(8):
                senders.start_soon(send, client, n * 10_000)
            with trio.fail_after(20):
                while len(acknowledged) < 500 + random.randrange(500):
                    await trio.sleep(0.01)
            if stall:
                writer = daemon.child(WRITER)
                os.kill(writer, signal.SIGSTOP)
                await trio.sleep(0.2)
            pids = daemon.kill_9(victim)  # while requests are in flight
            if stall and victim != "writer" and victim != "group":
                os.kill(writer, signal.SIGCONT)
    status = await daemon.wait()
    assert status == (-signal.SIGKILL if victim in ("group", "relay") else 1), status
    with trio.fail_after(20):  # the rest end too (the writer after committing what it has)
        while any(alive(pid) for pid in pids.values()):
            await trio.sleep(0.05)

    restarted = await Daemon(write_config(tmp_path, up.url)).start()  # the receiver is back
    try:
        await nothing_pending(tmp_path / "state" / "journal.sqlite3")
    finally:
        restarted.process.terminate()
        await restarted.wait()
    delivered = {b["payload"]["foreign_id"] for b in up.bodies()}
    lost = acknowledged - delivered
    assert not lost, f"{len(lost)} of {len(acknowledged)} acknowledged events never arrived"


async def nothing_pending(journal: Path, timeout: float = 60) -> None:
    with trio.fail_after(timeout):
        while True:
            with sqlite3.connect(journal, timeout=30) as conn:
                query = "SELECT COUNT(*) FROM deliveries WHERE state = 'pending'"
                if conn.execute(query).fetchone()[0] == 0:
                    return
            await trio.sleep(0.1)


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
    """Every request gets an answer that is true of the journal: 202 and its event is there,
    or 503 (or no answer, the relay being gone) and it is not."""
    from tests.conftest import start_receiver

    receiver = await start_receiver(nursery)
    daemon = await Daemon(write_config(tmp_path, receiver.url)).start()
    journal = tmp_path / "state" / "journal.sqlite3"
    outcomes: dict[str, int | str] = {}

    async def post(client: httpx.AsyncClient, mark: int) -> None:
        try:
            response = await client.post("/events", json=marked(mark))
            outcomes[f"m{mark}"] = response.status_code
        except httpx.TransportError:  # refused, reset, closed without an answer
            outcomes[f"m{mark}"] = "no answer"

    async with httpx.AsyncClient(base_url=daemon.url) as client:
        await post(client, 0)
        await receiver.wait_for(1)
        await nothing_pending(journal)  # its outcome is recorded: nothing else will write
        os.kill(daemon.child(WRITER), signal.SIGKILL)
        await post(client, 1)  # the first write after: the relay learns the writer is gone
        async with trio.open_nursery() as clients:  # and more while it stops
            for mark in range(2, 12):
                clients.start_soon(post, client, mark)
    assert await daemon.wait() == 1
    assert "stopping: the journal writer failed" in daemon.log.read_text()

    with sqlite3.connect(journal) as conn:
        journaled = {
            json.loads(body)["payload"]["foreign_id"]
            for (body,) in conn.execute("SELECT body FROM events")
        }
    assert outcomes.pop("m0") == 202 and journaled == {"m0"}
    # No answer at all is as true as a 503: the relay's nursery may be cancelled (the journal
    # failed) before the handler that was told "the journal writer failed" sends its 503.
    assert len(outcomes) == 11
    for mark, outcome in outcomes.items():
        assert outcome in (503, "no answer"), (mark, outcome)


async def test_a_dead_delivery_process_stops_the_relay_and_the_next_run_delivers(tmp_path, nursery):
    receiver, config, daemon = await one_attempt_in_flight(tmp_path, nursery)
    os.kill(daemon.child(DELIVERY), signal.SIGKILL)
    assert await daemon.wait() == 1
    assert "stopping: the delivery process exited" in daemon.log.read_text()
    await next_run_delivers_it_again(receiver, config)


async def test_kill_9_of_the_relay_ends_its_delivery_process(tmp_path, nursery):
    _, _, daemon = await one_attempt_in_flight(tmp_path, nursery)
    delivery = daemon.child(DELIVERY)
    daemon.process.kill()
    assert await daemon.wait() == -signal.SIGKILL
    with trio.fail_after(10):
        while alive(delivery):
            await trio.sleep(0.05)


async def test_sigterm_while_the_delivery_process_starts_exits_0(tmp_path):
    add_plugin(
        tmp_path,
        "slow",
        "import time\n"
        "if b'_delivery' in open('/proc/self/cmdline', 'rb').read().split(b'\\0'):\n"
        "    time.sleep(30)  # a heavy import, in the delivery process only\n",
    )
    daemon = await Daemon(write_config(tmp_path, "http://127.0.0.1:9/", grace=0.5)).launch()
    await trio.sleep(1.5)
    daemon.process.send_signal(signal.SIGTERM)
    assert await daemon.wait(timeout=30) == 0, daemon.log.read_text()
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


async def test_events_larger_than_the_pipe_reach_the_delivery_process_whole(tmp_path, nursery):
    """The relay writes a hand-over straight into the delivery process's pipe when the pipe is
    idle (relay/delivery/remote.py); what a full pipe did not take must follow, whole, before
    anything after it. Each event here is larger than a pipe holds (64 KB)."""
    from tests.conftest import start_receiver

    receiver = await start_receiver(nursery)
    daemon = await Daemon(write_config(tmp_path, receiver.url)).start()
    events = [
        {**STATUS, "payload": {**STATUS["payload"], "foreign_id": f"m{i}", "note": "ab"[i % 2] * n}}
        for i, n in enumerate([300_000, 200_000, 70_000, 300_000, 100, 250_000])
    ]

    async def post(client: httpx.AsyncClient, event: dict) -> None:
        assert (await client.post("/events", json=event)).status_code == 202

    async with httpx.AsyncClient(base_url=daemon.url, timeout=30) as client:
        async with trio.open_nursery() as senders:
            for event in events:
                senders.start_soon(post, client, event)
    requests = await receiver.wait_for(len(events))
    arrived = sorted(json.loads(r.body)["payload"]["foreign_id"] for r in requests)
    assert arrived == sorted(e["payload"]["foreign_id"] for e in events)
    by_id = {e["payload"]["foreign_id"]: e for e in events}
    for r in requests:
        body = json.loads(r.body)
        assert body == by_id[body["payload"]["foreign_id"]]
    daemon.process.terminate()
    assert await daemon.wait() == 0
