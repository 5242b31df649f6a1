"""The Standard Webhooks signature (https://www.standardwebhooks.com), as Svix sends it.

``signer = "standard_webhooks"`` adds three headers:

- ``webhook-id``: the delivery id, the same on every retry, so receivers can drop duplicates;
- ``webhook-timestamp``: Unix seconds when this attempt is signed, so receivers can refuse replays;
- ``webhook-signature``: ``v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>``, one
  space-separated signature per secret when ``secret`` is a list, so a receiver holding either
  the old or the new secret accepts the request during a rotation.

Secrets are ``whsec_`` followed by the base64 key, as Standard Webhooks libraries generate them.
"""

import base64
import binascii
import hashlib
import hmac
import time

from relay.model import PermanentFailure
from relay.plugins import hookimpl

PREFIX = "whsec_"


def signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def decode_secret(secret: str) -> bytes:
    """The key inside ``whsec_<base64>``.

    A malformed secret can never sign, so it fails the delivery for good rather than retrying;
    the message names the rule, never the secret.
    """
    if not secret.startswith(PREFIX):
        raise PermanentFailure('standard_webhooks needs secret = "whsec_<base64>"')
    try:
        return base64.b64decode(secret[len(PREFIX) :], validate=True)
    except binascii.Error:
        raise PermanentFailure("standard_webhooks: the secret after whsec_ is not base64") from None


def sign(webhook, delivery, request):
    timestamp = int(time.time())  # per attempt: a retry is a new, fresh request
    signatures = " ".join(
        signature(decode_secret(secret), delivery.id, timestamp, request.body)
        for secret in webhook.secrets
    )
    return request.with_headers(
        ("webhook-id", delivery.id),
        ("webhook-timestamp", str(timestamp)),
        ("webhook-signature", signatures),
    )


@hookimpl
def register_signers(register):
    register("standard_webhooks", sign)
