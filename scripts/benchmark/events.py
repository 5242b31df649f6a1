"""What the bench sends and how its hand-written HTTP/1.1 loops frame it: the seed's status
event in its variants (delivered, journal-only, numbered for latency), the bytes of a POST, and
the Content-Length of a head. The load generators, the receivers and the phases all use them."""

from __future__ import annotations

import functools
import json

from . import ROOT

SEED = ROOT / "relay" / "compose" / "examples.json"  # the reference's three example events


@functools.cache
def status_event() -> dict:
    events = json.loads(SEED.read_text())
    return next(e for e in events if e.get("event") == "whatsapp:message:status")


def compact(obj) -> bytes:
    """The JSON as relay delivers it (relay/events.py ``_canonical``)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def unrouted_event() -> dict:
    """The status event under a name no webhook of the bench's relay takes: journaled and
    acknowledged, never delivered (the ``*_alone`` phases)."""
    return {**status_event(), "event": "bench:journal-only"}


def latency_event(seq: int) -> dict:
    """The status event, routed to the latency receiver and numbered in ``foreign_id``."""
    event = status_event()
    return {
        **event,
        "payload": {**event["payload"], "foreign_id": f"lat-{seq}"},
        "webhook_id": "lat",
    }


def post_bytes(path: str, body: bytes, host: str = "localhost") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def content_length(head: bytes) -> int:
    """The Content-Length in a lowercased head (0 without one)."""
    at = head.find(b"\r\ncontent-length:")
    if at < 0:
        return 0
    stop = head.find(b"\r\n", at + 2)
    return int(head[at + 17 : stop if stop >= 0 else None])
