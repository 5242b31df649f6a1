"""Read-only, straight from the journal: one event's deliveries with every attempt and
replay (``relay deliveries show``, ``GET /api/deliveries/{id}``), and the deliveries a replay by
webhook and state selects (``relay replay --webhook``, ``POST /api/replay``).

Like relay/journal/views.py, these never go through the committer: WAL lets a reader in beside
the running relay's writer, so reading a long history holds no commit, and they work the same
whether or not a relay runs. Every lookup is by primary key or index: an event's deliveries
(deliveries_by_event), a delivery's attempts (their primary key) and replays (replays_by_delivery).

On PostgreSQL (``url``) the same statements read the shared journal in one snapshot (REPEATABLE
READ, read only), on a connection of their own: what any relay of it journaled.
"""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from attrs import frozen

from relay.journal.replays import due_at, is_waiting
from relay.journal.sqlite import FILENAME
from relay.journal.views import deliveries


@frozen
class AttemptRecord:
    number: int
    started_at: float
    duration: float
    status: int | None
    error: str | None
    request: bytes | None  # as relay/delivery/capture.py records them; None: not recorded
    response: bytes | None


@frozen
class ReplayRecord:
    replayed_at: float
    by: str
    attempts_before: int


@frozen
class DeliveryHistory:
    id: str
    webhook_id: str
    state: str  # pending | delivered | failed
    attempts: int
    attempt_base: int
    created_at: float
    updated_at: float
    next_at: float | None  # None while pending: in the relay's memory; a replay's: its time
    waiting_replay: bool  # replayed, waiting for room in its lane
    last_outcome: str | None
    history: tuple[AttemptRecord, ...]
    replays: tuple[ReplayRecord, ...]


@frozen
class EventHistory:
    id: str
    name: str
    body: bytes
    received_at: float
    deliveries: tuple[DeliveryHistory, ...]


def connect(state_dir: Path) -> sqlite3.Connection:
    """A read-only connection; FileNotFoundError when ``state_dir`` holds no journal."""
    path = (state_dir / FILENAME).absolute()
    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, "no journal", str(path))
    return sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=30)


Read = Callable[[str, tuple], list[tuple]]

# SQLite's statements; on PostgreSQL, ``_on_postgresql`` of each. The planner must be told
# deliveries_by_event on SQLite (it takes a state's partial index for as good); PostgreSQL's
# picks it by itself.
DELIVERY_EVENT = "SELECT event_id FROM deliveries WHERE id = ?"
EVENT = "SELECT id, name, body, received_at FROM events WHERE id = ?"
EVENT_DELIVERIES = (
    "SELECT id, webhook_id, state, attempts, attempt_base, created_at, updated_at, next_at,"
    " last_outcome FROM deliveries INDEXED BY deliveries_by_event WHERE event_id = ?"
    " ORDER BY {order}"
)
ATTEMPTS = (
    "SELECT number, started_at, duration, status, error, request, response FROM attempts"
    " WHERE delivery_id = ? ORDER BY number"
)
REPLAYS = (
    "SELECT replayed_at, by, attempts_before FROM replays WHERE delivery_id = ?"
    " ORDER BY replayed_at"
)
IS_DELIVERY = "SELECT 1 FROM deliveries WHERE id = ?"
EVENT_DELIVERY_IDS = (
    "SELECT id FROM deliveries INDEXED BY deliveries_by_event WHERE event_id = ? ORDER BY {order}"
)


def _on_postgresql(sql: str) -> str:
    return (
        sql.replace(" INDEXED BY deliveries_by_event", "")
        .replace("?", "%s")
        .replace("{order}", "seq")
    )


@contextmanager
def snapshot(state_dir: Path, url: str | None = None) -> Iterator[Read]:
    """``read(sql, params)`` for the statements above, all in one snapshot of the journal in
    ``state_dir`` (or at ``url``). FileNotFoundError when there is no journal there yet;
    JournalError when the database cannot be read."""
    if url is not None:
        import psycopg

        from relay.journal.pg_views import reader, unreachable

        def read(sql: str, params: tuple) -> list[tuple]:
            rows = conn.execute(_on_postgresql(sql), params).fetchall()
            return [tuple(bytes(v) if isinstance(v, memoryview) else v for v in r) for r in rows]

        try:  # the connection, and the reads at the yield
            conn = reader(url)
            try:
                conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                yield read
            finally:
                conn.close()
        except psycopg.Error as e:
            raise unreachable(url, e) from None
        return
    conn = connect(state_dir)
    try:
        conn.execute("BEGIN")  # one snapshot for every read
        yield lambda sql, params: conn.execute(sql.replace("{order}", "rowid"), params).fetchall()
    finally:
        conn.close()


def history(state_dir: Path, some_id: str, *, url: str | None = None) -> EventHistory | None:
    """The event ``some_id`` names, with its deliveries: the one it names when it is a
    delivery's id, all of them when it is the event's. None when it names neither."""
    with snapshot(state_dir, url) as read:
        found = read(DELIVERY_EVENT, (some_id,))
        event_id, only = (found[0][0], some_id) if found else (some_id, None)
        event = read(EVENT, (event_id,))
        if not event:
            return None
        rows = read(EVENT_DELIVERIES, (event_id,))
        return EventHistory(
            *event[0],
            tuple(_delivery(read, row) for row in rows if only is None or row[0] == only),
        )


def _delivery(read: Read, row) -> DeliveryHistory:
    delivery_id, webhook_id, state, attempts, base, created, updated, next_at, outcome = row
    records = read(ATTEMPTS, (delivery_id,))
    replays = read(REPLAYS, (delivery_id,))
    waiting = state == "pending" and is_waiting(next_at)
    return DeliveryHistory(
        delivery_id,
        webhook_id,
        state,
        attempts,
        base,
        created,
        updated,
        due_at(next_at),
        waiting,
        outcome,
        tuple(AttemptRecord(*r) for r in records),
        tuple(ReplayRecord(*r) for r in replays),
    )


def select(
    state_dir: Path,
    *,
    webhook_id: str,
    state: str = "failed",
    since: float | None = None,
    until: float | None = None,
    url: str | None = None,
) -> list[str]:
    """The ids of ``webhook_id``'s deliveries in ``state`` (``failed``, ``delivered``,
    ``pending``, ``all``) created within ``since``/``until``, oldest first: what a replay by
    webhook takes, however many (relay/journal/views.py's queries, without their limit)."""
    filters = {"state": state, "webhook_id": webhook_id, "since": since, "until": until}
    if url is not None:
        from relay.journal import pg_views

        rows = pg_views.deliveries(url, limit=None, **filters)  # PostgreSQL: LIMIT NULL, none
    else:
        rows = deliveries(state_dir, limit=-1, **filters)  # SQLite: no limit
    return [row[0] for row in reversed(rows)]


def resolve(state_dir: Path, ids: list[str], *, url: str | None = None) -> list[str]:
    """Delivery ids for ``ids``: each delivery's own, each event's deliveries' in its place; an
    id that names neither stays (a replay then says it is unknown)."""
    found = []
    with snapshot(state_dir, url) as read:
        for some_id in ids:
            if read(IS_DELIVERY, (some_id,)):
                found.append(some_id)
                continue
            of_event = read(EVENT_DELIVERY_IDS, (some_id,))
            found.extend([row[0] for row in of_event] or [some_id])
    return list(dict.fromkeys(found))
