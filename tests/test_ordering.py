"""Ordering per key (``order_by``) and pacing (``rate``).

On trio's MockClock with the real relay and its real journal in a temp dir (only the transport
is a test plugin, as in test_schedule.py), and across kill -9 with the real daemon and a real
receiver on loopback.
"""

from __future__ import annotations

import json
import random
import sqlite3
from collections import defaultdict
from contextlib import closing

import httpx
import pytest
import trio

from relay.journal import sqlite as journal_sql
from relay.model import Response, order_key
from relay.plugins import hookimpl
from tests.cli import relay_cli
from tests.conftest import Receiver, make_config, post_event, relay_of, start_receiver
from tests.daemon import Daemon, write_config
from tests.postgres import rows


def status_event(message_id: str, status: str) -> dict:
    return {
        "event": "whatsapp:message:status",
        "payload": {"id": message_id, "status": status, "to": "15550001111"},
    }


class KeyedTransport:
    """Answers each request with ``answer(message id, status, attempt of that event)``, after
    ``hang`` seconds; notes what was in flight for each message at once, and what got a 2xx."""

    def __init__(self, answer=lambda message, status, attempt: 200, hang: float = 0.01):
        self.answer = answer
        self.hang = hang
        self.started: list[tuple[float, str, str]] = []
        self.delivered: dict[str, list[str]] = defaultdict(list)
        self.in_flight: dict[str, int] = defaultdict(int)
        self.most_in_flight: dict[str, int] = defaultdict(int)
        self._tries: dict[tuple[str, str], int] = defaultdict(int)

    async def send(self, webhook, request):
        payload = json.loads(request.body)["payload"]
        message, status = payload["id"], payload["status"]
        self._tries[message, status] += 1
        self.started.append((trio.current_time(), message, status))
        self.in_flight[message] += 1
        self.most_in_flight[message] = max(self.most_in_flight[message], self.in_flight[message])
        try:
            await trio.sleep(self.hang)
        finally:
            self.in_flight[message] -= 1
        code = self.answer(message, status, self._tries[message, status])
        if 200 <= code < 300:
            self.delivered[message].append(status)
        return Response(status=code)

    async def aclose(self):
        pass


def transport_plugin(transports: dict):
    class Plugin:
        @hookimpl
        def register_transports(self, register):
            for name, transport in transports.items():
                register(name, lambda config, t=transport: t)

    return Plugin()


async def start(nursery, tmp_path, transport, journal_url=None, **webhook):
    hook = {
        "id": "crm",
        "url": "http://example.invalid/",
        "transport": "recording",
        "order_by": "payload.id",
        "backoff": {"first": 10.0, "factor": 10.0},
        **webhook,
    }
    config = make_config(tmp_path, [hook], listen=None, journal="inline", journal_url=journal_url)
    relay = relay_of(config, [transport_plugin({"recording": transport})])
    await nursery.start(relay.run)
    return relay


def states(relay) -> dict[str, int]:
    return dict(
        rows(
            relay.config.relay.state_dir,
            relay.config.journal.url,
            "SELECT state, count(*) FROM deliveries GROUP BY state",
        )
    )


def test_order_key_is_the_value_at_the_path_and_none_where_it_leads_nowhere():
    event = {"payload": {"id": "m1", "n": 7, "deep": {"k": [1, "a"]}, "nothing": None}}
    assert order_key(event, "payload.id") == "m1"
    assert order_key(event, "payload.n") == "7"  # a number's JSON: not the string "7"'s key
    assert order_key({"payload": {"n": "7"}}, "payload.n") == "7"
    assert order_key(event, "payload.deep") == '{"k":[1,"a"]}'
    assert order_key(event, "payload.nothing") is None
    assert order_key(event, "payload.missing") is None
    assert order_key(event, "payload.id.more") is None


def sent_fails_twice(message, status, attempt) -> int:
    return 500 if (message, status) == ("m1", "sent") and attempt < 3 else 200


async def test_a_message_status_never_overtakes_one_that_needs_retries(
    nursery, tmp_path, autojump_clock, journal_url
):
    """sent fails twice (retried at 10 s and 110 s); delivered and read wait for it, while
    another message flows at once."""
    transport = KeyedTransport(
        lambda m, s, attempt: 500 if (m, s) == ("m1", "sent") and attempt < 3 else 200
    )
    relay = await start(nursery, tmp_path, transport, journal_url)
    for message, status in [
        ("m1", "sent"),
        ("m1", "delivered"),
        ("m2", "sent"),
        ("m1", "read"),
        ("m2", "delivered"),
    ]:
        await post_event(relay, status_event(message, status))
    await trio.sleep(1)
    assert transport.delivered == {"m2": ["sent", "delivered"]}  # m2 did not wait for m1
    await trio.sleep(200)
    assert transport.delivered["m1"] == ["sent", "delivered", "read"]
    assert [s for _, m, s in transport.started if m == "m1"] == ["sent"] * 3 + ["delivered", "read"]
    assert max(transport.most_in_flight.values()) == 1
    assert states(relay) == {"delivered": 5}


