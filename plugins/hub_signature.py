"""``X-Hub-Signature-256: sha256=<hex>``, the signature Meta (WhatsApp, Instagram) and GitHub send.

``signer = "hub_signature"``: lowercase hex HMAC-SHA256 of the exact body bytes, keyed with the
webhook's ``secret``. The scheme has room for one signature only, so during a rotation
(``secret`` a list) it signs with the newest secret, the first in the list.
"""

import hashlib
import hmac

from relay.plugins import hookimpl

HEADER = "X-Hub-Signature-256"


def signature(key: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def sign(webhook, delivery, request):
    return request.with_headers((HEADER, signature(webhook.signing_key, request.body)))


@hookimpl
def register_signers(register):
    register("hub_signature", sign)
