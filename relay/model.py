"""The values that flow through relay: what came in, what goes out, and how an attempt ended.

They are frozen so that a plugin can never change what another plugin, or the journal, sees.
"""

from __future__ import annotations

import json
from typing import Any

from attrs import field, frozen

from relay.http.messages import PermanentFailure, Request, Response

__all__ = [
    "Delivery",
    "Event",
    "Outcome",
    "PermanentFailure",
    "Request",
    "Response",
    "order_key",
]


@frozen
class Event:
    """One event as the gateway sent it, already journaled.

    ``body`` is the event's JSON exactly as it will be delivered to plain webhooks.
    """

    id: str
    name: str
    body: bytes = field(repr=False)
    received_at: float

    @property
    def data(self) -> dict[str, Any]:
        """The whole envelope: ``{"event": ..., "payload": {...}, ...}``."""
        return json.loads(self.body)


@frozen
class Delivery:
    """One event on its way to one webhook; ``attempts`` counts the attempts already made.

    ``attempt_base``: the attempts made before its last replay (``relay replay``), from which
    the retry policy counts its tries anew; the attempts' numbers go on from ``attempts``.
    ``order_key``: its key when the webhook orders by one (``order_by``), else None.
    """

    id: str
    webhook_id: str
    event: Event
    attempts: int = 0
    attempt_base: int = 0
    order_key: str | None = None


def order_key(data: Any, path: str) -> str | None:
    """The value at ``path`` (``"payload.id"``) in an event's envelope, as the key that orders
    its deliveries: a string as it is, any other JSON value as its compact JSON (``7`` and
    ``"7"`` are different keys); None when the path leads nowhere or to null (no order)."""
    for name in path.split("."):
        if not isinstance(data, dict):
            return None
        data = data.get(name)
    if data is None:
        return None
    if isinstance(data, str):
        return data
    return json.dumps(data, separators=(",", ":"), sort_keys=True)


@frozen
class Outcome:
    """How one attempt ended.

    ``status`` is the HTTP status when an answer came; ``error`` says what went wrong otherwise
    (or which plugin failed). ``permanent`` means no later attempt can do better, so the retry
    policy is not asked. ``retry_after`` is the seconds a 429 or 503 asked to wait
    (``Retry-After``, in seconds or as an HTTP date), None when it asked nothing.
    """

    duration: float
    status: int | None = None
    error: str | None = None
    permanent: bool = False
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300 and self.error is None

    def describe(self) -> str:
        if self.ok:
            return f"HTTP {self.status}"
        if self.status is not None:
            return f"HTTP {self.status}" + (f" ({self.error})" if self.error else "")
        return self.error or "failed"
