"""What ingest took and refused: plain counters the API updates and /metrics reads.

Per request, not per event where it can be helped: ingest is a hot path (a few integer additions
a request, and a dict update a delivery: ~0.35 µs for a single event, ~0.15 µs a delivery).
``per_second`` counts events into the second they were accepted in, for the web console's live
chart: one more comparison and addition a request.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from relay.ingest.events import InvalidEvents
from relay.model import Delivery

SECONDS = 300  # per_second's span

# Why a request was rejected whole (nothing of it journaled): relay_events_rejected_total's
# reason label. Stable names: dashboards and alerts key on them.
REJECTIONS = (
    "malformed_json",  # 400: the body is not JSON (or not UTF-8)
    "invalid_event",  # 422: not an event object, or a field missing or of the wrong type
    "unknown_webhook",  # 422: only "webhook_id"s that name no webhook were wrong
    "too_large",  # 413: over [relay] max_body
    "unsupported_media_type",  # 415: not application/json
    "journal_unavailable",  # 503: the journal could not take it
    "unauthorized",  # 401: over TCP without the ingest_token (relay/ingest/trust.py)
    "misdirected",  # 421: a Host that does not name the listener (relay/ingest/trust.py)
)


class IngestStats:
    """Totals since the relay started. ``routed``: deliveries journaled per webhook id (the
    admin listener's pending counts start from the journal's and add these)."""

    __slots__ = ("accepted", "unrouted", "rejected", "routed", "per_second")

    def __init__(self):
        self.accepted = 0  # events journaled and acknowledged
        self.unrouted = 0  # of those, events no webhook took
        self.rejected = dict.fromkeys(REJECTIONS, 0)  # requests, by reason
        self.routed: dict[str, int] = {}
        # [second, events accepted in it], the last SECONDS seconds that had any.
        self.per_second: deque[list[int]] = deque([[0, 0]], maxlen=SECONDS)

    def took(
        self, events: int, unrouted: int, deliveries: Iterable[Delivery], now: float = 0.0
    ) -> None:
        """``now``: when they were accepted (wall time)."""
        self.accepted += events
        second, last = int(now), self.per_second[-1]
        if last[0] >= second:  # the same second (or a clock stepped back: counted in the last)
            last[1] += events
        else:
            self.per_second.append([second, events])
        self.unrouted += unrouted
        routed = self.routed  # a plain loop: Counter.update cost 1.1 µs a call before counting
        for delivery in deliveries:
            routed[delivery.webhook_id] = routed.get(delivery.webhook_id, 0) + 1

    def refused(self, reason: str) -> None:
        self.rejected[reason] += 1

    def too_large(self) -> None:
        """The HTTP server refuses those before the API sees them: it calls this."""
        self.rejected["too_large"] += 1


def rejection(error: InvalidEvents) -> str:
    """The reason for ``error``: a problem of the body's JSON, of an event, or only of unknown
    ``webhook_id``s (the gateway names a webhook this relay does not have)."""
    if error.status == 400:
        return "malformed_json"
    unknown = all(
        field.rpartition(".")[2] == "webhook_id" and reason.startswith("no webhook ")
        for field, reason in error.problems
    )
    return "unknown_webhook" if unknown and error.problems else "invalid_event"
