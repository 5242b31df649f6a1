"""Delivery reports: a message bound to a webhook (POST /reports, or an event naming its
webhook_id) sends that webhook the message's later status events, which name no webhook.

Real relays on real journals in tmp_path; an h11 receiver on loopback where what arrives on the
wire matters (tests/test_compose.py's RawReceiver); the daemon as a subprocess across a restart;
trio's MockClock for expiry.
"""

import json
import signal
import sqlite3

import httpx
import pytest
import trio

from relay.config import ConfigError, loads
from relay.http.server import HTTPRequest
from relay.ingest.api import Api
from relay.journal import Journal, list_deliveries, retention
from tests.conftest import (
    RecordingTransport,
    post_event,
    seed_events,
    start_with_transport,
)
from tests.daemon import Daemon, write_config
from tests.test_compose import RawReceiver

STATUS = seed_events()[0]
MESSAGE = STATUS["payload"]["id"]
DAY = 86400.0


def status(state: str, message: str = MESSAGE, **envelope) -> dict:
    return {**STATUS, "payload": {**STATUS["payload"], "id": message, "status": state}, **envelope}


def journal(state_dir, sql: str) -> list[tuple]:
    with sqlite3.connect(state_dir / "journal.sqlite3") as conn:
        return conn.execute(sql).fetchall()


def delivered_to(running) -> list[tuple]:
    """(webhook, event status) of every delivery journaled so far."""
    return [
        (webhook_id, json.loads(body)["payload"]["status"])
        for webhook_id, body in journal(
            running.relay.config.relay.state_dir,
            "SELECT d.webhook_id, e.body FROM deliveries d JOIN events e ON e.id = d.event_id"
            " ORDER BY d.rowid",
        )
    ]


async def post(url: str, path: str, body, *, transport=None, **headers) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with httpx.AsyncClient(base_url=url, transport=transport, timeout=10) as client:
        return await client.post(
            path, content=content, headers={"content-type": "application/json", **headers}
        )


@pytest.fixture
async def raw_receiver(nursery) -> RawReceiver:
    receiver = RawReceiver()
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    await nursery.start(trio.serve_listeners, receiver.serve, listeners)
    host, port = listeners[0].socket.getsockname()[:2]
    receiver.origin = f"http://{host}:{port}"
    return receiver


def ack_webhook(origin: str, events=()) -> dict:
    """A compose webhook that takes no event by pattern (``events = []``): only what is bound to
    it. One attempt at a time, so that what arrives comes in the order it was sent."""
    return {
        "id": "ack",
        "url": origin + "/ack?id=@{{payload.id}}&status=@{{payload.status}}",
        "events": list(events),
        "method": "POST",
        "body_format": "json",
        "body": {"message_id": "@{{payload.id}}", "status": "@{{payload.status}}"},
        "concurrency": 1,
    }


def arrived(receiver: RawReceiver) -> list[tuple[str, dict]]:
    return [(r.target, json.loads(r.body)) for r in receiver.requests]


def expected(*states: str, message: str = MESSAGE) -> list[tuple[str, dict]]:
    return [(f"/ack?id={message}&status={s}", {"message_id": message, "status": s}) for s in states]


async def test_a_bound_messages_statuses_reach_its_compose_webhook_in_order(
    start_relay, raw_receiver, receiver
):
    running = await start_relay(
        [ack_webhook(raw_receiver.origin), {"id": "crm", "url": receiver.url, "events": ["*:in"]}]
    )
    # Before any binding: the journal has learnt that it has none, and must learn otherwise.
    assert (await running.post(status("sent", "another-message"))).status_code == 202
    bound = await post(running.url, "/reports", {"message_id": MESSAGE, "webhook_id": "ack"})
    assert bound.status_code == 202
    assert bound.json()["bound"] == 1
    for state in ("sent", "delivered", "read"):  # one request each, as the gateway sends them
        assert (await running.post(status(state))).status_code == 202

    await raw_receiver.wait_for(3)
    assert arrived(raw_receiver) == expected("sent", "delivered", "read")
    assert delivered_to(running) == [("ack", "sent"), ("ack", "delivered"), ("ack", "read")]


