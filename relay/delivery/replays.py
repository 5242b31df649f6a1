"""Replayed deliveries (``relay replay``) into their lanes, without starving fresh traffic.

A replay of thousands of deliveries must not make the events that keep coming wait for all of
them. Replayed deliveries wait in the journal in a queue of their own (relay/journal/replays.py),
which the scheduler's claims of due deliveries never take from; after those, on each pass, the
scheduler tops a lane's queue up with replays only while it holds fewer than ``DEPTH`` rounds
of its workers (``DEPTH * concurrency`` deliveries), and claims more when half are left. A
lane's queue is first in, first out: so an event that comes in during a replay waits behind at
most that many (a couple of attempts of each worker), where without this it would wait behind
every replayed delivery that fit in the queue (``[relay] queue``, 1024), or behind all of them
once its lane overflowed into the journal. Deliveries due for a retry go before replays too.

Measured with scripts/bench_replay (10,000 failed deliveries replayed while fresh events came at
100/s, a receiver taking 2 ms an answer, a 2-core machine at a load near 4.5 whose fdatasync took
~1.5 ms): fresh events' p50 went from 7-10 ms without a replay to 15-16 ms during it (p99 23-32
to ~50 ms), and the replay ran at 630-680/s. Claiming with all of the lane's room instead: p50
430-540 ms, p99 650-790 ms, 1,225-1,410/s. (5,000 of them at a lighter load: ``DEPTH = 2`` p50
9-11 ms at 1,100-1,200/s; ``DEPTH = 4`` p50 17-21 ms at 1,300-1,700/s.) A claim is a journal
commit (an fsync), so the replay's pace is about ``DEPTH * concurrency / 2`` deliveries per
commit's round trip, when the receiver is faster than that.

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
    from relay.delivery.lanes import Lane


# Replays a lane's queue may hold, in attempts per worker: a fresh delivery waits behind at
# most this many rounds of them. The scheduler claims more when half are left, so that the
# workers have a round to do while the journal answers (a claim is a commit: an fsync).
DEPTH = 2


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
        share = DEPTH * lane.webhook.concurrency
        room = min(lane.room(), share - (lane.queue - lane.room()))
        if room > 0:
            claimed = await self.journal.claim_replays(webhook_id, now, room)
            no_room = lane.offer(claimed)  # ingest may have filled it meanwhile
            if no_room:
                await self.journal.put_back_replays((d.id for d in no_room), now)
            if len(claimed) < room:
                if self.waiting.get(webhook_id) == seen:
                    del self.waiting[webhook_id]
                return
        # There may be more: look again once the lane's queue is down to half the share (not
        # at its first take, which would claim one at a time, a journal round trip each).
        lane.overflowed = True
        lane.wake_room = max(lane.wake_room, lane.queue - share // 2 - 1)
