"""Replayed deliveries (``relay replay``) into their lanes, without starving fresh traffic.

A replay of thousands of deliveries must not make the events that keep coming wait for all of
them. Replayed deliveries wait in the journal in a queue of their own (relay/journal/replays.py),
which the scheduler's claims of due deliveries never take from; after those, on each pass, the
scheduler tops a lane's queue up with replays only while it holds fewer than ``concurrency``
deliveries. A lane's queue is first in, first out: so an event that comes in during a replay
waits behind at most ``concurrency`` others (about one attempt of each worker), where without
this it would wait behind every replayed delivery that fit in the queue (``[relay] queue``,
1024), or behind all of them once its lane overflowed into the journal. Deliveries due for a
retry go before replays too. The replay goes as fast as the lane's workers take from the queue
when nothing else comes (each take of a lane that had more waiting wakes the scheduler).

Which lanes may have replays waiting is kept here (``announce``), so that a pass asks the
journal only for those: all of them at start and whenever the states are read (a reload: a
command without the admin listener writes replays into the file and asks for one), and the
lanes of a replay made through the running relay.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from relay.journal import Journal

if TYPE_CHECKING:
    from relay.delivery.dispatch import Lane


class Replays:
    def __init__(self, journal: Journal):
        self.journal = journal
        # Webhooks whose lanes may have replays waiting, each with a count of announcements:
        # one made while a claim is under way must not be lost when that claim comes back short.
        self.waiting: dict[str, int] = {}

    def announce(self, webhook_ids: Iterable[str]) -> None:
        for webhook_id in webhook_ids:
            self.waiting[webhook_id] = self.waiting.get(webhook_id, 0) + 1

    async def feed(self, lane: Lane, now: float) -> None:
        """Top ``lane``'s queue up with replayed deliveries (the scheduler's pass, after it
        claimed the lane's due ones)."""
        webhook_id = lane.webhook.id
        seen = self.waiting.get(webhook_id)
        if seen is None:
            return
        room = lane.room()
        room = min(room, lane.webhook.concurrency - (lane.queue - room))
        if room <= 0:
            lane.overflowed = True  # look again once the lane has taken from its queue
            return
        claimed = await self.journal.claim_replays(webhook_id, now, room)
        no_room = lane.offer(claimed)  # ingest may have filled it meanwhile
        if no_room:
            await self.journal.put_back_replays((d.id for d in no_room), now)
        if len(claimed) == room:
            lane.overflowed = True  # there may be more
        elif self.waiting.get(webhook_id) == seen:
            del self.waiting[webhook_id]
