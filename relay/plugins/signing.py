"""What an HMAC signature of a request covers, so that every signed request is signed over the
data it carries.

A request with a body is signed over its body, byte for byte, as the reference document says
("Signature": HMAC-SHA256 of the body). A request without one (a composed GET or DELETE, whose
data travels in the URL) is signed over its method, a space and its request target, exactly as
they stand on the request line: ``GET /ack/receive?id=a418&status=read``. Signing the empty body
instead would give every such request the same signature, covering nothing. The method is
signed too so that a GET's signature does not also vouch for a DELETE of the same target, and
a request line can never be taken for a body (JSON, form and multipart bodies never start with
a method and a space). The host and scheme are not signed: proxies in front of a receiver
change them, and the key is the webhook's own.
"""

from relay.http.client import request_target
from relay.model import Request


def signed_content(request: Request) -> bytes:
    """The bytes a body signer signs for ``request``: its body, or, when it has none, its
    method and request target as the client sends them (``request_target``)."""
    if request.body:
        return request.body
    return f"{request.method} {request_target(request.url)}".encode()