async def test_without_order_by_later_statuses_overtake(nursery, tmp_path, autojump_clock):
    """The same traffic unordered: what the test above would see if order_by did nothing."""
    transport = KeyedTransport(
        lambda m, s, attempt: 500 if (m, s) == ("m1", "sent") and attempt < 3 else 200
    )
    relay = await start(nursery, tmp_path, transport, order_by=None)
    for status in ("sent", "delivered", "read"):
        await post_event(relay, status_event("m1", status))
    await trio.sleep(200)
    assert sorted(transport.delivered["m1"][:2]) == ["delivered", "read"]
    assert transport.delivered["m1"][2:] == ["sent"]


async def test_a_delivery_that_fails_for_good_releases_its_key(
    nursery, tmp_path, autojump_clock, journal_url
):
    transport = KeyedTransport(lambda m, s, attempt: 500 if s == "sent" else 200)
    relay = await start(nursery, tmp_path, transport, journal_url, tries=2)
    for status in ("sent", "delivered", "read"):
        await post_event(relay, status_event("m1", status))
    await trio.sleep(5)
    assert transport.delivered["m1"] == []
    await trio.sleep(10)  # sent's second and last try at 10 s
    assert transport.delivered["m1"] == ["delivered", "read"]
    assert states(relay) == {"failed": 1, "delivered": 2}


async def test_events_without_the_key_flow_unordered(nursery, tmp_path, autojump_clock):
    transport = KeyedTransport(lambda m, s, attempt: 500 if attempt == 1 and s == "sent" else 200)
    relay = await start(nursery, tmp_path, transport, order_by="payload.conversation")
    for status in ("sent", "delivered"):
        await post_event(relay, status_event("m1", status))
    await trio.sleep(1)
    assert transport.delivered["m1"] == ["delivered"]


async def test_many_keys_under_concurrency_and_failures_keep_each_keys_order(
    nursery, tmp_path, autojump_clock, journal_url
):
    """20 messages, 10 statuses each, posted interleaved in batches, 8 workers, a third of the
    attempts failing at random: each message's statuses arrive in the order relay accepted
    them (skipping those that failed for good), never two of one message at once."""
    rng = random.Random(7)
    transport = KeyedTransport(lambda m, s, attempt: 500 if rng.random() < 0.33 else 200, hang=0.5)
    relay = await start(
        nursery,
        tmp_path,
        transport,
        journal_url,
        concurrency=8,
        tries=4,
        backoff={"first": 1.0, "factor": 2.0, "jitter": 0.5},
    )
    events = [status_event(f"m{m}", f"s{n:02}") for n in range(10) for m in range(20)]
    rng.shuffle(events)  # accepted order, per message, is what counts
    accepted: dict[str, list[str]] = defaultdict(list)
    for start_at in range(0, len(events), 7):
        batch = events[start_at : start_at + 7]
        await post_event(relay, batch)
        for e in batch:
            accepted[e["payload"]["id"]].append(e["payload"]["status"])
        await trio.sleep(rng.random())
    await trio.sleep(1000)
    assert sum(states(relay).values()) == 200 and "pending" not in states(relay)
    for message, order in accepted.items():
        delivered = transport.delivered[message]
        assert delivered == [s for s in order if s in delivered], message
    assert max(transport.most_in_flight.values()) == 1
    assert len(transport.delivered) == 20


async def test_order_holds_across_a_restart(nursery, tmp_path, autojump_clock, journal_url):
    transport = KeyedTransport(lambda m, s, attempt: 500 if s == "sent" and attempt == 1 else 200)
    async with trio.open_nursery() as first:
        relay = await start(first, tmp_path, transport, journal_url)
        for status in ("sent", "delivered", "read"):
            await post_event(relay, status_event("m1", status))
        await trio.sleep(1)
        relay.stop()
    assert transport.delivered["m1"] == []
    relay = await start(nursery, tmp_path, transport, journal_url)
    await trio.sleep(1)
    assert transport.delivered["m1"] == []  # sent's retry is due at 10 s; the others wait
    await trio.sleep(20)
    assert transport.delivered["m1"] == ["sent", "delivered", "read"]


