"""The journal's side of delivery reports: bindings of a message to the webhook that wants its
later events, and the report deliveries they add as events are appended.

The reference asks for delivery reports with a ``webhook_id`` on the request that sends a
message; the reports are the status events that follow (sent, delivered, read), which carry the
message's id (``payload.id``) and no webhook. A binding ``(message_id, webhook_id, expires_at)``
says where they go.

Why the writer resolves them, in the append's own transaction, and not an index in memory: at
the default expiry of 7 days, memory would hold every message sent in a week (~200 bytes each
with a 36-character id in a dict, measured: ~12 GB at 100 messages/s), and a relay that starts
would read them all before taking events. In the journal a binding is ~110 bytes on disk, found
by primary key (O(log n)) in the transaction that journals the event: ingest gains no round
trip, no commit and no memory, and sees every binding queued before it, in the committer's
order. While no binding is live (a relay that never gets one), appends ask the writer nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from attrs import frozen

from relay.model import Delivery, Event


@frozen
class Appended:
    """What an append did besides journaling what it was given."""

    added: list[Delivery]  # the deliveries that delivery reports added
    waiting: frozenset[str]  # deliveries that wait for an earlier one of their key (order_by)


NOTHING_ADDED = Appended([], frozenset())


class Reporting:
    """``Journal``'s methods for delivery reports; they queue through its committer like every
    other operation (``_call``)."""

    # Whether a binding may be live (None: not asked yet). It turns True before a binding is
    # queued, so every append queued after the binding asks the writer about reports.
    _bound: bool | None = None

    async def bind(self, bindings: Sequence[tuple[str, str, float]]) -> None:
        """Journal ``(message_id, webhook_id, expires_at)`` bindings: until then, later events
        about each message go to its webhook too. Returns once they are on disk."""
        self._bound = True
        await self._call("bind", list(bindings))

    async def expire_bindings(self, now: float, limit: int) -> int:
        """Delete up to ``limit`` bindings expired by ``now``; returns how many went."""
        return await self._call("expire_bindings", now, limit)

    async def _append_reporting(
        self,
        event_rows: list[tuple],
        delivery_rows: list[tuple],
        events: Sequence[Event],
        now: float,
        *,
        bindings: Sequence[tuple[str, str, float]] = (),
        reports: Callable[[], list[tuple[int, str, tuple[str, ...]]]] | None = None,
        ordered: tuple[list[tuple], dict[str, str]] | None = None,
    ) -> Appended:
        """``Journal.append`` with ``bindings`` made by its events (``(message_id, webhook_id,
        expires_at)``), and ``reports()``, called only while a binding may be live:
        ``(index in events, message_id, webhook ids the event goes to already)`` for each
        event that may be a report. An event whose message is bound to another webhook gets a
        delivery there, in the same transaction. ``ordered``: see sqlite.append_ordered."""
        if bindings:
            self._bound = True
        elif reports is not None and self._bound is None:
            found = await self._call("has_bindings", now)
            if self._bound is None:  # a binding queued meanwhile made it True: that stays
                self._bound = found
        rows = reports() if reports is not None and self._bound else []
        if ordered is not None:
            args = (event_rows, delivery_rows, list(bindings), rows, now, ordered)
            added, waiting = await self._call("append_ordered", *args)
        elif bindings or rows:
            added = await self._call("append", event_rows, delivery_rows, list(bindings), rows, now)
            waiting = ()
        else:
            await self._call("append", event_rows, delivery_rows)
            return NOTHING_ADDED
        return Appended(
            [Delivery(id=d, webhook_id=w, event=events[i]) for i, d, w in added], frozenset(waiting)
        )
