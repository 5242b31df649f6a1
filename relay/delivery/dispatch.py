"""Getting deliveries attempted: a lane per webhook, and a scheduler that wakes sleeping ones.

Each webhook has its own lane: a bounded queue and ``concurrency`` workers in the lane's
nursery, each making one attempt at a time. Each attempt has a nursery of its own, inside the
worker (attempt.py): what its hooks start there ends with the attempt, never lives on in the
lane. A webhook that hangs fills its own lane and nothing else; memory holds at most
``queue + concurrency`` deliveries per webhook, however large the backlog, because whatever
finds no room stays asleep in the journal.

Fresh deliveries go from ingest straight into their lane (no journal round trip). Failed
attempts go to sleep in the journal until their retry is due; the scheduler claims due ones as
lanes have room.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

import pluggy
import trio

from relay.clock import Clock
from relay.config import Config, Webhook
from relay.delivery.attempt import Attempts
from relay.delivery.capture import Capture
from relay.delivery.health import Health
from relay.delivery.outcomes import delivery_fields, log_outcome
from relay.delivery.replays import Replays
from relay.delivery.stats import DeliveryStats
from relay.journal import Journal, JournalError
from relay.journal.states import WebhookState
from relay.model import Delivery
from relay.plugins import Components

log = logging.getLogger(__name__)


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

    def room(self) -> int:
        return self.queue - self._send.statistics().current_buffer_used

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
        if rest:
            self.overflowed = True
        return rest

    def stop(self) -> None:
        """Start no more attempts; those in flight finish, and ``run`` returns after them."""
        self.stopped = True
        self._send.close()  # workers waiting for a delivery see the end of the queue

    def resize(self) -> None:
        """Match the workers to ``webhook.concurrency`` (after a reload)."""
        while self._nursery is not None and self.workers < self.webhook.concurrency:
            self.workers += 1
            self._nursery.start_soon(self._work)

    async def run(self, dispatcher: Dispatcher) -> None:
        self._dispatcher = dispatcher
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.resize()
        self._nursery = None
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
            return self._receive.receive_nowait()
        except trio.WouldBlock:
            pass
        except trio.EndOfChannel:
            return None
        try:
            return await self._receive.receive()
        except trio.EndOfChannel:
            return None

    async def _work(self) -> None:
        dispatcher = self._dispatcher
        while (delivery := await self._next()) is not None:
            if self.stopped:
                self._leftover.append(delivery)
                continue
            if not self.enabled:  # disabled after it was queued: it sleeps, unattempted
                await dispatcher.journal.put_to_sleep([delivery.id], dispatcher.clock.now())
                continue
            if self.overflowed and self.room() > self.wake_room:
                self.overflowed, self.wake_room = False, self.queue // 2
                dispatcher.scheduler.wake()
            self.busy += 1
            try:
                # The webhook as it is now: a reload changes the next attempts, never one in
                # flight.
                await dispatcher.deliver(self.webhook, delivery)
            finally:
                self.busy -= 1
            if self.workers > self.webhook.concurrency:  # a reload lowered it
                self.workers -= 1
                return


class Scheduler:
    """Claims deliveries from the journal when they are due and their lane has room."""

    def __init__(self, journal: Journal, clock: Clock, lanes: dict[str, Lane]):
        self.journal = journal
        self.clock = clock
        self.lanes = lanes
        self._wake = trio.Event()
        self._sleeping_until = math.inf
        self.replays = Replays(journal)  # fed to lanes after what is due (replays.py)
        self.replays.announce(lanes)  # at start, any lane may have replays waiting
        # A write that failed (a full disk) and is written later may put deliveries to sleep
        # that are due by then: look again (relay/journal/health.py).
        journal.on_late_writes(self.wake)

    def wake(self, due: float = -math.inf) -> None:
        """Something is due at ``due`` (default: now, e.g. a lane drained): look again if that
        is earlier than the scheduler meant to."""
        if due < self._sleeping_until:
            self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                await self._pass()
            except JournalError as e:  # a full disk, say: ingest answers 503 meanwhile
                log.error("scheduler: the journal failed (%s); trying again in 1 s", e)
                await trio.sleep(1)

    async def _pass(self) -> None:
        """Claim what is due for lanes with room, then sleep until the next due time."""
        self._wake = trio.Event()  # reset before looking, so no wake-up is missed
        now = self.clock.now()
        with_room = []
        for webhook_id, lane in list(self.lanes.items()):  # a reload may change them
            if not lane.enabled:  # its deliveries sleep until it is enabled (wake)
                continue
            room = lane.room()
            if room <= 0:
                lane.overflowed = True
                continue
            claimed = await self.journal.claim_due(webhook_id, now, room)
            # Ingest may have filled the lane while the journal was asked: what no longer
            # fits goes back to sleep, due now, rather than be held nowhere.
            no_room = lane.offer(claimed)
            if no_room:
                await self.journal.put_to_sleep((d.id for d in no_room), now)
            if len(claimed) == room:
                lane.overflowed = True  # there may be more: look again once it drains
            else:
                with_room.append(webhook_id)
                await self.replays.feed(lane, now)
        earliest = await self.journal.next_due(with_room) if with_room else math.inf
        self._sleeping_until = earliest
        with trio.move_on_at(self.clock.to_trio(earliest)):
            await self._wake.wait()
        self._sleeping_until = math.inf  # awake: every wake-up counts until the next sleep


class Dispatcher:
    """Owns the lanes and the scheduler, and runs each delivery's attempt."""

    def __init__(
        self,
        config: Config,
        pm: pluggy.PluginManager,
        components: Components,
        transports: dict,
        journal: Journal,
        clock: Clock,
    ):
        self.config = config
        self.components = components
        self.attempts = Attempts(pm, components, transports)
        self.journal = journal
        self.clock = clock
        self.lanes = {w.id: Lane(w, config.relay.queue) for w in config.webhooks}
        self.scheduler = Scheduler(journal, clock, self.lanes)
        self.capture = Capture()  # what the journal keeps of each attempt's request and answer
        self._scheduler_scope = trio.CancelScope()
        self.stats = DeliveryStats()  # for /metrics (relay/admin/)
        self.health = Health()

    async def run(self) -> None:
        """Run lanes and scheduler until cancelled; attempts in flight are cancelled with them."""
        await self.refresh_states()  # before any lane works: a disabled one attempts nothing
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for lane in self.lanes.values():
                nursery.start_soon(lane.run, self)
            nursery.start_soon(self._run_scheduler)

    async def _run_scheduler(self) -> None:
        with self._scheduler_scope:
            await self.scheduler.run()

    def stop_intake(self) -> None:
        """Start no more attempts; ``run`` returns once those in flight have ended."""
        self._scheduler_scope.cancel()
        for lane in self.lanes.values():
            lane.stop()

    def reconfigure(self, config: Config) -> None:
        """Apply a reloaded configuration.

        Attempts in flight finish on the webhook they started with; the next attempts use the
        new one. A removed webhook's deliveries stay in the journal, parked, and resume if it
        comes back. A new webhook's lane starts at once.
        """
        self.config = config
        for webhook in config.webhooks:
            lane = self.lanes.get(webhook.id)
            if lane is None:
                lane = self.lanes[webhook.id] = Lane(webhook, config.relay.queue)
                self._nursery.start_soon(lane.run, self)
            else:
                lane.webhook = webhook
                lane.resize()
        for webhook_id in sorted(set(self.lanes) - {w.id for w in config.webhooks}):
            self.lanes.pop(webhook_id).stop()
            log.info(
                "webhook %s left the configuration: its pending deliveries stay parked in the "
                "journal, and resume if it returns",
                webhook_id,
                extra={"webhook": webhook_id},
            )
        self._apply_states()

    # -- disabled webhooks (relay/delivery/health.py) -------------------------------------

    async def refresh_states(self) -> None:
        """Read the journal's webhook states (at start, and on reload: a command may have
        written one meanwhile)."""
        self.health.load(await self.journal.webhook_states())
        self._apply_states()

    async def set_enabled(self, webhook_id: str, enabled: bool, reason: str | None = None):
        """Disable or enable ``webhook_id`` until told otherwise, restarts included."""
        state = WebhookState(webhook_id, enabled, reason, self.clock.now())
        self.health.set(state)  # first: attempts ending meanwhile see it
        self._apply_states()
        await self.journal.set_webhook_state(webhook_id, enabled, reason, state.changed_at)

    def _apply_states(self) -> None:
        for lane in self.lanes.values():
            lane.enabled = self.health.enabled(lane.webhook)
        # A command without the admin listener writes replays into the file and reloads.
        self.scheduler.replays.announce(self.lanes)
        self.scheduler.wake()  # an enabled lane's deliveries are due

    def replayed(self, webhook_ids: Iterable[str]) -> None:
        """Deliveries to these webhooks were replayed (relay/journal/replays.py): their lanes
        take them as they have room."""
        self.scheduler.replays.announce(webhook_ids)
        self.scheduler.wake()

    async def recover(self, previous_run: int) -> None:
        """Resume what earlier runs held in memory when they ended (kill -9, power loss).

        In steps, beside the scheduler, over the rows up to ``previous_run`` (newer ones are
        this run's): the journal tells their runs from this one by run id, not by time."""
        recovered = await self.journal.recover(
            previous_run, self.clock.now(), wake=self.scheduler.wake
        )
        if recovered:
            log.info(
                "resumed %d deliveries the previous run had in flight",
                recovered,
                extra={"recovered": recovered},
            )

    def in_flight(self) -> int:
        return sum(lane.busy for lane in self.lanes.values())

    async def submit(self, deliveries: Iterable[Delivery]) -> None:
        """Hand journaled deliveries to their lanes; what has no room sleeps in the journal."""
        by_lane: dict[str, list[Delivery]] = {}
        for delivery in deliveries:
            by_lane.setdefault(delivery.webhook_id, []).append(delivery)
        no_room = []
        for webhook_id, batch in by_lane.items():
            lane = self.lanes.get(webhook_id)
            if lane is None:  # the webhook left the configuration since the event was routed
                for delivery in batch:
                    log.info(
                        "delivery %s (event %s) to %s parked: the webhook is no longer in the "
                        "configuration",
                        delivery.id,
                        delivery.event.id,
                        webhook_id,
                        extra=delivery_fields(webhook_id, delivery),
                    )
            no_room.extend(lane.offer(batch) if lane is not None else batch)
        if no_room:
            await self.journal.put_to_sleep((d.id for d in no_room), self.clock.now())
            self.scheduler.wake()

    async def deliver(self, webhook: Webhook, delivery: Delivery) -> None:
        attempts, base = delivery.attempts + 1, delivery.attempt_base
        delivery = Delivery(delivery.id, delivery.webhook_id, delivery.event, attempts, base)
        started_at = self.clock.now()
        request, outcome, response = await self.attempts(webhook, delivery)
        self.attempts.finished(webhook, delivery, request, outcome)
        next_at = None
        # 410 Gone: the webhook is no more; no retry, and it is disabled below.
        if not outcome.ok and not outcome.permanent and outcome.status != 410:
            delay = self._retry_delay(webhook, delivery, outcome)
            if delay is not None:
                next_at = started_at + outcome.duration + delay
        sent, answer = self.capture(webhook, delivery, request, response)
        await self.journal.record_attempt(
            delivery, started_at, outcome, next_at=next_at, request=sent, response=answer
        )
        self.stats.record(
            webhook.id, outcome, final=next_at is None, ended_at=started_at + outcome.duration
        )
        retry_in = None if next_at is None else next_at - started_at - outcome.duration
        log_outcome(webhook.id, delivery, outcome, retry_in)
        if next_at is not None:
            self.scheduler.wake(next_at)
        if outcome.ok:
            self.health.succeeded(webhook)
        else:
            await self._failed(webhook, request, outcome, started_at)

    async def _failed(self, webhook, request, outcome, started_at) -> None:
        url = request.url if request is not None else None
        reason = self.health.failed(webhook, url, outcome.status, started_at)
        if reason is not None and self.health.enabled(webhook):
            log.warning("webhook %s disabled: %s", webhook.id, reason)
            await self.set_enabled(webhook.id, False, reason)

    def _retry_delay(self, webhook, delivery, outcome) -> float | None:
        policy = self.components.retry_policies[webhook.retry]
        attempt = delivery.attempts - delivery.attempt_base  # tries count from the last replay
        try:
            delay = policy(webhook, attempt, outcome)
            if delay is not None and (
                isinstance(delay, bool) or not isinstance(delay, (int, float))
            ):
                raise TypeError(f"returned {type(delay).__name__}, not seconds or None")
            return delay
        except Exception:  # noqa: BLE001
            log.exception(
                "retry policy %r failed; retrying in %g s",
                webhook.retry,
                webhook.backoff.first,
                extra=delivery_fields(webhook.id, delivery),
            )
            return webhook.backoff.first if attempt < webhook.tries else None
