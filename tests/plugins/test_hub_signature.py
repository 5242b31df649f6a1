"""hub_signature: the GitHub docs' vector, and a real delivery checked as Meta's receivers do."""

import hashlib
import hmac

from plugins import hub_signature
from tests.conftest import seed_events
from tests.plugins.helpers import vector


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