async def test_a_reload_that_drops_order_by_releases_what_waited(
    nursery, tmp_path, autojump_clock, journal_url
):
    transport = KeyedTransport(lambda m, s, attempt: 500 if s == "sent" and attempt == 1 else 200)
    relay = await start(nursery, tmp_path, transport, journal_url)
    for status in ("sent", "delivered", "read"):
        await post_event(relay, status_event("m1", status))
    await trio.sleep(1)
    assert transport.delivered["m1"] == []
    relay.config.path.write_text(
        f"""
[relay]
state_dir = "{relay.config.relay.state_dir}"
journal = "inline"
delivery = "inline"
allow_networks = ["127.0.0.0/8"]
[[webhooks]]
id = "crm"
url = "http://example.invalid/"
transport = "recording"
"""
        + (f'[journal]\nurl = "{journal_url}"\n' if journal_url else "")
    )
    ok, answer = await relay.try_reload()
    assert ok, answer
    await trio.sleep(1)
    # Both at once, before sent's retry at 10 s: no order any more.
    assert sorted(transport.delivered["m1"]) == ["delivered", "read"]
    await trio.sleep(20)
    assert transport.delivered["m1"][-1] == "sent"


async def test_a_delivery_report_is_ordered_with_the_events_of_its_message(
    nursery, tmp_path, autojump_clock, journal_url
):
    """A message sent with webhook_id binds its later status events (delivery reports) to that
    webhook: they are ordered by key too, though the journal adds them."""
    transport = KeyedTransport(lambda m, s, attempt: 500 if s == "sent" and attempt == 1 else 200)
    relay = await start(nursery, tmp_path, transport, journal_url, events=["whatsapp:message:in"])
    sent = status_event("m1", "sent")
    sent["webhook_id"] = "crm"
    await post_event(relay, sent)
    for status in ("delivered", "read"):
        await post_event(relay, status_event("m1", status))  # routed by the binding alone
    await trio.sleep(1)
    assert transport.delivered["m1"] == []
    await trio.sleep(20)
    assert transport.delivered["m1"] == ["sent", "delivered", "read"]


def test_the_ordering_statements_search_an_index(tmp_path):
    """Each is one indexed search however many deliveries wait: at a million pending, a scan
    per ordered append or per start would stall the writer."""
    conn = journal_sql.connect(tmp_path)
    for sql, params in [
        (journal_sql.KEY_IS_BUSY, ("crm", "k", None)),
        (journal_sql.RELEASE_NEXT, (1.0, "d1", journal_sql.WAITING)),
        (journal_sql.RELEASE_WAITING, (1.0, "crm", journal_sql.WAITING)),
    ]:
        plan = " / ".join(r[-1] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, params))
        assert "SCAN" not in plan and "deliveries_pending" not in plan, plan
    conn.close()


# -- rate -------------------------------------------------------------------------------------


async def test_rate_paces_attempts_after_a_burst_of_one_seconds_worth(
    nursery, tmp_path, autojump_clock
):
    transport = KeyedTransport(hang=0.001)
    relay = await start(nursery, tmp_path, transport, order_by=None, rate="10/s")
    t0 = trio.current_time()
    await post_event(relay, [status_event(f"m{i}", "sent") for i in range(30)])
    await trio.sleep(60)
    starts = sorted(t - t0 for t, _, _ in transport.started)
    assert len(starts) == 30
    assert starts[9] == pytest.approx(0, abs=0.01)  # the burst: a second's worth
    gaps = [round(b - a, 3) for a, b in zip(starts[10:], starts[11:], strict=False)]
    assert gaps == [0.1] * 19
    assert starts[-1] == pytest.approx(2.0, abs=0.02)


async def test_a_hanging_webhook_never_delays_another(nursery, tmp_path, autojump_clock):
    """One webhook never answers (each attempt times out after 3 s) and is held to 1/s; the
    one beside it takes the same events at once."""
    hanging, healthy = KeyedTransport(hang=1e9), KeyedTransport(hang=0.001)
    webhooks = [
        {"id": "dead", "url": "http://example.invalid/", "transport": "hang", "rate": "1/s"},
        {"id": "live", "url": "http://example.invalid/", "transport": "ok"},
    ]
    config = make_config(tmp_path, webhooks, listen=None, journal="inline")
    relay = relay_of(config, [transport_plugin({"hang": hanging, "ok": healthy})])
    await nursery.start(relay.run)
    t0 = trio.current_time()
    for i in range(10):
        await post_event(relay, [status_event(f"m{i}-{n}", "sent") for n in range(50)])
    await trio.sleep(0.5)
    assert sum(map(len, healthy.delivered.values())) == 500
    assert max(t for t, _, _ in healthy.started) - t0 < 0.1
    assert len(hanging.started) == 1  # one token: the next in 1 s


