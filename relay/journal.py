"""The durable journal: events, their deliveries, and every attempt's outcome, in SQLite.

SQLite in WAL mode with ``synchronous=FULL``: a commit is on disk (fsynced) when it returns, so
an acknowledged event survives kill -9 and power loss. Measured on this machine
(../shared/design/performance.md): one fsync per event caps ingest near 4,800 events/s, 64 per
commit reach ~170,000/s. So one task, the committer, owns the connection and commits whatever
accumulated while the previous commit ran (group commit): durability costs one fsync per batch,
not per event, whatever the disk's fsync latency.

A pending delivery is in one of two places:

- ``next_at IS NULL``: held in the memory of the running relay (queued or being attempted).
  A relay that starts finds such rows left by a dead one and makes them due at once.
- ``next_at`` set: asleep in the journal until then. The scheduler claims due rows (setting
  ``next_at`` back to NULL) as the webhook's lane has room, through an index on
  ``(webhook_id, next_at)``: O(log n) however many deliveries wait, and memory holds only what is
  in flight.

All work, reads included, goes through the committer in order, so a read sees every write queued
before it.
"""

from __future__ import annotations

import logging
import math
import sqlite3
from collections.abc import Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
from attrs import define, frozen

from relay.model import Delivery, Event, Outcome

FILENAME = "journal.sqlite3"
SCHEMA_VERSION = 1
log = logging.getLogger(__name__)

MAX_BATCH = 4096
QUEUE = 16384

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    body BLOB NOT NULL,
    received_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    id TEXT PRIMARY KEY,
    event_id TEXT NOT NULL REFERENCES events (id),
    webhook_id TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',  -- pending | delivered | failed
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL,                           -- NULL: in memory (see module docstring)
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    last_outcome TEXT
);
CREATE INDEX IF NOT EXISTS deliveries_asleep
    ON deliveries (webhook_id, next_at) WHERE next_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS deliveries_event ON deliveries (event_id);
