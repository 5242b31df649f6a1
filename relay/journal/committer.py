"""The durable journal: events, their deliveries, and every attempt's outcome, in SQLite.

SQLite in WAL mode with ``synchronous=FULL``: a commit is on disk (fsynced) when it returns, so
an acknowledged event survives kill -9 and power loss. Measured on this machine
(../shared/design/performance.md): one fsync per event caps ingest near 4,800 events/s, 64 per
commit reach ~170,000/s. So one task, the committer, sends whatever accumulated while the
previous commit ran as the next batch (group commit): durability costs one fsync per batch, not
per event, whatever the disk's fsync latency.

The SQL (the engine's: relay/journal/engines.py; on PostgreSQL, a commit is as durable)
runs in a writer process (writer.py says why not a thread), or, with ``[relay] journal =
"inline"``, on the trio thread (no process; the loop blocks for each commit).

A pending delivery is in one of two places:

- ``next_at IS NULL``: held in the memory of the running relay (queued or being attempted).
  A relay that starts finds such rows left by a dead one and makes them due at once.
- ``next_at`` set: asleep in the journal until then. The scheduler claims due rows (setting
  ``next_at`` back to NULL) as the webhook's lane has room, through an index on
  ``(webhook_id, next_at)``: O(log n) however many deliveries wait, and memory holds only what is
  in flight.

All work, reads included, goes through the committer in order, so a read sees every write queued
before it. A write nobody waits for that fails (a full disk) is kept and sent again until it is
written (relay/journal/health.py says why), and ``failing`` says so meanwhile.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from relay.journal import lock
from relay.journal import sqlite as journal_sql
from relay.journal.bindings import NOTHING_ADDED, Appended, Reporting
from relay.journal.health import Health
from relay.journal.health import Op as _Op
from relay.journal.leases import LEASE, sharing
from relay.journal.replays import Replaying, deliveries_of
from relay.journal.states import States
from relay.journal.writers import InlineWriter, JournalError, ProcessWriter
from relay.model import Delivery, Event, Outcome

log = logging.getLogger(__name__)

FILENAME = journal_sql.FILENAME
MAX_BATCH = 4096
WRITER_TIMEOUT = 120.0  # seconds for one commit; past that the disk is not coming back
QUEUE = 16384
# Fire-and-forget writes of the same kind that follow each other are merged into one operation
# (one executemany); writes someone waits for stay separate, so that one failing fails alone.
MERGEABLE = frozenset({"record_attempts", "put_to_sleep"})
# Seconds a batch of only such writes waits for one that somebody waits for (ingest's append),
# to share its commit. At paced rates each event otherwise costs two commits, its append's and
# its outcome's, each an fsync and a round trip to the writer. The outcomes the delivery process
# forwards count as such writes (it waits for them only to send its next batch) and wait here,
# in the journal that commits; the delivery process's own journal sends at once
# (``ride_along=0``). Measured with scripts/bench --phases e2e_http,latency_1000,latency_3000
# (three pairs, alternated): at 1,000 events/s the relay's three processes spent 900-1,013 µs
# of CPU an event against 1,097-1,140; end to end and the p99s moved within the runs' noise.
# Short, because it must not gather bursts: outcomes held 100 ms and committed together took
# p99 at 1,000/s from 4.5-6.5 ms to 11-12.
RIDE_ALONG = 0.002


class _Urgent:
    """Set when a write somebody waits for is queued, or the queue closes: it ends a ride-along
    wait (``_ride_along``) without the committer waking for each outcome queued meanwhile."""

    __slots__ = ("event",)

    def __init__(self):
        self.event = trio.Event()


class Journal(Reporting, States, Replaying):
    """Use ``async with Journal.open(state_dir) as journal``; the committer lives inside."""

    def __init__(self, send_channel: trio.MemorySendChannel, urgent: _Urgent, health: Health):
        self._ops = send_channel
        self._urgent = urgent
        self._health = health

    @property
    def failing(self) -> str | None:
        """Why the last write failed, while no write has succeeded since; else None."""
        return self._health.failing

    def on_late_writes(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` when writes that had failed are written at last, or (a shared
        journal) another relay made deliveries due: whoever schedules them must look again."""
        self._health.listeners.append(callback)

    @classmethod
    @asynccontextmanager
    async def open(cls, state_dir: Path, *, mode="process", url: str | None = None, lease=LEASE):
        """The journal in ``state_dir`` (or at ``url``, shared: leases.py), the state_dir held
        by this process alone while open. Raises JournalUnusable when it cannot be opened
        (damaged, say), naming the file."""
        start = ProcessWriter.start if mode == "process" else InlineWriter.start
        with lock.hold(state_dir):  # raises lock.StateDirLocked
            writer = await start(state_dir, url=url, lease=lease)
            async with cls.running(writer) as journal, sharing(journal, writer, url, lease):
                yield journal

    @classmethod
    @asynccontextmanager
    async def running(cls, writer, *, ride_along: float = RIDE_ALONG):
        """A journal whose batches go to ``writer`` (``await writer.run(batch)``): a writer
        process, SQL inline, or the relay itself for the delivery process."""
        send, receive = trio.open_memory_channel(QUEUE)
        urgent, health = _Urgent(), Health()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_commit_loop, writer, receive, urgent, ride_along, health)
                try:
                    async with send:
                        yield cls(send, urgent, health)
                finally:
                    urgent.event.set()
                # Closing the channel lets the committer finish what was queued, then return.
        finally:
            with trio.CancelScope(shield=True):
                await writer.aclose()

    # -- writes the caller waits for (durable on return) --------------------------------

    async def append(
        self,
        events: Sequence[Event],
        deliveries: Iterable[Delivery],
        now: float,
        *,
        order_by: Mapping[str, str] | None = None,
        **reporting,
    ) -> Appended:
        """Journal new events and their deliveries; returns once they are on disk. With them,
        ``bindings`` and ``reports`` (relay/journal/bindings.py), and ``order_by``: the
        webhooks that order their deliveries by key (``{webhook_id: path}``; a delivery's key
        is its ``order_key``). Says which deliveries reports added, and which wait for an
        earlier one of their key."""
        event_rows = [(e.id, e.name, e.body, e.received_at) for e in events]
        if order_by:
            delivery_rows = [
                (d.id, d.event.id, d.webhook_id, now, now)
                for d in deliveries
                if d.order_key is None
            ]
            ordered_rows = [
                (d.id, d.event.id, d.webhook_id, now, now, d.order_key)
                for d in deliveries
                if d.order_key is not None
            ]
            ordered = (ordered_rows, dict(order_by))
        else:
            delivery_rows = [(d.id, d.event.id, d.webhook_id, now, now) for d in deliveries]
            ordered = None
        if reporting or ordered:
            return await self._append_reporting(
                event_rows, delivery_rows, events, now, ordered=ordered, **reporting
            )
        await self._call("append", event_rows, delivery_rows)
        return NOTHING_ADDED

    # -- writes queued in order, not waited for ------------------------------------------
    # Losing one of these in a crash only repeats an attempt: the row is still pending. One
    # that fails is kept and sent again until it is written (relay/journal/health.py).

    async def record_attempt(
        self,
        delivery: Delivery,
        started_at: float,
        outcome: Outcome,
        *,
        next_at: float | None,
        request: bytes | None = None,
        response: bytes | None = None,
        ordered: bool = False,
    ) -> None:
        """Record attempt ``delivery.attempts`` and what follows it.

        ``next_at`` set: the delivery sleeps until then. Otherwise it is finished: delivered
        when the outcome is ok, failed when not; and when ``ordered`` (its webhook orders by
        key), the next delivery of its key becomes due, in the same transaction. ``request``
        and ``response``: what was sent and answered, as relay/delivery/capture.py records them.
        """
        state = "pending" if next_at is not None else ("delivered" if outcome.ok else "failed")
        attempt = (
            delivery.id,
            delivery.attempts,
            started_at,
            outcome.duration,
            outcome.status,
            outcome.error,
            request,
            response,
        )
        update = (
            state,
            delivery.attempts,
            next_at,
            started_at + outcome.duration,
            outcome.describe(),
            delivery.id,
        )
        # Known by the webhook, not by ``delivery.order_key``: a delivery claimed from the
        # journal, or added by a report, does not carry its key in memory.
        finished = ordered and next_at is None
        release = [(started_at + outcome.duration, delivery.id)] if finished else []
        await self._submit("record_attempts", [attempt], [update], release)

    async def put_to_sleep(self, delivery_ids: Iterable[str], until: float) -> None:
        """Hand deliveries that memory has no room for back to the journal, due at ``until``."""
        await self._submit("put_to_sleep", [(until, i) for i in delivery_ids])

    # -- the scheduler's side ------------------------------------------------------------

    async def last_rowid(self) -> int:
        """Rows up to this one are older than this run (read it before taking events)."""
        return await self._call("last_rowid")

    async def recover(self, upto: int, due: float, *, step: int = 20_000, wake=None) -> int:
        """Make the deliveries that dead runs held in memory (rowids up to ``upto``) due at
        ``due``; returns how many. Known by run, not by time (``journal_sql.recover``).
        ``wake()`` after each step lets the scheduler start on what was found so far; a step
        the journal fails (a full disk) is tried again a second later."""
        recovered, after = 0, 0
        while after < upto:
            try:
                recovered += await self._call("recover", after, min(after + step, upto), due)
            except JournalError as e:
                log.error("recovery: the journal failed (%s); trying again in 1 s", e)
                await trio.sleep(1)
                continue
            after += step
            if wake is not None:
                wake()
        return recovered

    async def claim_due(self, webhook_id: str, now: float, limit: int) -> list[Delivery]:
        """Take up to ``limit`` deliveries to ``webhook_id`` due by ``now`` into memory."""
        return deliveries_of(webhook_id, await self._call("claim_due", webhook_id, now, limit))

    async def release_waiting(self, webhook_ids: Iterable[str], now: float) -> int:
        """Make the deliveries to ``webhook_ids`` that wait for their key due (those webhooks
        no longer order by one); returns how many."""
        return await self._call("release_waiting", list(webhook_ids), now)

    async def next_due(self, webhook_ids: Iterable[str]) -> float:
        """When the earliest sleeping delivery to any of ``webhook_ids`` is due (inf: none)."""
        return await self._call("next_due", list(webhook_ids))

    # -- for the admin listener (relay/admin/status.py; its counts: views.count_pending) ----

    async def oldest_pending(self, webhook_ids: Iterable[str]) -> dict[str, float]:
        """When each webhook's oldest pending delivery was journaled (if any); O(log n) each."""
        return await self._call("oldest_pending", list(webhook_ids))

    # -- retention (relay/journal/retention.py) -------------------------------------------------

    async def prune(self, after: int, cutoff: float, limit: int) -> tuple[int, int, bool]:
        """Look at up to ``limit`` events after rowid ``after``; delete those older than
        ``cutoff`` whose deliveries all finished before it (see ``journal_sql.prune``)."""
        return await self._call("prune", after, cutoff, limit)

    # -- for the delivery process --------------------------------------------------------

    async def forward(self, batch: list[tuple[str, tuple]]) -> list[tuple[bool, object]]:
        """Run a batch the delivery process's own committer made (relay/delivery/process.py);
        its operations join this journal's queue, in order, and commit with ingest's."""
        ops = [_Op(name, args, trio.Event()) for name, args in batch]
        for op in ops:
            await self._queue(op)
        results = []
        for op in ops:
            await op.done.wait()
            results.append((False, op.error) if op.error is not None else (True, op.result))
        return results

    # -- plumbing --------------------------------------------------------------------------

    async def _queue(self, op: _Op) -> None:
        # send_nowait unless the queue is full: an awaited send() is also a trip through
        # trio's scheduler (~5 µs), once per event on ingest and again per attempt.
        try:
            self._ops.send_nowait(op)
        except trio.WouldBlock:
            self._urgent.event.set()  # the queue is full: a ride-along wait must end
            await self._ops.send(op)
        if op.name not in MERGEABLE:
            self._urgent.event.set()

    async def _submit(self, name: str, *args) -> None:
        await self._queue(_Op(name, args, None))

    async def _call(self, name: str, *args):
        op = _Op(name, args, trio.Event())
        await self._queue(op)
        await op.done.wait()
        if op.error is not None:
            raise JournalError(op.error)
        return op.result


