"""Delivery policy: disabled webhooks, 410 Gone, Retry-After, disable_after.

A real relay with its real journal in tmp_path; on trio's MockClock the transport is a test
plugin (see tests/conftest.py start_with_transport), and where what goes on the wire matters
(3xx) a raw receiver on loopback answers.
"""

import functools
import logging
import sqlite3

import pytest
import trio

from relay.delivery.attempt import parse_retry_after
from relay.journal.states import write_state
from relay.model import Response
from tests.conftest import make_config, post_event, start_with_transport


class Transport:
    """Answers ``(status, headers)`` in turn (then 200); notes when each attempt started."""

    def __init__(self, answers=()):
        self.answers = list(answers)
        self.times: list[float] = []

    async def send(self, webhook, request):
        self.times.append(trio.current_time())
        status, headers = self.answers.pop(0) if self.answers else (200, ())
        return Response(status=status, headers=tuple(headers))

    async def aclose(self):
        pass


def rows(relay, query, *args):
    with sqlite3.connect(relay.config.relay.state_dir / "journal.sqlite3") as conn:
        return conn.execute(query, args).fetchall()


def deliveries(relay):
    return rows(relay, "SELECT state, attempts, next_at IS NOT NULL FROM deliveries ORDER BY rowid")


def count_calls(relay, name: str) -> list:
    """Spy on the journal: how often ``name`` is asked (a disabled lane must not spin)."""
    calls = []
    original = relay.journal._call

    async def spy(op, *args):
        if op == name:
            calls.append(args)
        return await original(op, *args)

    relay.journal._call = spy
    return calls


async def test_a_disabled_webhook_keeps_its_deliveries_asleep_until_enabled(
    nursery, tmp_path, autojump_clock
):
    transport = Transport()
    relay = await start_with_transport(nursery, tmp_path, transport)
    await relay.set_webhook_enabled("crm", False, "maintenance")
    claims = count_calls(relay, "claim_due")
    for _ in range(3):
        await post_event(relay)
    await trio.sleep(100_000)
    assert transport.times == []
    assert deliveries(relay) == [("pending", 0, 1)] * 3  # asleep in the journal, no try spent
    assert rows(relay, "SELECT COUNT(*) FROM attempts") == [(0,)]
    assert len(claims) <= 1  # held on disk: the scheduler does not claim for it, nor spin
    assert rows(relay, "SELECT webhook_id, enabled, reason FROM webhook_state") == [
        ("crm", 0, "maintenance")
    ]
    await relay.set_webhook_enabled("crm", True)
    await trio.sleep(1)
    assert len(transport.times) == 3
    assert deliveries(relay) == [("delivered", 1, 0)] * 3


async def test_disabling_during_a_retry_wait_spends_no_try(nursery, tmp_path, autojump_clock):
    transport = Transport([(500, ())])
    relay = await start_with_transport(nursery, tmp_path, transport, {"tries": 2})
    await post_event(relay)
    await trio.sleep(1)
    await relay.set_webhook_enabled("crm", False)
    await trio.sleep(10_000)  # the retry was due 10 s after the first attempt
    assert len(transport.times) == 1
    assert deliveries(relay) == [("pending", 1, 1)]
    await relay.set_webhook_enabled("crm", True)
    await trio.sleep(1)
    assert deliveries(relay) == [("delivered", 2, 0)]  # the second of two tries, not given up


async def test_enabled_false_in_the_file_attempts_nothing(nursery, tmp_path, autojump_clock):
    transport = Transport()
    relay = await start_with_transport(nursery, tmp_path, transport, {"enabled": False})
    await post_event(relay)
    await trio.sleep(100_000)
    assert transport.times == []
    assert deliveries(relay) == [("pending", 0, 1)]


async def test_a_state_written_while_stopped_holds_at_start(nursery, tmp_path, autojump_clock):
    state_dir = tmp_path / "state"
    write_state(state_dir, "crm", False, "by hand", 0.0)  # what `relay webhooks disable` does
    transport = Transport()
    relay = await start_with_transport(nursery, tmp_path, transport)
    await post_event(relay)
    await trio.sleep(1000)
    assert transport.times == []
    write_state(state_dir, "crm", True, None, 1.0)
    ok, _ = await relay.try_reload()  # a reload re-reads the states, whatever the file holds
    await trio.sleep(1)
    assert len(transport.times) == 1


async def test_410_gone_fails_for_good_and_disables_the_webhook(
    nursery, tmp_path, autojump_clock, caplog
):
    transport = Transport([(410, ())])
    url = "http://example.invalid/hook?token=s3cret"
    relay = await start_with_transport(nursery, tmp_path, transport, {"url": url, "tries": 5})
    with caplog.at_level(logging.WARNING):
        await post_event(relay)
        await trio.sleep(100_000)
    assert len(transport.times) == 1  # never retried
    assert deliveries(relay) == [("failed", 1, 0)]
    reason = "410 Gone from http://example.invalid/hook"
    assert rows(relay, "SELECT enabled, reason FROM webhook_state") == [(0, reason)]
    assert f"webhook crm disabled: {reason}" in caplog.text
    assert "s3cret" not in caplog.text
    await post_event(relay)  # kept, not attempted, until enabled
    await trio.sleep(100_000)
    assert len(transport.times) == 1
    await relay.set_webhook_enabled("crm", True)
    await trio.sleep(1)
    assert len(transport.times) == 2


