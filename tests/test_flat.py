"""relay's own attempt (relay/delivery/flat.py) against the general one, through the hooks.

The two must be one behaviour: the same bytes on the wire, the same records in the journal, the
same outcome when the receiver hangs. Each comparison runs two real relays on real journals,
one as shipped (its plain webhooks take the flat path) and one with a plugin whose
``prepare_request`` returns nothing (which sends every attempt through the hooks), posts the
same event to both, and compares what a raw receiver read, byte for byte, with the delivery's
id, which differs between the two, put aside.
"""

from __future__ import annotations

import math
import sqlite3
from types import SimpleNamespace

import pytest
import trio

from relay import config as config_module
from relay.config import Webhook
from relay.delivery.attempt import Attempts
from relay.delivery.deadlines import Watchdog
from relay.delivery.flat import Plans
from relay.delivery.lanes import Lane
from relay.model import Delivery, Event
from relay.plugins import Components, hookimpl, make_plugin_manager
from tests.conftest import (
    Receiver,
    RecordingTransport,
    make_config,
    post_event,
    relay_of,
    start_receiver,
)


class Wire:
    """A receiver that keeps each request exactly as it came (head and body, bytes) and answers
    each with ``answer``."""

    def __init__(self, answer: bytes):
        self.answer = answer
        self.requests: list[bytes] = []
        self.origin = ""

    async def serve(self, stream: trio.SocketStream) -> None:
        buffer = b""
        while True:
            while (end := buffer.find(b"\r\n\r\n")) < 0:
                if not (data := await stream.receive_some(65536)):
                    return
                buffer += data
            head = buffer[:end].decode("latin-1")
            length = next(
                (
                    int(line.split(":", 1)[1])
                    for line in head.split("\r\n")
                    if line.lower().startswith("content-length:")
                ),
                0,  # a GET has none
            )
            while len(buffer) < end + 4 + length:
                buffer += await stream.receive_some(65536)
            self.requests.append(buffer[: end + 4 + length])
            buffer = buffer[end + 4 + length :]
            await stream.send_all(self.answer)

    async def start(self, nursery) -> Wire:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        await nursery.start(trio.serve_listeners, self.serve, listeners)
        self.origin = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        return self


class ThroughTheHooks:
    """Takes part in every attempt, changing nothing: no attempt can be flat."""

    @hookimpl
    def prepare_request(self, webhook, delivery, request):
        return None


PLAIN_ANSWER = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 2\r\n\r\nok"
# An answer that shows what the records mask: a cookie, and the secret echoed in the body.
ECHOING_ANSWER = (
    b"HTTP/1.1 201 Created\r\nSet-Cookie: session=abc\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 24\r\n\r\nyou signed with s3cr3t!!"
)


async def both_ways(nursery, tmp_path, webhook: dict, answer: bytes, secrets=None):
    """Each relay's request as the receiver read it, its records in the journal, and whether
    its webhook took the flat path; the delivery's id replaced by ``ID``. ``{origin}`` in the
    webhook's ``url`` is the receiver's."""
    results = []
    wire = await Wire(answer).start(nursery)  # one for both: the Host header names its port
    url = webhook.get("url", "{origin}/hook?x=1").replace("{origin}", wire.origin)
    for name, plugins in (("flat", ()), ("hooks", (ThroughTheHooks(),))):
        config = config_module.parse(
            {
                "relay": {
                    "listen": "127.0.0.1:0",
                    "state_dir": str(tmp_path / name / "state"),
                    "delivery": "inline",
                    "allow_networks": ["127.0.0.0/8"],
                },
                "webhooks": [{"id": "crm", **webhook, "url": url}],
                "secrets": secrets or {},
            },
            (tmp_path / "relay.toml").absolute(),
        )
        relay = relay_of(config, plugins)
        await nursery.start(relay.run)
        await post_event(relay)
        with trio.fail_after(10):
            while not attempts(relay):
                await trio.sleep(0.01)
        (delivery_id, request, response, status, error), *_ = attempts(relay)
        flat = relay.dispatcher.plans.get(relay.config.webhooks[0]) is not None
        if error is not None:  # nothing was sent
            results.append((flat, request, response, status, error))
            continue
        id_ = delivery_id.encode()
        sent = wire.requests[-1].replace(id_, b"ID")
        results.append((flat, sent, request.replace(id_, b"ID"), response, status))
    return results