CREATE TABLE IF NOT EXISTS attempts (
    delivery_id TEXT NOT NULL,
    number INTEGER NOT NULL,
    started_at REAL NOT NULL,
    duration REAL NOT NULL,
    status INTEGER,
    error TEXT,
    PRIMARY KEY (delivery_id, number)
) WITHOUT ROWID;
"""


class JournalError(Exception):
    """The journal could not do what was asked (disk full, unreadable file ...)."""


def connect(state_dir: Path) -> sqlite3.Connection:
    """Open (creating if needed) the journal in ``state_dir``; blocking."""
    state_dir.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(
        state_dir / FILENAME, isolation_level=None, check_same_thread=False, timeout=30
    )
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=OFF")
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise JournalError(
            f"{state_dir / FILENAME}: written by a newer relay (schema {version}, "
            f"this relay knows {SCHEMA_VERSION})"
        )
    conn.executescript(SCHEMA)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    return conn


@define
class _Op:
    run: Callable[[sqlite3.Connection], Any]
    done: trio.Event | None
    result: Any = None
    error: BaseException | None = None


class Journal:
    """Use ``async with Journal.open(state_dir) as journal``; the committer lives inside."""

    def __init__(self, conn: sqlite3.Connection, send_channel: trio.MemorySendChannel):
        self._conn = conn
        self._ops = send_channel

    @classmethod
    @asynccontextmanager
    async def open(cls, state_dir: Path, *, run_blocking=trio.to_thread.run_sync):
        """``run_blocking`` runs SQLite work off the trio thread. Tests on trio's MockClock pass
        one that runs it inline: while a thread works, every task looks blocked, and the mock
        clock would jump past deadlines mid-commit."""
        conn = await run_blocking(connect, state_dir)
        send, receive = trio.open_memory_channel(QUEUE)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_commit_loop, conn, receive, run_blocking)
                async with send:
                    yield cls(conn, send)
                # Closing the channel lets the committer finish what was queued, then return.
        finally:
            conn.close()

    # -- writes the caller waits for (durable on return) --------------------------------

    async def append(self, events: Iterable[Event], deliveries: Iterable[Delivery], now: float):
        """Journal new events and their deliveries; returns once they are on disk."""
        event_rows = [(e.id, e.name, e.body, e.received_at) for e in events]
        delivery_rows = [(d.id, d.event.id, d.webhook_id, now, now) for d in deliveries]

        def write(conn):
            conn.executemany("INSERT INTO events VALUES (?, ?, ?, ?)", event_rows)
            conn.executemany(
                "INSERT INTO deliveries (id, event_id, webhook_id, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?)",
                delivery_rows,
            )

        await self._call(write)

    # -- writes queued in order, not waited for ------------------------------------------
    # Losing one of these in a crash only repeats an attempt: the row is still pending.

    async def record_attempt(
        self,
        delivery: Delivery,
        started_at: float,
        outcome: Outcome,
        *,
        next_at: float | None,
    ) -> None:
        """Record attempt ``delivery.attempts`` and what follows it.

        ``next_at`` set: the delivery sleeps until then. Otherwise it is finished: delivered
        when the outcome is ok, failed when not.
        """
        state = "pending" if next_at is not None else ("delivered" if outcome.ok else "failed")
        attempt_row = (
            delivery.id,
            delivery.attempts,
            started_at,
            outcome.duration,
            outcome.status,
            outcome.error,
        )
        delivery_row = (
            state,
            delivery.attempts,
            next_at,
            started_at + outcome.duration,
            outcome.describe(),
            delivery.id,
        )

        def write(conn):
            conn.execute("INSERT OR REPLACE INTO attempts VALUES (?, ?, ?, ?, ?, ?)", attempt_row)
            conn.execute(
                "UPDATE deliveries SET state = ?, attempts = ?, next_at = ?, updated_at = ?,"
                " last_outcome = ? WHERE id = ?",
                delivery_row,
            )

        await self._submit(write)

    async def put_to_sleep(self, delivery_ids: Iterable[str], until: float) -> None:
        """Hand deliveries that memory has no room for back to the journal, due at ``until``."""
        rows = [(until, i) for i in delivery_ids]
        await self._submit(
            lambda conn: conn.executemany(
                "UPDATE deliveries SET next_at = ? WHERE id = ? AND state = 'pending'", rows
            )
        )

    # -- the scheduler's side ------------------------------------------------------------

    async def recover(self, now: float) -> int:
        """Make deliveries a dead relay held in memory due now; returns how many."""

        def write(conn):
            return conn.execute(
                "UPDATE deliveries SET next_at = ? WHERE state = 'pending' AND next_at IS NULL",
                (now,),
            ).rowcount

        return await self._call(write)

    async def claim_due(self, webhook_id: str, now: float, limit: int) -> list[Delivery]:
        """Take up to ``limit`` deliveries to ``webhook_id`` due by ``now`` into memory."""

        def claim(conn):
            rows = conn.execute(
                "SELECT d.id, d.attempts, e.id, e.name, e.body, e.received_at"
                " FROM deliveries d JOIN events e ON e.id = d.event_id"
                " WHERE d.webhook_id = ? AND d.next_at IS NOT NULL AND d.next_at <= ?"
                " ORDER BY d.next_at LIMIT ?",
                (webhook_id, now, limit),
            ).fetchall()
            conn.executemany(
                "UPDATE deliveries SET next_at = NULL WHERE id = ?", [(r[0],) for r in rows]
            )
            return [
                Delivery(
                    id=delivery_id,
                    webhook_id=webhook_id,
                    event=Event(id=event_id, name=name, body=body, received_at=received_at),
                    attempts=attempts,
                )
                for delivery_id, attempts, event_id, name, body, received_at in rows
            ]

        return await self._call(claim)

    async def next_due(self, webhook_ids: Iterable[str]) -> float:
        """When the earliest sleeping delivery to any of ``webhook_ids`` is due (inf: none)."""
        ids = list(webhook_ids)

        def read(conn):
            earliest = math.inf
            for webhook_id in ids:  # one indexed MIN per webhook: O(log n) each
                (at,) = conn.execute(
                    "SELECT MIN(next_at) FROM deliveries"
                    " WHERE webhook_id = ? AND next_at IS NOT NULL",
                    (webhook_id,),
                ).fetchone()
                if at is not None:
                    earliest = min(earliest, at)
            return earliest

        return await self._call(read)

    # -- plumbing --------------------------------------------------------------------------

    async def _submit(self, run) -> None:
        await self._ops.send(_Op(run, None))

    async def _call(self, run):
        op = _Op(run, trio.Event())
        await self._ops.send(op)
        await op.done.wait()
        if op.error is not None:
            raise JournalError(str(op.error)) from op.error
        return op.result


async def _commit_loop(conn: sqlite3.Connection, receive: trio.MemoryReceiveChannel, run_blocking):
    async with receive:
        async for first in receive:
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(receive.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            # Not abandoned on cancel: a commit that started always finishes.
            await run_blocking(_run_batch, conn, batch)
            for op in batch:
                if op.done is not None:
                    op.done.set()
                elif op.error is not None:
                    log.error("journal write failed: %s", op.error)


def _run_batch(conn: sqlite3.Connection, batch: list[_Op]) -> None:
    """One transaction for the batch; if it fails, each op alone so one bad op fails alone."""
    try:
        _transaction(conn, batch)
    except sqlite3.Error as e:
        if len(batch) == 1:
            batch[0].error = e
            return
        for op in batch:
            try:
                _transaction(conn, [op])
            except sqlite3.Error as e:
                op.error = e


def _transaction(conn: sqlite3.Connection, ops: list[_Op]) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        for op in ops:
            op.result = op.run(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


@frozen
class DeliveryRow:
    id: str
    webhook_id: str
    event: str
    state: str
    attempts: int
    next_at: float | None
    last_outcome: str | None


def list_deliveries(
    state_dir: Path,
    *,
    state: str = "pending",
    webhook_id: str | None = None,
    known_webhooks: Iterable[str] = (),
    limit: int = 50,
) -> list[DeliveryRow]:
    """Deliveries as ``relay deliveries`` shows them, read from a running relay's journal.

    ``parked`` means pending for a webhook not in ``known_webhooks``.
    """
    path = state_dir / FILENAME
    if not path.exists():
        return []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        where, params = [], []
        if state in ("pending", "parked"):
            where.append("d.state = 'pending'")
        elif state != "all":
            where.append("d.state = ?")
            params.append(state)
        if state == "parked":
            known = list(known_webhooks)
            where.append(f"d.webhook_id NOT IN ({','.join('?' * len(known))})")
            params.extend(known)
        if webhook_id is not None:
            where.append("d.webhook_id = ?")
            params.append(webhook_id)
        sql = (
            "SELECT d.id, d.webhook_id, e.name, d.state, d.attempts, d.next_at, d.last_outcome"
            " FROM deliveries d JOIN events e ON e.id = d.event_id"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY d.updated_at DESC LIMIT ?"
        )
        return [DeliveryRow(*row) for row in conn.execute(sql, [*params, limit])]
    finally:
        conn.close()
