"""Who may send events over TCP: a Host that names the listener (against DNS rebinding) and,
once ``[relay] ingest_token`` is set, its bearer token; relay/http/admission.py says how each
is judged. The Unix socket gets no gate: its file mode (0600) lets in only its owner.

``GET /healthz`` needs no token: liveness probes and load balancers call it, most cannot carry
a secret header (or would hold the token in plain text in a manifest), and it tells nothing a
client could use against the relay (counts, and whether the journal is failing). Its Host is
checked as every other request's.
"""

from __future__ import annotations

import socket

import trio

from relay.config import Config
from relay.http.admission import Admission, Bearer, Hosts

BEARER = Bearer("[relay] ingest_token", "ingest listener", "relay ingest")
OPEN = ("/healthz",)
HINT = "add the name to [relay] allow_hosts"


def ingest_gates(listeners: list[trio.SocketListener], relay) -> dict:
    """A gate for each TCP listener of ``relay`` (``relay.config`` read per request: a reload
    may change the token; the names apply at start)."""
    tcp = [listener for listener in listeners if listener.socket.family != socket.AF_UNIX]
    if not tcp:
        return {}
    config: Config = relay.config
    hosts = Hosts.of(tcp, config.relay.listen, config.relay.allow_hosts, hint=HINT)
    gate = Admission(hosts, token=lambda: relay.config.relay.ingest_token, bearer=BEARER, open=OPEN)
    return dict.fromkeys(tcp, Counted(gate, relay.ingest_stats))


class Counted:
    """A gate whose refusals of ingest requests (``/events``, ``/reports``) count in
    relay_events_rejected_total, as ``unauthorized`` (401) and ``misdirected`` (421): a sender
    with a stale token, or a page in a browser trying the port, shows there like any other
    rejected request."""

    REASONS = {401: "unauthorized", 421: "misdirected"}
    INGEST = (b"/events", b"/reports")

    def __init__(self, gate: Admission, stats):
        self.gate = gate
        self.stats = stats

    def __call__(self, method: bytes, target: bytes, headers: dict[bytes, bytes]):
        refusal = self.gate(method, target, headers)
        if refusal is not None and target.partition(b"?")[0] in self.INGEST:
            self.stats.refused(self.REASONS[refusal[0]])
        return refusal