def attempts(relay, columns: str = "delivery_id, request, response, status, error") -> list:
    """``columns`` of the relay's attempts, in their order."""
    with sqlite3.connect(relay.config.relay.state_dir / "journal.sqlite3") as conn:
        return conn.execute(f"SELECT {columns} FROM attempts ORDER BY number").fetchall()


@pytest.mark.parametrize(
    "webhook,answer",
    [
        ({"secret": "s3cr3t"}, PLAIN_ANSWER),
        ({"secret": "s3cr3t"}, ECHOING_ANSWER),
        ({}, PLAIN_ANSWER),  # signed with the webhook's id
        ({"signer": "none"}, PLAIN_ANSWER),
        # A secret the header lines hold ("application/json"): masked there, header by header.
        ({"secret": "application"}, ECHOING_ANSWER),
    ],
    ids=["secret", "echoing-answer", "id-as-secret", "unsigned", "secret-in-headers"],
)
async def test_both_paths_send_and_record_the_same(nursery, tmp_path, webhook, answer):
    flat, hooks = await both_ways(nursery, tmp_path, webhook, answer)
    assert flat[0] and not hooks[0]  # each took the path it was meant to
    assert flat[1:] == hooks[1:]
    sent, request, response, status = flat[1:]
    assert sent.startswith(b"POST /hook?x=1 HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"\r\nRelay-Delivery-Id: ID\r\n" in sent
    assert (b"\r\nSignature: " in sent) is (webhook.get("signer") != "none")
    assert status == int(answer.split()[1])
    assert request.startswith(b"= POST http://127.0.0.1:")
    assert response.startswith(answer.split(b"\r\n")[0])
    if answer is ECHOING_ANSWER:
        assert b"session=abc" not in response  # Set-Cookie is masked in the record
        assert webhook["secret"].encode() not in response + request


COMPOSED = {
    "json": {
        "method": "POST",
        "url": "{origin}/ack/receive?id=@{{payload.id}}&key=%token%",
        "headers": {"Authorization": "Bearer %token%", "X-Status": "@{{payload.status}}"},
        "body": {"id": "@{{payload.id}}", "status": "@{{payload.status}}", "t": "%token%"},
        "secret": "s3cr3t",
    },
    "get": {  # bodiless: signed over its method and request target
        "method": "GET",
        "url": "{origin}/users/@{{payload.id}}?status=@{{payload.status}}",
        "headers": {"X-Id": "@{{payload.id}}"},
    },
    "form": {
        "body": {"id": "@{{payload.id}}", "s": ["a", "@{{payload.status}}"]},
        "body_format": "form",
    },
    "multipart": {"body": {"id": "@{{payload.id}}"}, "body_format": "multipart", "signer": "none"},
    "relay's header": {"headers": {"Relay-Delivery-Id": "mine", "signature": "mine"}, "body": {}},
}


@pytest.mark.parametrize("kind", sorted(COMPOSED))
async def test_both_paths_send_and_record_the_same_composed(nursery, tmp_path, kind, monkeypatch):
    monkeypatch.setenv("FLAT_TOKEN", "t0ken-t0ken")
    secrets = {"token": {"env": "FLAT_TOKEN"}}
    flat, hooks = await both_ways(nursery, tmp_path, COMPOSED[kind], ECHOING_ANSWER, secrets)
    assert flat[0] and not hooks[0]
    assert flat[1:] == hooks[1:]
    sent, request, response, _ = flat[1:]
    assert b"\r\nRelay-Delivery-Id: ID\r\n" in sent and b"mine" not in sent
    assert b"t0ken-t0ken" not in request + response  # the secret is masked in the records


async def test_both_paths_fail_an_event_the_template_cannot_render_alike(nursery, tmp_path):
    webhook = {"body": {"missing": "@{{payload.nothing}}"}, "on_missing": "fail"}
    flat, hooks = await both_ways(nursery, tmp_path, webhook, PLAIN_ANSWER)
    assert flat[0] and not hooks[0]
    assert flat[1:] == hooks[1:]
    assert flat[1:4] == (None, None, None) and "payload.nothing" in flat[4]


def plans_for(tmp_path, webhook: dict, plugins=()) -> tuple[Plans, Webhook]:
    """The plans of a relay with ``plugins``, and its one webhook."""
    config = make_config(tmp_path, [{"id": "crm", "url": "http://x.test/", **webhook}])
    pm = make_plugin_manager(config, entry_points=False)
    for plugin in plugins:
        pm.register(plugin)
    components = Components.collect(pm)
    config = components.bind(config)
    transports = components.open_transports(config)
    return Plans(Attempts(pm, components, transports), components, transports), config.webhooks[0]


class RendersItsOwn:
    @hookimpl
    def render_request(self, webhook, delivery):
        return None


class Observes:
    @hookimpl
    def attempt_finished(self, webhook, delivery, request, outcome):
        pass


class SignsItsOwn:
    @hookimpl
    def register_signers(self, register):
        register("mine", lambda webhook, delivery, request: request)


class SendsItsOwn:
    @hookimpl
    def register_transports(self, register):
        register("mine", lambda config: RecordingTransport())


@pytest.mark.parametrize(
    "webhook,plugins,flat",
    [
        ({}, (), True),
        ({"signer": "none"}, (), True),
        ({"method": "POST", "body": {"id": "@{{payload.id}}"}}, (), True),  # composed
        ({}, (ThroughTheHooks(),), False),
        ({}, (Observes(),), False),
        ({}, (RendersItsOwn(),), False),
        ({"signer": "mine"}, (SignsItsOwn(),), False),
        ({"transport": "mine"}, (SendsItsOwn(),), False),
    ],
    ids=[
        "plain",
        "unsigned",
        "composed",
        "preparer",
        "observer",
        "renderer",
        "plugin-signer",
        "plugin-transport",
    ],
)
def test_what_takes_the_flat_path(tmp_path, webhook, plugins, flat):
    plans, hook = plans_for(tmp_path, webhook, plugins)
    assert (plans.get(hook) is not None) is flat


async def start_on(nursery, tmp_path, receiver: Receiver, **webhook):
    # The journal in this process: on the mocked clock, a writer process's commits would take
    # real time the clock jumps over.
    config = make_config(
        tmp_path, [{"id": "crm", "url": receiver.url, **webhook}], journal="inline"
    )
    relay = relay_of(config)
    await nursery.start(relay.run)
    assert relay.dispatcher.plans.get(relay.config.webhooks[0]) is not None
    return relay


def outcomes(relay) -> list[tuple]:
    return attempts(relay, "number, started_at, duration, status, error")


async def test_no_answer_within_3_s_fails_and_retries_10_s_later(nursery, tmp_path, autojump_clock):
    receiver = await start_receiver(nursery, Receiver(hang=5.0))
    relay = await start_on(nursery, tmp_path, receiver, tries=2)
    await post_event(relay)
    await trio.sleep(100)
    (n1, t1, d1, s1, e1), (n2, t2, d2, s2, e2) = outcomes(relay)
    assert (s1, e1, s2, e2) == (None, "no response within 3 s", None, "no response within 3 s")
    assert d1 == pytest.approx(3.0, abs=1e-3) and d2 == pytest.approx(3.0, abs=1e-3)
    assert t2 - t1 == pytest.approx(13.0, abs=1e-3)  # cut at 3 s, retried 10 s after that


async def test_an_answer_just_within_the_timeout_counts(nursery, tmp_path, autojump_clock):
    receiver = await start_receiver(nursery, Receiver(hang=2.9))
    relay = await start_on(nursery, tmp_path, receiver)
    await post_event(relay)
    await trio.sleep(100)
    ((number, _, duration, status, error),) = outcomes(relay)
    assert (number, status, error) == (1, 200, None)
    assert duration == pytest.approx(2.9, abs=1e-3)


class HangsOnce(Receiver):
    """Hangs on its first request only."""

    async def serve(self, stream):
        self.hang = 0.0 if self.requests else 60.0
        await super().serve(stream)


async def test_a_worker_whose_attempt_was_cut_goes_on(nursery, tmp_path, autojump_clock):
    """The cut attempt's worker leaves its spent scope and attempts the next deliveries in a
    new one: one worker, three events, the first of which hangs."""
    receiver = await start_receiver(nursery, HangsOnce())
    relay = await start_on(nursery, tmp_path, receiver, concurrency=1, tries=1)
    for _ in range(3):
        await post_event(relay)
    await trio.sleep(30)
    ended = [(status, error) for _, _, _, status, error in outcomes(relay)]
    assert sorted(ended, key=repr) == [(200, None), (200, None), (None, "no response within 3 s")]
    assert relay.dispatcher.lanes["crm"].busy == 0


async def test_the_watchdog_cuts_only_what_is_overdue(autojump_clock):
    watchdog = Watchdog()
    cut: dict[str, float] = {}

    async def attempt(name: str, timeout: float, takes: float):
        slot = watchdog.slot()
        with slot.scope:
            slot.arm(timeout)
            await trio.sleep(takes)
            slot.disarm()
            return
        cut[name] = trio.current_time()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watchdog.run)
        async with trio.open_nursery() as attempts:
            attempts.start_soon(attempt, "slow", 30.0, 100.0)
            attempts.start_soon(attempt, "quick", 30.0, 1.0)
            await trio.sleep(5)
            # A shorter timeout after a reload: armed later, due earlier than the watchdog's
            # sleep, which it interrupts.
            attempts.start_soon(attempt, "shortened", 1.0, 100.0)
        nursery.cancel_scope.cancel()
    assert cut == {"shortened": 6.0, "slow": 30.0}
    assert watchdog.sleeping_until in (math.inf, -math.inf)


