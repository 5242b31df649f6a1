"""standard_webhooks, checked against the spec's vector and the `standardwebhooks` PyPI verifier."""

import base64

import pytest
from standardwebhooks import Webhook as Verifier
from standardwebhooks import WebhookVerificationError

from plugins import standard_webhooks
from tests.conftest import no_retry_delay, seed_events
from tests.plugins.helpers import journal_rows, vector, wait_until_finished

NEW = "whsec_" + base64.b64encode(b"the new key, 32 bytes long......").decode()
OLD = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OTHER = "whsec_" + base64.b64encode(b"nobody's key").decode()


def test_vector():
    v = vector("standard_webhooks")
    key = standard_webhooks.decode_secret(v["secret"])
    assert (
        standard_webhooks.signature(key, v["webhook_id"], v["timestamp"], v["body"].encode())
        == (v["expected"])
    )


def webhooks(receiver, secret, **extra):
    return [
        {"id": "crm", "url": receiver.url, "signer": "standard_webhooks", "secret": secret} | extra
    ]


async def test_a_delivery_verifies_with_the_pypi_verifier(start_relay, receiver):
    running = await start_relay(webhooks(receiver, NEW), plugins=[standard_webhooks])
    await running.post(seed_events()[0])
    (request,) = await receiver.wait_for(1)
    assert Verifier(NEW).verify(request.body, request.headers) == seed_events()[0]
    assert request.headers["webhook-id"] == request.headers["relay-delivery-id"]
    with pytest.raises(WebhookVerificationError):
        Verifier(OTHER).verify(request.body, request.headers)


async def test_rotation_signs_with_every_secret(start_relay, receiver):
    running = await start_relay(webhooks(receiver, [NEW, OLD]), plugins=[standard_webhooks])
    await running.post(seed_events()[0])
    (request,) = await receiver.wait_for(1)
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    for secret in (NEW, OLD):
        Verifier(secret).verify(request.body, request.headers)
    with pytest.raises(WebhookVerificationError):
        Verifier(OTHER).verify(request.body, request.headers)


async def test_retries_keep_the_id_and_sign_again(start_relay, receiver):
    receiver.statuses = [503]
    running = await start_relay(
        webhooks(receiver, NEW, backoff=no_retry_delay()), plugins=[standard_webhooks]
    )
    await running.post(seed_events()[0])
    first, second = await receiver.wait_for(2)
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    for request in (first, second):
        Verifier(NEW).verify(request.body, request.headers)


@pytest.mark.parametrize("secret", [None, "s3cr3t-not-whsec", "whsec_not*base64"])
async def test_a_secret_that_cannot_sign_fails_at_once_without_showing_it(
    start_relay, receiver, secret
):
    extra = {} if secret is None else {"secret": secret}
    running = await start_relay(
        [{"id": "crm", "url": receiver.url, "signer": "standard_webhooks"} | extra],
        plugins=[standard_webhooks],
    )
    await running.post(seed_events()[0])
    await wait_until_finished(running)
    assert journal_rows(running, "SELECT state, attempts FROM deliveries") == [("failed", 1)]
    ((error,),) = journal_rows(running, "SELECT error FROM attempts")
    assert "whsec_" in error
    assert secret is None or secret not in error
    assert receiver.requests == []
