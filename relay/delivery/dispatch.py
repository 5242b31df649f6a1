"""Getting deliveries attempted: a lane per webhook, and a scheduler that wakes sleeping ones.

Each webhook has its own lane: a bounded queue and ``concurrency`` workers in the lane's
nursery, each making one attempt at a time: relay's own (flat.py) when no plugin takes part,
else through the hooks (attempt.py), where each attempt has a nursery of its own, inside the
worker: what its hooks start there ends with the attempt, never lives on in the lane. A webhook
that hangs fills its own lane and nothing else; memory holds at most ``queue + concurrency``
deliveries per webhook, however large the backlog, because whatever finds no room stays asleep
in the journal.

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
from relay.delivery import flat
from relay.delivery.attempt import Attempts, Run
from relay.delivery.capture import Capture
from relay.delivery.deadlines import Slot
from relay.delivery.health import Health
from relay.delivery.lanes import Lane
from relay.delivery.outcomes import delivery_fields, log_outcome
from relay.delivery.replays import Replays
from relay.delivery.stats import DeliveryStats
from relay.journal import Journal, JournalError
from relay.journal.states import WebhookState
from relay.model import Delivery, Outcome
from relay.plugins import Components

log = logging.getLogger(__name__)


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
        self.plans = flat.Plans(self.attempts, components, transports)
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
            nursery.start_soon(self._release_unordered)
            # Another relay sharing the journal (PostgreSQL) changed a webhook's state.
            self.journal.on_states_changed(lambda: nursery.start_soon(self._states_changed))

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
                lane.reconfigure(webhook)
        for webhook_id in sorted(set(self.lanes) - {w.id for w in config.webhooks}):
            self.lanes.pop(webhook_id).stop()
            log.info(
                "webhook %s left the configuration: its pending deliveries stay parked in the "
                "journal, and resume if it returns",
                webhook_id,
                extra={"webhook": webhook_id},
            )
        self._apply_states()
        self._nursery.start_soon(self._release_unordered)

    async def _release_unordered(self) -> None:
        """The deliveries that wait for their key, of webhooks that no longer order by one
        (order_by removed, by a reload or while the relay was stopped), become due."""
        unordered = [w.id for w in self.config.webhooks if w.order_by is None]
        try:
            if await self.journal.release_waiting(unordered, self.clock.now()):
                self.scheduler.wake()
        except JournalError as e:  # a full disk, say: the next start or reload tries again
            log.error("the journal failed to release deliveries waiting for a key: %s", e)

    # -- disabled webhooks (relay/delivery/health.py) -------------------------------------

    async def refresh_states(self) -> None:
        """Read the journal's webhook states (at start, and on reload: a command may have
        written one meanwhile)."""
        self.health.load(await self.journal.webhook_states())
        self._apply_states()

    async def _states_changed(self) -> None:
        try:
            await self.refresh_states()
        except JournalError as e:  # the next change, reload or start reads them again
            log.error("could not read the webhook states another relay changed: %s", e)

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

    # -- one attempt: begin, attempt, conclude (a lane's worker runs them, relay/delivery/lanes.py)

    def begin(self, webhook: Webhook, delivery: Delivery) -> Run:
        d = delivery  # not attrs.evolve: ~2 µs more an attempt
        delivery = Delivery(
            d.id, d.webhook_id, d.event, d.attempts + 1, d.attempt_base, d.order_key
        )
        return Run(webhook, delivery, self.clock.now())

    async def attempt(self, run: Run, slot: Slot) -> None:
        """Make the attempt, relay's own way when its webhook and the plugins allow
        (relay/delivery/flat.py), else through the hooks. ``slot``'s deadline may cut relay's
        own short: trio.Cancelled, out to the worker's scope."""
        plan = self.plans.get(run.webhook)
        if plan is not None and flat.takes(run.delivery.id):
            await flat.attempt(plan, run, slot)
        else:
            await self.attempts(run)

    async def conclude(self, run: Run) -> None:
        """Record how the attempt went, and what follows: its retry, or its end."""
        webhook, delivery, started_at = run.webhook, run.delivery, run.started_at
        outcome = run.outcome
        if outcome is None:  # the deadline passed before an answer came
            outcome = run.outcome = Outcome(
                duration=run.elapsed(), error=f"no response within {webhook.timeout:g} s"
            )
        if self.attempts.observers:
            self.attempts.finished(webhook, delivery, run.request, outcome)
        next_at = None
        # 410 Gone: the webhook is no more; no retry, and it is disabled below.
        if not outcome.ok and not outcome.permanent and outcome.status != 410:
            delay = self._retry_delay(webhook, delivery, outcome)
            if delay is not None:
                next_at = started_at + outcome.duration + delay
        sent, answer = self.capture.of(run)
        ordered = webhook.order_by is not None
        await self.journal.record_attempt(
            delivery,
            started_at,
            outcome,
            next_at=next_at,
            request=sent,
            response=answer,
            ordered=ordered,
        )
        self.stats.record(
            webhook.id, outcome, final=next_at is None, ended_at=started_at + outcome.duration
        )
        retry_in = None if next_at is None else next_at - started_at - outcome.duration
        log_outcome(webhook.id, delivery, outcome, retry_in)
        if next_at is not None:
            self.scheduler.wake(next_at)
        elif ordered:  # the next of its key, if one waited, is due now
            self.scheduler.wake()
        if outcome.ok:
            self.health.succeeded(webhook)
        else:
            await self._failed(webhook, run.url, outcome, started_at)

    async def _failed(self, webhook, url, outcome, started_at) -> None:
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