async def test_a_binding_made_before_a_restart_routes_the_statuses_after_it(
    tmp_path, nursery, raw_receiver
):
    hook = ack_webhook(raw_receiver.origin)
    config = write_config(
        tmp_path,
        webhooks=f"""
[[webhooks]]
id = "ack"
url = "{hook["url"]}"
events = []
method = "POST"
body_format = "json"
body = {{ message_id = "@{{{{payload.id}}}}", status = "@{{{{payload.status}}}}" }}
concurrency = 1
""",
    )
    daemon = await Daemon(config).start()
    try:  # bound over the Unix socket: the same API as on TCP
        uds = httpx.AsyncHTTPTransport(uds=str(tmp_path / "relay.sock"))
        bound = await post(
            "http://relay",
            "/reports",
            [{"message_id": MESSAGE, "webhook_id": "ack"}],
            transport=uds,
        )
        assert bound.status_code == 202
        daemon.process.send_signal(signal.SIGTERM)
        assert await daemon.wait() == 0

        daemon = await Daemon(config).start()
        batch = [status(s) for s in ("sent", "delivered", "read")]  # one request, three events
        assert (await post(daemon.url, "/events", batch)).status_code == 202
        await raw_receiver.wait_for(3)
        assert arrived(raw_receiver) == expected("sent", "delivered", "read")
    finally:
        daemon.process.terminate()
        assert await daemon.wait() == 0


async def bind(relay, body) -> tuple[int, dict]:
    """POST /reports through the API, as a request would (for relays on the MockClock)."""
    request = HTTPRequest(
        "POST", "/reports", {"content-type": "application/json"}, json.dumps(body).encode()
    )
    return await Api(relay)(request)


async def test_a_binding_expires_after_reports_ttl_and_retention_drops_it(
    nursery, tmp_path, autojump_clock
):
    transport = RecordingTransport()
    relay = await start_with_transport(
        nursery, tmp_path, transport, {"events": []}, reports_ttl=3600
    )
    state = relay.config.relay.state_dir
    assert (await bind(relay, {"message_id": MESSAGE, "webhook_id": "crm"}))[0] == 202
    await trio.sleep(3599)
    await post_event(relay, status("delivered"))  # a second before it expires
    await trio.sleep(2)
    await post_event(relay, status("read"))  # a second after: it goes nowhere
    assert journal(state, "SELECT COUNT(*) FROM bindings") == [(1,)]  # expired, not yet gone
    await trio.sleep(60)
    assert len(transport.times) == 1
    assert journal(state, "SELECT webhook_id FROM deliveries") == [("crm",)]

    await trio.sleep(retention.PASS_EVERY_MAX)  # the retention's next pass
    assert journal(state, "SELECT COUNT(*) FROM bindings") == [(0,)]


async def test_retention_deletes_expired_bindings_in_steps(tmp_path, monkeypatch):
    monkeypatch.setattr(retention, "BINDINGS_STEP", 2)
    async with Journal.open(tmp_path, mode="inline") as journal_:
        await journal_.bind([(f"m{n}", "crm", 100.0 + n) for n in range(7)])
        assert await retention.expire_bindings(journal_, 104.5) == 5
    assert journal(tmp_path, "SELECT message_id FROM bindings") == [("m5",), ("m6",)]


async def test_a_bound_webhook_that_also_matches_gets_each_event_once(start_relay, raw_receiver):
    running = await start_relay([ack_webhook(raw_receiver.origin, ["whatsapp:message:*"])])
    bound = await post(running.url, "/reports", {"message_id": MESSAGE, "webhook_id": "ack"})
    assert bound.status_code == 202
    assert (await running.post([status("sent"), status("read")])).status_code == 202
    await raw_receiver.wait_for(2)
    assert delivered_to(running) == [("ack", "sent"), ("ack", "read")]
    assert arrived(raw_receiver) == expected("sent", "read")