async def _commit_loop(
    writer, receive: trio.MemoryReceiveChannel, urgent: _Urgent, ride_along: float, health: Health
) -> None:
    async with receive:
        while (ops := await _next_ops(receive, health)) is not None:
            _take_queued(ops, receive)
            if ride_along and all(op.name in MERGEABLE for op in ops):
                await _ride_along(ops, receive, urgent, ride_along)
            batch, owners = _merge(ops)
            # Shielded: the writer must answer the batch it was sent, even while the relay is
            # being cancelled; bounded: a writer that hangs (a dead disk) must not hang the exit.
            # Without a writer nothing more can be made durable: what waits fails (ingest
            # answers 503, so nothing acknowledged is lost), then the relay stops.
            with trio.move_on_after(WRITER_TIMEOUT, shield=True) as late:
                try:
                    results = await writer.run(batch)
                except (JournalError, trio.BrokenResourceError, OSError) as e:
                    _fail(ops, "the journal writer failed")
                    raise JournalError(
                        f"the journal writer failed ({type(e).__name__}: {e})"
                    ) from e
            if late.cancelled_caught:
                _fail(ops, "the journal writer did not answer")
                raise JournalError(f"the journal writer did not answer in {WRITER_TIMEOUT:g} s")
            health.settle(owners, results)
        health.lost()


