"""A lane: the deliveries of one webhook that memory holds, and the workers that attempt them.

relay/delivery/dispatch.py says how lanes, the scheduler and ingest fit together; a lane's
queue is bounded, so that a webhook that hangs fills its own lane and nothing else.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import trio

from relay.config import Webhook
from relay.delivery.deadlines import Watchdog
from relay.delivery.rate import bucket_for
from relay.model import Delivery

if TYPE_CHECKING:
    from relay.delivery.dispatch import Dispatcher


class Lane:
    """The deliveries of one webhook that memory holds: queued, or being attempted.

    ``concurrency`` workers take deliveries from the lane's queue, one attempt at a time each.
    Workers, rather than a task per delivery: measured at saturation, spawning a task and
    borrowing a CapacityLimiter token per delivery cost ~8% of the relay's time.
    """

    def __init__(self, webhook: Webhook, queue: int):
        self.webhook = webhook
        self.queue = queue
        self._send, self._receive = trio.open_memory_channel(queue)
        self.queued = 0  # in the queue (what the channel's statistics() says, for less)
        self.workers = 0
        self.busy = 0
        self.stopped = False
        self._leftover: list[Delivery] = []
        self._nursery: trio.Nursery | None = None
        self._dispatcher: Dispatcher | None = None  # set by run()
        # True when a delivery found no room: the scheduler must look in the journal again
        # once this lane has drained, to more than ``wake_room`` room (replays.py lowers it).
        self.overflowed = False
        self.wake_room = queue // 2
        # False while the webhook is disabled (relay/delivery/health.py): what reaches the
        # lane goes back to the journal, unattempted, and the scheduler claims nothing for it.
        self.enabled = webhook.enabled
        self.bucket = bucket_for(webhook)  # rate = "...": paces the attempts; None: no pace
        self.watchdog = Watchdog()  # cuts the workers' attempts off at their deadlines

    def room(self) -> int:
        return self.queue - self.queued

    def offer(self, deliveries: Iterable[Delivery]) -> list[Delivery]:
        """Queue what fits; return the rest."""
        if not self.enabled:
            return list(deliveries)
        rest = []
        for delivery in deliveries:
            try:
                self._send.send_nowait(delivery)
            except (trio.WouldBlock, trio.ClosedResourceError):
                rest.append(delivery)
            else:
                self.queued += 1
        if rest:
            self.overflowed = True
        return rest

    def stop(self) -> None:
        """Start no more attempts; those in flight finish, and ``run`` returns after them."""
        self.stopped = True
        self._send.close()  # workers waiting for a delivery see the end of the queue

    def reconfigure(self, webhook: Webhook) -> None:
        """Take a reloaded webhook's settings: the next attempts use them."""
        if webhook.rate != self.webhook.rate:
            self.bucket = bucket_for(webhook)
        self.webhook = webhook
        self.resize()

    def resize(self) -> None:
        """Match the workers to ``webhook.concurrency`` (after a reload)."""
        while self._nursery is not None and self.workers < self.webhook.concurrency:
            self.workers += 1
            self._nursery.start_soon(self._work)

    async def run(self, dispatcher: Dispatcher) -> None:
        self._dispatcher = dispatcher
        async with trio.open_nursery() as watching:
            watching.start_soon(self.watchdog.run)
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self.resize()
            self._nursery = None
            watching.cancel_scope.cancel()  # no worker left to watch
        # Intake stopped (shutdown, or the webhook left the configuration): what was queued
        # goes back to the journal, due now, rather than wait in memory unseen.
        if self._leftover:
            ids = [d.id for d in self._leftover]
            await dispatcher.journal.put_to_sleep(ids, dispatcher.clock.now())
            dispatcher.scheduler.wake()  # they are due now: another lane may take them

    async def _next(self) -> Delivery | None:
        """The next queued delivery; None once the queue is closed. What is queued already is
        taken without a trip through trio's scheduler (~5 µs an attempt)."""
        try:
            delivery = self._receive.receive_nowait()
        except trio.WouldBlock:
            try:
                delivery = await self._receive.receive()
            except trio.EndOfChannel:
                return None
        except trio.EndOfChannel:
            return None
        self.queued -= 1
        return delivery

    async def _work(self) -> None:
        """Attempt deliveries one after another, in the slot's scope (relay/delivery/
        deadlines.py): when its watchdog cuts an attempt short, the spent scope is left, the
        attempt concluded outside it, and the next attempts run in a new one."""
        slot = self.watchdog.slot()
        run = None  # the attempt begun and not yet concluded
        try:
            while True:
                with slot.scope:
                    while (delivery := await self._next()) is not None:
                        if not await self._admit(delivery):
                            continue
                        run = self._dispatcher.begin(self.webhook, delivery)
                        self.busy += 1
                        await self._dispatcher.attempt(run, slot)
                        if slot.spent:  # cut as it ended: nothing more may wait in this scope
                            break
                        ended, run = run, None
                        await self._conclude(ended)
                        if self.workers > self.webhook.concurrency:  # a reload lowered it
                            self.workers -= 1
                            return
                    else:
                        return  # the queue is closed
                slot.renew()
                if run is not None:
                    ended, run = run, None
                    await self._conclude(ended)
        finally:
            self.watchdog.release(slot)
            if run is not None:  # the lane was cancelled in the middle of it
                self.busy -= 1

    async def _admit(self, delivery: Delivery) -> bool:
        """Whether to attempt ``delivery`` now; if not, it waits elsewhere (the journal, or
        the leftovers of a stopped lane)."""
        dispatcher = self._dispatcher
        if self.stopped:
            self._leftover.append(delivery)
            return False
        if not self.enabled:  # disabled after it was queued: it sleeps, unattempted
            await dispatcher.journal.put_to_sleep([delivery.id], dispatcher.clock.now())
            return False
        if self.overflowed and self.room() > self.wake_room:
            self.overflowed, self.wake_room = False, self.queue // 2
            dispatcher.scheduler.wake()
        if self.bucket is not None:
            await self.bucket.take()
            if self.stopped or not self.enabled:  # while it waited for its turn
                await dispatcher.journal.put_to_sleep([delivery.id], dispatcher.clock.now())
                return False
        return True

    async def _conclude(self, run) -> None:
        try:
            await self._dispatcher.conclude(run)
        finally:
            self.busy -= 1
