"""hub_signature: the GitHub docs' vector, and a real delivery checked as Meta's receivers do."""

import hashlib
import hmac

from plugins import hub_signature
from tests import test_compose
from tests.conftest import seed_events
from tests.plugins.helpers import vector

raw_receiver = test_compose.raw_receiver  # a fixture: the h11 receiver, which records targets


def test_vector():
    v = vector("hub_signature")
    assert hub_signature.signature(v["secret"].encode(), v["body"].encode()) == v["expected"]


def verify(secret: str, body: bytes, header: str) -> bool:
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, header)


async def test_a_delivery_carries_the_header(start_relay, receiver):
    running = await start_relay(
        [{"id": "meta", "url": receiver.url, "signer": "hub_signature", "secret": ["new", "old"]}],
        plugins=[hub_signature],
    )
    await running.post(seed_events()[0])
    (request,) = await receiver.wait_for(1)
    assert verify("new", request.body, request.headers["x-hub-signature-256"])
    assert "signature" not in request.headers  # the chosen signer replaces the default one


async def test_a_get_is_signed_over_its_method_and_target(start_relay, raw_receiver):
    """Meta and GitHub only POST bodies; for a bodiless request the header covers what the
    request carries, as relay's own Signature does, not the empty body."""
    running = await start_relay(
        [
            {
                "id": "meta",
                "method": "GET",
                "url": f"{raw_receiver.origin}/ack?id=@{{{{payload.id}}}}",
                "signer": "hub_signature",
                "secret": "It's a Secret to Everybody",
            }
        ],
        plugins=[hub_signature],
    )
    event = seed_events()[0]
    await running.post(event)
    (arrived,) = await raw_receiver.wait_for(1)
    assert arrived.target == f"/ack?id={event['payload']['id']}"
    signed = f"GET {arrived.target}".encode()
    assert verify("It's a Secret to Everybody", signed, arrived.header("X-Hub-Signature-256"))
    assert not verify("It's a Secret to Everybody", b"", arrived.header("X-Hub-Signature-256"))
