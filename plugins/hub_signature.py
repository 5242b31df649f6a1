"""``X-Hub-Signature-256: sha256=<hex>``, the signature Meta (WhatsApp, Instagram) and GitHub send.

``signer = "hub_signature"``: lowercase hex HMAC-SHA256 of the exact body bytes, keyed with the
webhook's ``secret``. The scheme has room for one signature only, so during a rotation
(``secret`` a list) it signs with the newest secret, the first in the list.

Meta and GitHub only ever POST a body, so their scheme says nothing of a request without one.
For those (a composed GET or DELETE) it signs what relay's own ``Signature`` signs, the method
and request target (``relay.plugins.signed_content``): the HMAC of an empty body would be the
same on every request and vouch for none of the data in the URL.
"""

import hashlib
import hmac

from relay.plugins import hookimpl, signed_content

HEADER = "X-Hub-Signature-256"


def signature(key: bytes, content: bytes) -> str:
    return "sha256=" + hmac.new(key, content, hashlib.sha256).hexdigest()


def sign(webhook, delivery, request):
    return request.with_headers((HEADER, signature(webhook.signing_key, signed_content(request))))


@hookimpl
def register_signers(register):
    register("hub_signature", sign)
