"""Hearing the other relays that share a PostgreSQL journal: ``LISTEN relay_journal``.

A batch that makes deliveries due or puts them to sleep (a retry, a hand-back, a takeover, a
release of an ordered key) ends with ``NOTIFY relay_journal, 'due'``, and one that changes a
webhook's state with ``'states'`` (pg_batch.py). Every relay listens on a connection of its
own, in its trio loop (libpq's socket, waited on with ``wait_readable``: no thread, no
polling), and on ``'due'`` wakes its scheduler, which looks at the journal again and sleeps
until the earliest due time it finds there, whoever wrote it.

Notifications are coalesced: at most one wake-up a second each, however many relays commit,
so that N relays failing against one webhook do not keep each other's schedulers spinning.
Its own writer's notifications (``own_pid``) are skipped: the scheduler woke itself. A lost
connection is opened again a second later, and its first wake-up covers what was missed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import psycopg
import trio

from relay.journal.engines import scrub
from relay.journal.pg_batch import CHANNEL
from relay.journal.pg_schema import raw_connect

log = logging.getLogger("relay.journal")

AT_MOST_EVERY = 1.0  # seconds between two wake-ups of one kind
RECONNECT_AFTER = 1.0


class Coalesced:
    """``callback()`` once ``set()`` is called, then not again for AT_MOST_EVERY seconds; sets
    meanwhile make one more call at its end."""

    def __init__(self, callback: Callable[[], None]):
        self.callback = callback
        self._event = trio.Event()

    def set(self) -> None:
        self._event.set()

    async def run(self) -> None:
        while True:
            await self._event.wait()
            self._event = trio.Event()
            self.callback()
            await trio.sleep(AT_MOST_EVERY)


async def listen(
    url: str, own_pid: int | None, on_due: Callable[[], None], on_states: Callable[[], None]
) -> None:
    due, states = Coalesced(on_due), Coalesced(on_states)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(due.run)
        nursery.start_soon(states.run)
        first = True
        while True:
            try:
                conn = raw_connect(url, autocommit=True)
            except psycopg.Error as e:
                log.warning("journal: cannot listen to the other relays (%s); again in 1 s", e)
                await trio.sleep(RECONNECT_AFTER)
                continue
            try:
                conn.execute(f"LISTEN {CHANNEL}")
                if not first:  # what was notified while nobody listened
                    due.set()
                    states.set()
                first = False
                await _receive(conn, own_pid, due, states)
            except (psycopg.Error, OSError) as e:
                log.warning(
                    "journal: lost the other relays' notifications (%s); listening again in 1 s",
                    scrub(str(e), url),
                )
            finally:
                conn.close()
            await trio.sleep(RECONNECT_AFTER)


async def _receive(conn: psycopg.Connection, own_pid, due: Coalesced, states: Coalesced):
    pgconn = conn.pgconn
    while True:
        await trio.lowlevel.wait_readable(pgconn.socket)
        pgconn.consume_input()  # raises once the connection is lost
        while (notice := pgconn.notifies()) is not None:
            if notice.be_pid == own_pid:
                continue
            (states if notice.extra == b"states" else due).set()
        if pgconn.status != psycopg.pq.ConnStatus.OK:
            raise psycopg.OperationalError("the connection closed")
