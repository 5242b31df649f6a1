"""Retention: what finished long enough ago leaves the journal; nothing pending ever does.

The real journal on a temp dir, and the real relay on trio's MockClock (a year passes in no
time); the transport is a test plugin (conftest.start_with_transport).
"""

import socket
import sqlite3

import pytest
import trio

from relay.clock import Clock
from relay.config import ConfigError, loads
from relay.journal import Journal, retention
from tests.conftest import RecordingTransport, post_event, seed_events, start_with_transport

DAY = 86400.0
NOW = 1_800_000_000.0
OLD = NOW - 2 * DAY  # past a day's retention
CUTOFF = NOW - DAY


def rows(state_dir, sql):
    with sqlite3.connect(state_dir / "journal.sqlite3") as conn:
        return sorted(conn.execute(sql).fetchall())


async def test_only_events_whose_deliveries_all_finished_before_the_cutoff_go(tmp_path):
    async with Journal.open(tmp_path, mode="inline") as journal:
        events = {
            "e1-done": [("d1", "delivered", OLD)],
            "e2-no-deliveries": [],
            "e3-one-pending": [("d3a", "failed", OLD), ("d3b", "pending", OLD)],
            "e4-finished-lately": [("d4", "delivered", NOW - 60)],
            "e5-failed": [("d5", "failed", OLD)],
        }
        for event_id, deliveries in events.items():
            await journal._call(
                "append",
                [(event_id, "whatsapp:message:status", b"{}", OLD)],
                [(d, event_id, "crm", OLD, OLD) for d, _, _ in deliveries],
            )
            for delivery_id, state, at in deliveries:
                if state != "pending":
                    attempt = [(delivery_id, 1, at, 0.01, 200, None, None, None)]
                    update = [(state, 1, None, at, "200", delivery_id)]
                    await journal._call("record_attempts", attempt, update)
        await journal._call(
            "append",
            [("e6-new", "whatsapp:message:status", b"{}", NOW - 60)],
            [("d6", "e6-new", "crm", NOW - 60, NOW - 60)],  # pending, and the newest
        )

        assert await retention.prune(journal, CUTOFF) == 3

    assert rows(tmp_path, "SELECT id FROM events") == [
        ("e3-one-pending",),
        ("e4-finished-lately",),
        ("e6-new",),
    ]
    assert rows(tmp_path, "SELECT id FROM deliveries") == [("d3a",), ("d3b",), ("d4",), ("d6",)]
    assert rows(tmp_path, "SELECT delivery_id FROM attempts") == [("d3a",), ("d4",)]


async def test_a_pass_goes_on_step_by_step_past_what_it_keeps(tmp_path, monkeypatch):
    monkeypatch.setattr(retention, "STEP", 2)
    # A young event first (a clock that was ahead), an old pending one, old finished ones.
    received = [NOW, *[OLD] * 7, NOW]
    async with Journal.open(tmp_path, mode="inline") as journal:
        for n, at in enumerate(received):
            await journal._call(
                "append",
                [(f"e{n}", "whatsapp:message:status", b"{}", at)],
                [(f"d{n}", f"e{n}", "crm", at, at)] if n == 2 else [],  # e2 stays pending
            )
        assert await retention.prune(journal, CUTOFF) == 6
    assert rows(tmp_path, "SELECT id FROM events") == [("e0",), ("e2",), ("e8",)]


async def test_the_newest_rows_stay_so_that_rowids_are_never_reused(tmp_path):
    async with Journal.open(tmp_path, mode="inline") as journal:
        for n in range(3):
            await journal._call(
                "append",
                [(f"e{n}", "whatsapp:message:status", b"{}", OLD)],
                [(f"d{n}", f"e{n}", "crm", OLD, OLD)],
            )
            update = [("delivered", 1, None, OLD, "200", f"d{n}")]
            await journal._call("record_attempts", [], update)
        await journal._call("append", [("e3", "whatsapp:message:status", b"{}", OLD)], [])
        assert await retention.prune(journal, CUTOFF) == 2
    # e2 owns the newest delivery, e3 is the newest event.
    assert rows(tmp_path, "SELECT id FROM events") == [("e2",), ("e3",)]


async def test_a_changed_retention_applies_at_once(tmp_path, autojump_clock):
    async with Journal.open(tmp_path, mode="inline") as journal, trio.open_nursery() as nursery:
        clock = Clock()
        for n in range(3):
            at = clock.now() - 2 * DAY
            await journal._call("append", [(f"e{n}", "status", b"{}", at)], [])
        pruner = retention.Pruner(journal, clock, 0)  # keeps everything
        nursery.start_soon(pruner.run)
        await trio.sleep(30 * DAY + 100)  # not on a pass: the next one is ~an hour away
        assert rows(tmp_path, "SELECT COUNT(*) FROM events") == [(3,)]
        pruner.set_retention(DAY)
        await trio.sleep(0.1)
        assert rows(tmp_path, "SELECT id FROM events") == [("e2",)]  # the newest stays
        nursery.cancel_scope.cancel()