async def _next_ops(receive: trio.MemoryReceiveChannel, health: Health) -> list[_Op] | None:
    """The next queued op, with the kept writes ahead of it once their retry is due; the kept
    writes alone when their retry comes first, and once more when the queue closes. None once
    the queue is closed and that last try is done."""
    if health.retry_at == math.inf:  # nothing kept, nothing failing: the usual case
        try:
            return [await receive.receive()]
        except trio.EndOfChannel:
            return None
    ops = []
    with trio.move_on_at(health.retry_at):
        try:
            ops.append(await receive.receive())
        except trio.EndOfChannel:
            if health.closing:
                return None
            health.closing = True
            return [op for op in health.due() if op.name != "probe"] or None
    if trio.current_time() >= health.retry_at:
        ops[:0] = health.due()
    return ops


def _take_queued(ops: list[_Op], receive: trio.MemoryReceiveChannel) -> bool:
    """Add what is queued to ``ops``, up to ``MAX_BATCH``; whether that ends a ride-along wait
    (a write somebody waits for, a full batch, or the queue closed)."""
    urgent = False
    while len(ops) < MAX_BATCH:
        try:
            op = receive.receive_nowait()
        except trio.WouldBlock:
            return urgent
        except trio.EndOfChannel:
            return True
        ops.append(op)
        urgent = urgent or op.name not in MERGEABLE
    return True


