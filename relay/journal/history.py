"""Read-only, straight from the journal file: one event's deliveries with every attempt and
replay (``relay deliveries show``, ``GET /api/deliveries/{id}``), and the deliveries a replay by
webhook and state selects (``relay replay --webhook``, ``POST /api/replay``).

Like relay/journal/views.py, these never go through the committer: WAL lets a reader in beside
the running relay's writer, so reading a long history holds no commit, and they work the same
whether or not a relay runs. Every lookup is by primary key or index: an event's deliveries
(deliveries_by_event), a delivery's attempts (their primary key) and replays (replays_by_delivery).
"""

from __future__ import annotations

import errno
import sqlite3
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


def history(state_dir: Path, some_id: str) -> EventHistory | None:
    """The event ``some_id`` names, with its deliveries: the one it names when it is a
    delivery's id, all of them when it is the event's. None when it names neither."""
    conn = connect(state_dir)
    try:
        conn.execute("BEGIN")  # one snapshot for every read below
        found = conn.execute("SELECT event_id FROM deliveries WHERE id = ?", (some_id,)).fetchone()
        event_id, only = (found[0], some_id) if found else (some_id, None)
        event = conn.execute(
            "SELECT id, name, body, received_at FROM events WHERE id = ?", (event_id,)
        ).fetchone()
        if event is None:
            return None
        rows = conn.execute(
            "SELECT id, webhook_id, state, attempts, attempt_base, created_at, updated_at,"
            " next_at, last_outcome FROM deliveries INDEXED BY deliveries_by_event"
            " WHERE event_id = ? ORDER BY rowid",
            (event_id,),
        ).fetchall()
        return EventHistory(
            *event,
            tuple(_delivery(conn, row) for row in rows if only is None or row[0] == only),
        )
    finally:
        conn.close()


def _delivery(conn, row) -> DeliveryHistory:
    delivery_id, webhook_id, state, attempts, base, created, updated, next_at, outcome = row
    records = conn.execute(
        "SELECT number, started_at, duration, status, error, request, response FROM attempts"
        " WHERE delivery_id = ? ORDER BY number",
        (delivery_id,),
    ).fetchall()
    replays = conn.execute(
        "SELECT replayed_at, by, attempts_before FROM replays WHERE delivery_id = ?"
        " ORDER BY replayed_at",
        (delivery_id,),
    ).fetchall()
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
) -> list[str]:
    """The ids of ``webhook_id``'s deliveries in ``state`` (``failed``, ``delivered``,
    ``pending``, ``all``) created within ``since``/``until``, oldest first: what a replay by
    webhook takes, however many (relay/journal/views.py's queries, without their limit)."""
    rows = deliveries(
        state_dir,
        state=state,
        webhook_id=webhook_id,
        since=since,
        until=until,
        limit=-1,  # SQLite: no limit
    )
    return [row[0] for row in reversed(rows)]


def resolve(state_dir: Path, ids: list[str]) -> list[str]:
    """Delivery ids for ``ids``: each delivery's own, each event's deliveries' in its place; an
    id that names neither stays (a replay then says it is unknown)."""
    conn = connect(state_dir)
    try:
        found = []
        for some_id in ids:
            if conn.execute("SELECT 1 FROM deliveries WHERE id = ?", (some_id,)).fetchone():
                found.append(some_id)
                continue
            of_event = conn.execute(
                "SELECT id FROM deliveries INDEXED BY deliveries_by_event WHERE event_id = ?"
                " ORDER BY rowid",
                (some_id,),
            ).fetchall()
            found.extend([row[0] for row in of_event] or [some_id])
        return list(dict.fromkeys(found))
    finally:
        conn.close()