@pytest.mark.parametrize(
    ("answer", "gap"),
    [
        ((503, [("retry-after", "500")]), 500),  # longer than the backoff: Retry-After
        ((429, [("Retry-After", "2")]), 10),  # shorter: the backoff
        ((503, [("retry-after", "99999999")]), 100_000),  # capped at backoff.max
        ((500, [("retry-after", "500")]), 10),  # only 429 and 503 ask to wait
        ((503, [("retry-after", "soon")]), 10),  # unreadable: the backoff
    ],
)
async def test_retry_after_is_honoured_on_429_and_503(
    nursery, tmp_path, autojump_clock, answer, gap
):
    transport = Transport([answer])
    relay = await start_with_transport(nursery, tmp_path, transport)
    await post_event(relay)
    await trio.sleep(1_000_000)
    assert len(transport.times) == 2
    assert transport.times[1] - transport.times[0] == pytest.approx(gap)


def test_retry_after_reads_seconds_and_http_dates():
    now = 784111777.0  # Sun, 06 Nov 1994 08:49:37 GMT
    assert parse_retry_after("120", now) == 120
    assert parse_retry_after("Sun, 06 Nov 1994 08:51:37 GMT", now) == 120
    assert parse_retry_after("Sun, 06 Nov 1994 08:40:00 GMT", now) == 0  # past: now
    assert parse_retry_after("-5", now) is None
    assert parse_retry_after("tomorrow", now) is None
    assert parse_retry_after(None, now) is None


async def test_disable_after_disables_a_webhook_failing_that_long(
    nursery, tmp_path, autojump_clock
):
    transport = Transport([(500, ())] * 1000)
    webhook = {
        "tries": 1000,
        "backoff": {"first": 60, "factor": 1},
        "disable_after": "5m",
    }
    relay = await start_with_transport(nursery, tmp_path, transport, webhook)
    await post_event(relay)
    await trio.sleep(100_000)
    # Attempts at 0, 60, ... 300: the one at 300 s finds it failing 5 minutes and disables it.
    assert len(transport.times) == 6
    [(enabled, reason)] = rows(relay, "SELECT enabled, reason FROM webhook_state")
    assert enabled == 0 and reason.startswith("failing since ")
    assert deliveries(relay) == [("pending", 6, 1)]


async def test_a_success_restarts_the_disable_after_clock(nursery, tmp_path, autojump_clock):
    transport = Transport([(500, ())] * 4 + [(200, ())] + [(500, ())] * 4)
    webhook = {"tries": 1000, "backoff": {"first": 60, "factor": 1}, "disable_after": 300}
    relay = await start_with_transport(nursery, tmp_path, transport, webhook)
    await post_event(relay)
    await trio.sleep(1000)
    await post_event(relay)
    await trio.sleep(10_000)
    assert rows(relay, "SELECT COUNT(*) FROM webhook_state") == [(0,)]
    assert deliveries(relay) == [("delivered", 5, 0), ("delivered", 5, 0)]


def test_disable_after_and_enabled_are_checked(tmp_path):
    from relay.config import ConfigError

    with pytest.raises(ConfigError) as caught:
        make_config(
            tmp_path, [{"id": "a", "url": "http://x/", "disable_after": "5 weeks", "enabled": 1}]
        )
    assert caught.value.errors == [
        "relay.toml: webhooks[0].disable_after: expected seconds or a duration like"
        ' "90s", "30m", "12h", "5d", got \'5 weeks\'',
        "relay.toml: webhooks[0].enabled: expected true or false, got a number",
    ]
    hook = make_config(tmp_path, [{"id": "a", "url": "http://x/", "disable_after": "5d"}])
    assert hook.webhooks[0].disable_after == 5 * 86400


async def test_a_3xx_is_a_failure_and_never_followed(nursery, tmp_path, start_relay, receiver):
    """On the wire: a raw server answers 302 with a Location at a receiver that would accept."""
    paths = []

    async def redirect(stream):
        data = b""
        while b"\r\n\r\n" not in data:
            if not (chunk := await stream.receive_some(65536)):
                return
            data += chunk
        paths.append(data.split(b" ")[1])
        await stream.send_all(
            b"HTTP/1.1 302 Found\r\nLocation: "
            + receiver.url.encode()
            + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        await stream.aclose()

    listeners = await nursery.start(
        functools.partial(trio.serve_tcp, redirect, 0, host="127.0.0.1")
    )
    port = listeners[0].socket.getsockname()[1]
    from tests.conftest import no_retry_delay, seed_events

    running = await start_relay(
        [
            {
                "id": "crm",
                "url": f"http://127.0.0.1:{port}/old",
                "tries": 2,
                "backoff": no_retry_delay(),
            }
        ]
    )
    assert (await running.post(seed_events()[0])).status_code == 202
    with trio.fail_after(10):
        while rows(running.relay, "SELECT state FROM deliveries") != [("failed",)]:
            await trio.sleep(0.02)
    assert paths == [b"/old", b"/old"]  # retried at the same URL
    assert receiver.requests == []  # never followed
    assert rows(running.relay, "SELECT last_outcome FROM deliveries") == [("HTTP 302",)]
    assert rows(running.relay, "SELECT COUNT(*) FROM webhook_state") == [(0,)]