async def _ride_along(
    ops: list[_Op], receive: trio.MemoryReceiveChannel, urgent: _Urgent, seconds: float
) -> None:
    """Outcomes wait up to ``seconds`` for a write that somebody waits for, and share its
    commit. The committer sleeps meanwhile: outcomes queue without waking it."""
    urgent.event = trio.Event()
    if _take_queued(ops, receive):
        return
    with trio.move_on_after(seconds):
        await urgent.event.wait()
    _take_queued(ops, receive)


def _fail(ops: list[_Op], error: str) -> None:
    for op in ops:
        op.error = error
        if op.done is not None:
            op.done.set()


def _merge(ops: list[_Op]) -> tuple[list[tuple[str, tuple]], list[list[_Op]]]:
    """The batch to send, and for each of its operations the queued ops it carries."""
    batch: list[tuple[str, tuple]] = []
    owners: list[list[_Op]] = []
    for op in ops:
        if (
            batch
            and op.name in MERGEABLE
            and batch[-1][0] == op.name
            and not (op.alone or owners[-1][0].alone)
        ):
            for rows, more in zip(batch[-1][1], op.args, strict=True):
                rows.extend(more)  # linear in the batch, however many ops merge
            owners[-1].append(op)
        elif op.name in MERGEABLE:  # fresh lists: the ops that merge in must not change op.args
            batch.append((op.name, tuple(list(rows) for rows in op.args)))
            owners.append([op])
        else:
            batch.append((op.name, op.args))
            owners.append([op])
    return batch, owners