async def test_reports_keep_their_place_among_the_events_of_a_request(start_relay, raw_receiver):
    running = await start_relay([ack_webhook(raw_receiver.origin, ["whatsapp:message:in"])])
    bound = await post(running.url, "/reports", {"message_id": MESSAGE, "webhook_id": "ack"})
    assert bound.status_code == 202
    incoming = {"event": "whatsapp:message:in", "payload": {"id": "in-1", "status": "in"}}
    assert (await running.post([status("sent"), incoming, status("read")])).status_code == 202
    await raw_receiver.wait_for(3)
    assert [body["status"] for _, body in arrived(raw_receiver)] == ["sent", "in", "read"]


@pytest.mark.parametrize(
    ("body", "code", "field", "reason"),
    [
        ({"message_id": MESSAGE, "webhook_id": "nope"}, 422, "webhook_id", "no webhook 'nope'"),
        (
            [{"message_id": "m1", "webhook_id": "ack"}, {"message_id": "m2", "webhook_id": "x"}],
            422,
            "[1].webhook_id",
            "no webhook 'x'",
        ),
        ({"message_id": MESSAGE}, 422, "webhook_id", "missing"),
        ({"webhook_id": "ack"}, 422, "message_id", "missing"),
        ({"message_id": 7, "webhook_id": "ack"}, 422, "message_id", "non-empty string"),
        ({"message_id": "", "webhook_id": "ack"}, 422, "message_id", "non-empty string"),
        ({"message_id": "m" * 257, "webhook_id": "ack"}, 422, "message_id", "at most 256"),
        ({"message_id": "\ud800", "webhook_id": "ack"}, 422, "message_id", "lone surrogate"),
        ({"message_id": MESSAGE, "webhook_id": 3}, 422, "webhook_id", "must be a string"),
        ([7], 422, "[0]", "expected an object"),
        ("ack", 422, "", "expected a report request object"),
        (b"{nope", 400, "", "body is not valid JSON"),
    ],
)
async def test_a_bad_report_request_is_refused_whole_and_binds_nothing(
    start_relay, receiver, body, code, field, reason
):
    running = await start_relay([{"id": "ack", "url": receiver.url}])
    # json.dumps writes the lone surrogate as \ud800, as a client would
    answer = await post(running.url, "/reports", body)
    assert answer.status_code == code
    assert answer.json()["error"] == ("invalid report requests" if code == 422 else "bad request")
    (problem,) = answer.json()["problems"]
    assert problem["field"] == field
    assert reason in problem["reason"]
    state = running.relay.config.relay.state_dir
    assert journal(state, "SELECT COUNT(*) FROM bindings") == [(0,)]


async def test_report_requests_refuse_what_events_refuse(start_relay, receiver):
    running = await start_relay([{"id": "ack", "url": receiver.url}], max_body=4096)
    state = running.relay.config.relay.state_dir
    one = {"message_id": MESSAGE, "webhook_id": "ack"}
    assert (await post(running.url, "/reports", [one] * 100)).status_code == 413
    wrong_type = await post(running.url, "/reports", one, **{"content-type": "text/plain"})
    assert wrong_type.status_code == 415
    async with httpx.AsyncClient(base_url=running.url) as client:
        assert (await client.get("/reports")).status_code == 405
    assert journal(state, "SELECT COUNT(*) FROM bindings") == [(0,)]