def asleep(journal) -> int:
    """Pending deliveries with a next attempt time: sleeping, or waiting for their key."""
    with closing(sqlite3.connect(f"file:{journal}?mode=ro", uri=True)) as conn:
        return conn.execute(
            "SELECT count(*) FROM deliveries WHERE state = 'pending' AND next_at IS NOT NULL"
        ).fetchone()[0]


# -- across kill -9, with the real daemon ----------------------------------------------------


async def test_order_holds_across_kill_9(nursery, tmp_path):
    """The relay is killed while a message's first status waits for its retry and the later
    ones wait for it: after the restart they still arrive in order."""
    failing = {"m1": 1}

    def answer(arrived) -> int:
        payload = json.loads(arrived.body)["payload"]
        if payload["status"] == "sent" and failing.get(payload["id"], 0) > 0:
            failing[payload["id"]] -= 1
            return 500
        return 200

    receiver = await start_receiver(nursery, Receiver(answer=answer))
    config = write_config(
        tmp_path,
        webhooks=f"""
[[webhooks]]
id = "crm"
url = "{receiver.url}"
order_by = "payload.id"
backoff = {{ first = 3, factor = 1.0 }}
tries = 10
""",
    )
    daemon = await Daemon(config).start()
    async with httpx.AsyncClient(timeout=10) as client:
        for status in ("sent", "delivered", "read"):
            answer_ = await client.post(daemon.url + "/events", json=status_event("m1", status))
            assert answer_.status_code == 202
    await receiver.wait_for(1)  # sent's first attempt, failed: its retry is 3 s away
    journal = tmp_path / "state" / journal_sql.FILENAME
    with trio.fail_after(10):  # its outcome is on disk: it sleeps, the other two wait
        while asleep(journal) < 3:
            await trio.sleep(0.01)
    daemon.kill_9("relay")
    await daemon.wait()
    # The stopped journal says which wait for their key.
    listed = await relay_cli("deliveries", "-c", str(config))
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.count("after its key") == 2, listed.stdout
    listed = await relay_cli("deliveries", "-c", str(config), "--json")
    assert sorted(row["next_attempt_at"] is None for row in json.loads(listed.stdout)) == [
        False,
        True,
        True,
    ]
    daemon = await Daemon(config).start()
    arrived = await receiver.wait_for(4, timeout=30)
    assert [json.loads(r.body)["payload"]["status"] for r in arrived] == [
        "sent",
        "sent",
        "delivered",
        "read",
    ]
    daemon.process.terminate()
    await daemon.wait()


def test_a_replay_of_an_ordered_delivery_waits_for_the_one_of_its_key_in_flight(tmp_path):
    """d1 failed for good; d2 of the same key is in flight; d1 replayed waits for its key, and
    goes once d2 ends (never beside it)."""
    from relay.journal import replays

    conn = journal_sql.connect(tmp_path)
    conn.execute("INSERT INTO events VALUES ('e1', 'x', '{}', 1.0), ('e2', 'x', '{}', 1.0)")

    def next_at(delivery_id):
        return conn.execute(
            "SELECT next_at FROM deliveries WHERE id = ?", (delivery_id,)
        ).fetchone()[0]

    ordered = ([("d1", "e1", "crm", 1.0, 1.0, "k")], {})
    assert journal_sql.append_ordered(conn, [], [], [], [], 1.0, ordered) == ([], [])
    failed = ("failed", 1, None, 2.0, "HTTP 500", "d1")
    journal_sql.record_attempts(conn, [], [failed], [(2.0, "d1")])
    ordered = ([("d2", "e2", "crm", 3.0, 3.0, "k")], {})
    assert journal_sql.append_ordered(conn, [], [], [], [], 3.0, ordered) == ([], [])  # d2 goes
    replayed, skipped = replays.replay(conn, ["d1"], 4.0, "test")
    assert [r[0] for r in replayed] == ["d1"] and skipped == []
    assert next_at("d1") == journal_sql.WAITING
    delivered = ("delivered", 1, None, 5.0, "HTTP 200", "d2")
    journal_sql.record_attempts(conn, [], [delivered], [(5.0, "d2")])
    assert next_at("d1") == 5.0  # due: d2 ended
    conn.close()
