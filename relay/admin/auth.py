"""The admin listener's gate: its bearer token (``[relay] admin_token``) and the Host.

The token is required by relay/config when the listener is not on a loopback address, and
checked on every request whenever one is set, loopback or not, by the handler (as configured
now: a reload may change it). The Host is checked before anything else, on the head, against
DNS rebinding, as on TCP ingest. How both are judged (constant time, nothing echoed back) is
relay/http/admission.py's.
"""

from __future__ import annotations

import trio

from relay.config import Config
from relay.http.admission import Admission, Bearer, Hosts, bearer_matches
from relay.http.server import HTTPRequest, Reply

BEARER = Bearer("[relay] admin_token", "admin listener", "relay admin")
CHALLENGE = BEARER.challenge
HINT = "add the name to [relay] allow_hosts"


def authorized(request: HTTPRequest, token: str | None) -> bool:
    """Whether ``request`` may be served: no token set, or ``Authorization: Bearer <token>``."""
    return token is None or bearer_matches(request.headers.get("authorization"), token)


def refusal(request: HTTPRequest) -> Reply:
    """The 401: what is missing, never what was expected."""
    return BEARER.refusal("authorization" in request.headers)


def admin_gates(listeners: list[trio.SocketListener], config: Config) -> dict:
    """The Host check for the admin listeners (the token is the handler's)."""
    hosts = Hosts.of(listeners, config.relay.admin, config.relay.allow_hosts, hint=HINT)
    return dict.fromkeys(listeners, Admission(hosts))
