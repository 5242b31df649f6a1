"""Each hook in relay/plugins/hookspecs.py, implemented by an inline plugin in a running relay."""

import json

import attrs
import trio

from relay.model import Request, Response
from relay.plugins import hookimpl
from tests.conftest import no_retry_delay, seed_events, start_receiver
from tests.plugins.helpers import journal_rows, wait_until_finished


async def test_render_request_for_some_webhooks_only(start_relay, nursery):
    custom, plain = await start_receiver(nursery), await start_receiver(nursery)

    class Slack:
        @hookimpl
        def render_request(self, webhook, delivery):
            if webhook.id != "slack":
                return None
            text = f"event {delivery.event.name}"
            return Request("POST", webhook.url, body=json.dumps({"text": text}).encode())

    running = await start_relay(
        [{"id": "slack", "url": custom.url}, {"id": "crm", "url": plain.url}], plugins=[Slack()]
    )
    event = seed_events()[0]
    await running.post(event)
    await custom.wait_for(1)
    await plain.wait_for(1)
    assert custom.bodies() == [{"text": f"event {event['event']}"}]
    assert plain.bodies() == [event]


async def test_prepare_request_that_raises_fails_only_that_attempt(start_relay, nursery):
    guarded, other = await start_receiver(nursery), await start_receiver(nursery)

    class FlakyAuth:
        __name__ = "flaky_auth"
        calls = 0

        @hookimpl
        def prepare_request(self, webhook, delivery, request):
            if webhook.id != "guarded":
                return None
            self.calls += 1
            if self.calls == 1:
                raise RuntimeError("vault sealed")
            return request.with_headers(("X-Auth", "ok"))

    running = await start_relay(
        [
            {"id": "guarded", "url": guarded.url, "backoff": no_retry_delay()},
            {"id": "other", "url": other.url},
        ],
        plugins=[FlakyAuth()],
    )
    await running.post(seed_events()[0])
    await wait_until_finished(running, 2)
    (request,) = guarded.requests
    assert request.headers["x-auth"] == "ok"
    assert len(other.requests) == 1
    assert journal_rows(
        running,
        "SELECT number, status, error FROM attempts JOIN deliveries ON id = delivery_id "
        "WHERE webhook_id = 'guarded' ORDER BY number",
    ) == [
        (1, None, "plugin flaky_auth (prepare_request): RuntimeError: vault sealed"),
        (2, 200, None),
    ]


async def test_prepare_request_may_return_an_awaitable(start_relay, receiver):
    class SlowAuth:
        @hookimpl
        def prepare_request(self, webhook, delivery, request):
            async def with_token():
                await trio.sleep(0)
                return request.with_headers(("X-Token", delivery.id))

            return with_token()

    running = await start_relay([{"id": "crm", "url": receiver.url}], plugins=[SlowAuth()])
    await running.post(seed_events()[0])
    (request,) = await receiver.wait_for(1)
    assert request.headers["x-token"] == request.headers["relay-delivery-id"]


async def test_attempt_finished_sees_every_outcome_and_cannot_lose_one(start_relay, receiver):
    receiver.statuses = [500]
    seen = []

    class Observer:
        @hookimpl
        def attempt_finished(self, webhook, delivery, request, outcome):
            seen.append((webhook.id, delivery.attempts, request.method, outcome.status))
            raise RuntimeError("metrics backend down")

    running = await start_relay(
        [{"id": "crm", "url": receiver.url, "backoff": no_retry_delay()}], plugins=[Observer()]
    )
    await running.post(seed_events()[0])
    await wait_until_finished(running)
    assert seen == [("crm", 1, "POST", 500), ("crm", 2, "POST", 200)]
    assert journal_rows(running, "SELECT number, status FROM attempts ORDER BY number") == [
        (1, 500),
        (2, 200),
    ]


async def test_register_retry_policies_with_a_custom_policy(start_relay, receiver):
    receiver.statuses = [500, 500, 500, 500]
    asked = []

    def twice_more(webhook, attempt, outcome):
        asked.append((attempt, outcome.status))
        return 0.01 if attempt < 3 else None

    class Policies:
        @hookimpl
        def register_retry_policies(self, register):
            register("twice_more", twice_more)

    running = await start_relay(
        [{"id": "crm", "url": receiver.url, "retry": "twice_more", "tries": 10}],
        plugins=[Policies()],
    )
    await running.post(seed_events()[0])
    await wait_until_finished(running)
    assert asked == [(1, 500), (2, 500), (3, 500)]
    assert journal_rows(running, "SELECT state, attempts FROM deliveries") == [("failed", 3)]


async def test_register_signers_signs_the_final_body(start_relay, receiver):
    class Length:
        @hookimpl
        def register_signers(self, register):
            register(
                "length",
                lambda webhook, delivery, request: request.with_headers(
                    ("X-Length", str(len(request.body)))
                ),
            )

    running = await start_relay(
        [{"id": "crm", "url": receiver.url, "signer": "length"}], plugins=[Length()]
    )
    await running.post(seed_events()[0])
    (request,) = await receiver.wait_for(1)
    assert request.headers["x-length"] == str(len(request.body))
    assert "signature" not in request.headers


async def test_register_transports_and_register_webhook_options(start_relay):
    @attrs.frozen
    class Inbox:
        name: str

    class Memory:
        def __init__(self, config):
            self.config = config

        async def send(self, webhook, request):
            inboxes.setdefault(webhook.options["inbox"].name, []).append(request)
            return Response(status=204)

        async def aclose(self):
            pass

    inboxes = {}

    class InMemory:
        @hookimpl
        def register_transports(self, register):
            register("memory", Memory)

        @hookimpl
        def register_webhook_options(self, register):
            register("inbox", Inbox)

    running = await start_relay(
        [{"id": "m", "url": "http://unused/", "transport": "memory", "inbox": {"name": "one"}}],
        plugins=[InMemory()],
    )
    await running.post(seed_events()[0])
    await wait_until_finished(running)
    (request,) = inboxes["one"]
    assert json.loads(request.body) == seed_events()[0]
    assert journal_rows(running, "SELECT state FROM deliveries") == [("delivered",)]