def test_retention_is_seconds_and_not_negative(tmp_path):
    for value in ("-1", "nan"):
        with pytest.raises(ConfigError) as caught:
            loads(f"[relay]\nretention = {value}\n", tmp_path / "relay.toml")
        assert caught.value.errors == [
            f"relay.toml: relay.retention: must be 0 or more, got {float(value)!r}"
        ]
    assert loads("[relay]\nretention = 0\n", tmp_path / "relay.toml").relay.retention == 0


async def test_the_relay_forgets_a_delivered_event_after_the_retention(
    nursery, tmp_path, autojump_clock
):
    transport = RecordingTransport()
    relay = await start_with_transport(nursery, tmp_path, transport, retention=3600)
    await post_event(relay)
    await trio.sleep(60)
    await post_event(relay)  # the newest event always stays (see journal_sql.prune)
    await trio.sleep(60)
    state = relay.config.relay.state_dir
    assert len(transport.times) == 2
    assert rows(state, "SELECT state FROM deliveries") == [("delivered",)] * 2
    await trio.sleep(3600 * 1.1)  # the retention, and the pass that follows it
    assert rows(state, "SELECT COUNT(*) FROM events") == [(1,)]
    assert rows(state, "SELECT COUNT(*) FROM deliveries") == [(1,)]
    assert rows(state, "SELECT COUNT(*) FROM attempts") == [(1,)]


async def test_a_delivery_still_retrying_outlives_the_retention(nursery, tmp_path, autojump_clock):
    transport = RecordingTransport(statuses=[503] * 10)
    relay = await start_with_transport(nursery, tmp_path, transport, {"tries": 3}, retention=60)
    await post_event(relay)
    await trio.sleep(100)  # attempts at 0 and 10 s; the third is due at 110 s
    await post_event(relay)
    await trio.sleep(1)
    state = relay.config.relay.state_dir
    assert len(transport.times) == 3  # the first event's two, the second's first
    assert rows(state, "SELECT state FROM deliveries") == [("pending",)] * 2
    await trio.sleep(1000)  # attempt 3 fails the first at 110 s; a minute later it goes
    assert len(transport.times) == 6
    assert rows(state, "SELECT COUNT(*) FROM deliveries") == [(1,)]


async def test_retention_0_keeps_everything(nursery, tmp_path, autojump_clock):
    transport = RecordingTransport()
    relay = await start_with_transport(nursery, tmp_path, transport, retention=0)
    await post_event(relay)
    await post_event(relay)
    await trio.sleep(365 * DAY)
    assert len(transport.times) == 2
    assert rows(relay.config.relay.state_dir, "SELECT COUNT(*) FROM events") == [(2,)]


async def test_the_daemon_prunes_through_its_journal_writer(tmp_path, nursery):
    """The real process split: the relay's pruner, the writer process's SQL, deliveries that
    finished going, one still retrying staying; and a retention set by a reload (SIGHUP)."""
    import signal

    import httpx

    from tests.conftest import start_receiver
    from tests.daemon import Daemon, webhook_toml, write_config

    receiver = await start_receiver(nursery)
    with socket.socket() as closed:  # nothing listens there: attempts fail and go on
        closed.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{closed.getsockname()[1]}/"
    webhooks = webhook_toml("crm", receiver.url) + webhook_toml("down", down)
    config = write_config(tmp_path, webhooks=webhooks)
    keep_all = config.read_text().replace("[relay]\n", "[relay]\nretention = 0\n")
    config.write_text(keep_all)
    daemon = await Daemon(config).start()
    to = [{**seed_events()[0], "webhook_id": w} for w in ("crm", "crm", "down", "crm")]
    try:
        async with httpx.AsyncClient(base_url=daemon.url) as client:
            for event in to:  # one by one: the last one is the newest
                assert (await client.post("/events", json=event)).status_code == 202
        await receiver.wait_for(3)
        state = tmp_path / "state"
        await trio.sleep(1.5)  # finished over a second ago, and kept
        assert rows(state, "SELECT COUNT(*) FROM events") == [(4,)]

        config.write_text(keep_all.replace("retention = 0", "retention = 1.0"))
        daemon.process.send_signal(signal.SIGHUP)
        # The reload starts a pass at once; without it the first would come 10 s after start.
        with trio.fail_after(5):
            while rows(state, "SELECT COUNT(*) FROM events") != [(2,)]:
                await trio.sleep(0.1)
        assert rows(state, "SELECT webhook_id, state FROM deliveries") == [
            ("crm", "delivered"),  # the newest event's: it always stays
            ("down", "pending"),
        ]
    finally:
        daemon.process.terminate()
        assert await daemon.wait() == 0