async def test_a_binding_to_a_removed_webhook_parks_its_reports(
    start_relay, raw_receiver, receiver, tmp_path
):
    crm = {"id": "crm", "url": receiver.url, "events": ["*:in"]}
    running = await start_relay([ack_webhook(raw_receiver.origin), crm])
    relay = running.relay
    assert (
        await post(running.url, "/reports", {"message_id": MESSAGE, "webhook_id": "ack"})
    ).is_success
    state = relay.config.relay.state_dir
    (tmp_path / "relay.toml").write_text(
        f'[relay]\nlisten = "127.0.0.1:0"\nstate_dir = "{state}"\ndelivery = "inline"\n'
        f'[[webhooks]]\nid = "crm"\nurl = "{receiver.url}"\nevents = ["*:in"]\n'
    )
    ok, answer = await relay.try_reload()
    assert ok and answer["removed"] == ["ack"], answer

    assert (await running.post(status("read"))).status_code == 202
    parked = list_deliveries(state, state="parked", known_webhooks={"crm"})
    assert [(row.webhook_id, row.state) for row in parked] == [("ack", "pending")]

    ack = ack_webhook(raw_receiver.origin)  # it returns: its parked report goes
    text = (tmp_path / "relay.toml").read_text()
    (tmp_path / "relay.toml").write_text(
        text + f'[[webhooks]]\nid = "ack"\nurl = "{ack["url"]}"\nevents = []\n'
        'method = "POST"\nbody_format = "json"\n'
        'body = { message_id = "@{{payload.id}}", status = "@{{payload.status}}" }\n'
    )
    ok, answer = await relay.try_reload()
    assert ok and answer["added"] == ["ack"], answer
    await raw_receiver.wait_for(1)
    assert arrived(raw_receiver) == expected("read")


async def test_an_event_naming_its_webhook_binds_its_message(start_relay, raw_receiver, receiver):
    running = await start_relay(
        [ack_webhook(raw_receiver.origin), {"id": "crm", "url": receiver.url, "events": ["*"]}]
    )
    sent = status("sent", webhook_id="ack")  # what the application sends: to "ack" only
    assert (await running.post(sent)).status_code == 202
    assert (await running.post(status("delivered"))).status_code == 202  # no webhook_id
    await raw_receiver.wait_for(2)
    await receiver.wait_for(1)
    assert delivered_to(running) == [("ack", "sent"), ("crm", "delivered"), ("ack", "delivered")]
    assert arrived(raw_receiver) == expected("sent", "delivered")
    assert [json.loads(r.body)["payload"]["status"] for r in receiver.requests] == ["delivered"]


async def test_a_binding_by_an_event_applies_to_the_rest_of_its_request(start_relay, raw_receiver):
    running = await start_relay([ack_webhook(raw_receiver.origin)])
    batch = [status("sent", webhook_id="ack"), status("delivered"), status("read")]
    assert (await running.post(batch)).status_code == 202
    await raw_receiver.wait_for(3)
    assert arrived(raw_receiver) == expected("sent", "delivered", "read")


async def test_a_later_binding_replaces_the_earlier(start_relay, raw_receiver, receiver):
    running = await start_relay(
        [ack_webhook(raw_receiver.origin), {"id": "crm", "url": receiver.url, "events": []}]
    )
    for webhook_id in ("crm", "ack"):
        bound = await post(
            running.url, "/reports", {"message_id": MESSAGE, "webhook_id": webhook_id}
        )
        assert bound.status_code == 202
    assert (await running.post(status("read"))).status_code == 202
    await raw_receiver.wait_for(1)
    assert delivered_to(running) == [("ack", "read")]


def test_reports_ttl_is_seconds_greater_than_0(tmp_path):
    for value, error in (
        ("0", "must be greater than 0, got 0.0"),
        ("-1", "must be greater than 0, got -1.0"),
        ('"7d"', "expected a number, got a string"),
    ):
        with pytest.raises(ConfigError) as caught:
            loads(f"[relay]\nreports_ttl = {value}\n", tmp_path / "relay.toml")
        assert caught.value.errors == [f"relay.toml: relay.reports_ttl: {error}"]
    assert loads("", tmp_path / "relay.toml").relay.reports_ttl == 7 * DAY