class AnsweredAsCut:
    """A dispatcher whose first attempt gets its answer just as the watchdog cuts it: the
    deadline passes while the answer is being read (a shielded wait stands for the read that
    cannot be interrupted), and the attempt ends normally, its outcome set, in a scope whose
    cancel was called. Every other attempt is quick. What the lane then concludes is noted;
    concluding awaits, as the real one does (the journal's queue)."""

    def __init__(self):
        self.scopes: list[trio.CancelScope] = []
        self.concluded: list[tuple[str, str]] = []

    def begin(self, webhook, delivery):
        return SimpleNamespace(delivery=delivery, outcome=None)

    async def attempt(self, run, slot) -> None:
        self.scopes.append(slot.scope)
        first = len(self.scopes) == 1
        slot.arm(3.0)
        with trio.CancelScope(shield=True):
            await trio.sleep(3.5 if first else 0.1)
        run.outcome = "answered"  # no checkpoint from here to the return: nothing raised
        slot.disarm()

    async def conclude(self, run) -> None:
        await trio.sleep(0)  # in a spent scope this raises Cancelled, and the outcome is lost
        self.concluded.append((run.delivery.id, run.outcome))


async def test_an_attempt_answered_as_its_deadline_passes_is_concluded_with_its_answer(
    tmp_path, autojump_clock
):
    config = make_config(tmp_path, [{"id": "crm", "url": "http://127.0.0.1:9/", "concurrency": 1}])
    lane = Lane(config.webhooks[0], queue=8)
    dispatcher = AnsweredAsCut()
    lane.offer([Delivery(f"d{n}", "crm", Event(f"e{n}", "x", b"{}", 0.0)) for n in range(3)])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lane.run, dispatcher)
        await trio.sleep(10)
        assert dispatcher.scopes[0].cancel_called  # the watchdog did cut the first one
        lane.stop()
    assert dispatcher.concluded == [("d0", "answered"), ("d1", "answered"), ("d2", "answered")]
    assert dispatcher.scopes[1] is not dispatcher.scopes[0]  # the next ones in a new scope
    assert dispatcher.scopes[2] is dispatcher.scopes[1] and lane.busy == 0
