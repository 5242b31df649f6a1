"""Relays that share one journal (PostgreSQL): their leases kept, the leases of relays that died
taken over, and what the others change heard.

Why leases, not row locks: a lock held across the HTTP call (Hook0's way) holds a connection and
a transaction for as long as a webhook takes to answer, and a relay that hangs holds its rows
forever. A lease is a deadline on the rows a relay holds in memory (postgresql.py): this task
renews all of them every third of ``lease`` in one statement, and takes over (due at once)
what relays that stopped renewing held, once their leases expired. What a relay that died had
in flight is then attempted again by another: those, and only those, may arrive twice.

A relay cut off from the database for longer than its lease keeps what it holds in memory and
may attempt it while another relay has taken it over: its outcomes for those are dropped (the
rows are no longer its), and a receiver may get such a delivery twice. The lease is a trade:
shorter resumes a dead relay's deliveries sooner, longer rides out longer outages.

Another relay's retry or hand-back (due later, or now) and its change of a webhook's state
arrive as notifications (pg_notify.py): they wake the scheduler (``on_late_writes``' listeners)
and re-read the states (``on_states_changed``' listeners).
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

import trio

log = logging.getLogger("relay.journal")

LEASE = 30.0  # seconds, the default of [journal] lease


@asynccontextmanager
async def sharing(journal, writer, url: str | None, lease: float):
    """Inside: ``journal``'s leases kept and the other relays heard, when it is shared."""
    if url is None:
        yield
        return
    from relay.journal.pg_notify import listen

    # Another relay may bind a message at any time: every append asks (relay/journal/bindings.py).
    journal._bound = True
    async with trio.open_nursery() as nursery:
        nursery.start_soon(keep_leases, journal, lease)
        own = getattr(writer, "backend_pid", None)
        nursery.start_soon(listen, url, own, lambda: _wake(journal), journal.states_changed)
        try:
            yield
        finally:
            nursery.cancel_scope.cancel()


def _wake(journal) -> None:
    for listener in journal._health.listeners:
        listener()


async def keep_leases(journal, lease: float) -> None:
    """Every ``lease / 3`` seconds: renew, and take over what expired."""
    while True:
        await trio.sleep(lease / 3)
        try:
            taken = await journal._call("renew_leases")
        except Exception as e:  # noqa: BLE001 - JournalError; the next period tries again
            log.error("journal: could not renew this relay's leases (%s); trying again", e)
            continue
        if taken:
            log.warning(
                "journal: took over %d deliveries held by relays whose leases expired",
                taken,
                extra={"taken_over": taken},
            )
            _wake(journal)
