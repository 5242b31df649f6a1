"""The admin listener's bearer token (``[relay] admin_token``).

Required by relay/config/loading.py when the listener is not on a loopback address; checked on
every request whenever one is set, loopback or not. Compared in constant time, so that how long
a refusal takes says nothing of how much of a guess was right. The token is never logged nor
echoed back.
"""

from __future__ import annotations

import hmac

from relay.http.server import HTTPRequest, Reply

CHALLENGE = (("WWW-Authenticate", 'Bearer realm="relay admin"'),)


def authorized(request: HTTPRequest, token: str | None) -> bool:
    """Whether ``request`` may be served: no token set, or ``Authorization: Bearer <token>``."""
    if token is None:
        return True
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    # The server decodes header values as latin-1: back to the bytes that were sent.
    sent = credentials.strip().encode("latin-1")
    return scheme.lower() == "bearer" and hmac.compare_digest(sent, token.encode("utf-8"))


def refusal(request: HTTPRequest) -> Reply:
    """The 401: what is missing, never what was expected."""
    if "authorization" in request.headers:
        error = "the admin token is not the relay's ([relay] admin_token)"
    else:
        error = "this relay's admin listener needs Authorization: Bearer <[relay] admin_token>"
    return Reply.json({"error": error}, headers=CHALLENGE)
