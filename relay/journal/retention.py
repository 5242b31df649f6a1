"""Retention: finished deliveries, with their events and attempts, leave the journal once
``[relay] retention`` seconds have passed since they finished.

Why: the journal keeps every event, delivery and attempt it is given. Measured on this machine
(412-byte status events, SQLite's own pages and indexes included), that is ~850 bytes an
event: at the top WhatsApp tier (1,000 messages/s, up to 3,000 status events/s) ~220 GB a
day, until the disk is full. With retention the file stops growing once it holds ``retention``
seconds of traffic: SQLite reuses the pages of deleted rows (the file never shrinks by itself).

What is pending is never deleted, however old: an event stays while any of its deliveries
waits for an attempt, and for ``retention`` seconds after the last one finished.

One task in the relay (the journal's owner) walks the events oldest first, in short steps
that join the journal's commits like any other write. Deleting costs about what inserting does
(~15-20 µs an event in the writer, measured on a 100,000-event journal), so a step of 500 added
~8 ms to the commit it joined, and pruning a backlog during ``scripts/bench``'s paced phase took
p99 at 1,000 events/s from 4-5 ms to 15-19 ms. Steps of 50 (~0.75 ms) with a 5 ms pause after
each that deleted something left it within the run-to-run noise (6.9-8.4 ms against 4.0-7.9),
and still prune ~7,000 events a second, twice the top tier's rate. Steps that only look (old
events still pending, a removed webhook's parked ones) do not pause: they add a read to a
commit, and a pass must not crawl over millions of them.

Each pass also deletes expired delivery-report bindings (relay/journal/bindings.py), in steps
through their expiry index, whatever ``retention`` is: expired ones are already ignored, this
only frees their space.
"""

from __future__ import annotations

import logging

import trio

from relay.clock import Clock
from relay.journal import Journal, JournalError

log = logging.getLogger(__name__)

# Seconds between passes: a tenth of the retention, so the journal holds at most ~1.1x
# ``retention`` seconds of finished traffic, within these bounds.
PASS_EVERY_MIN = 1.0
PASS_EVERY_MAX = 3600.0
FIRST_PASS_AFTER = 10.0  # at most, after start: recovery and the first deliveries go first
STEP = 50  # events looked at per step (one operation in one commit)
STEP_PAUSE = 0.005  # seconds after a step that deleted something
# Expired bindings deleted per step: ~0.7 ms of SQL (measured among 500,000 on a busy machine;
# their keys are random, so each delete dirties a page of its own), about what an events step
# costs; with the pause, ~7,000 a second, beyond any rate of messages sent.
BINDINGS_STEP = 50


class Pruner:
    """Owns the passes; ``retention`` may change (a reload) and takes effect at once."""

    def __init__(self, journal: Journal, clock: Clock, retention: float):
        self.journal = journal
        self.clock = clock
        self.retention = retention  # seconds; 0 keeps everything
        self._changed = trio.Event()

    def set_retention(self, seconds: float) -> None:
        if seconds != self.retention:
            self.retention = seconds
            self._changed.set()  # the next pass starts now, not after the old pause

    async def run(self) -> None:
        await self._pause(min(FIRST_PASS_AFTER, self._pass_every()))
        while True:
            try:
                expired = await expire_bindings(self.journal, self.clock.now())
            except JournalError as e:
                log.error("retention: the journal failed (%s); trying again later", e)
            else:
                if expired:
                    log.info("retention: removed %d expired delivery-report bindings", expired)
            seconds = self.retention
            if seconds > 0:
                try:
                    removed = await prune(self.journal, self.clock.now() - seconds)
                except JournalError as e:
                    log.error("retention: the journal failed (%s); trying again later", e)
                else:
                    if removed:
                        log.info(
                            "retention: removed %d events finished over %g s ago",
                            removed,
                            seconds,
                        )
            await self._pause(self._pass_every())

    def _pass_every(self) -> float:
        if self.retention > 0:
            return min(max(self.retention / 10, PASS_EVERY_MIN), PASS_EVERY_MAX)
        return PASS_EVERY_MAX

    async def _pause(self, seconds: float) -> None:
        """Sleep, unless the retention changes meanwhile."""
        with trio.move_on_after(seconds):
            await self._changed.wait()
        self._changed = trio.Event()


async def prune(journal: Journal, cutoff: float) -> int:
    """Delete what finished before ``cutoff``; returns how many events went."""
    after, removed, more = 0, 0, True
    while more:
        after, deleted, more = await journal.prune(after, cutoff, STEP)
        removed += deleted
        if more and deleted:
            await trio.sleep(STEP_PAUSE)
    return removed


async def expire_bindings(journal: Journal, now: float) -> int:
    """Delete the bindings expired by ``now``; returns how many went."""
    removed, more = 0, True
    while more:
        deleted = await journal.expire_bindings(now, BINDINGS_STEP)
        removed += deleted
        more = deleted == BINDINGS_STEP
        if more:
            await trio.sleep(STEP_PAUSE)
    return removed
