"""The journal's SQLite schema and every operation on it, as plain blocking functions.

Operations are named and take plain data (tuples of str, bytes, float), so the same code runs in
the journal's writer process (relay/journal/writer.py, the default) or in the relay's own
process (``[relay] journal = "inline"``, and tests on trio's MockClock). ``run_batch`` runs a
batch of them in one transaction: one fsync for all (group commit).
"""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

FILENAME = "journal.sqlite3"
SCHEMA_VERSION = 1

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
    next_at REAL,                           -- NULL: held in the relay's memory
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    last_outcome TEXT
);
CREATE INDEX IF NOT EXISTS deliveries_asleep
    ON deliveries (webhook_id, next_at) WHERE next_at IS NOT NULL;
-- An event's deliveries, for retention (prune). Ids grow with time, so inserts append.
CREATE INDEX IF NOT EXISTS deliveries_by_event ON deliveries (event_id);
-- `relay deliveries --state failed`: rare among many, so not found by a scan.
CREATE INDEX IF NOT EXISTS deliveries_failed ON deliveries (state) WHERE state = 'failed';
-- `relay deliveries` (pending is its default): pending are few among the finished, and the
-- sleeping ones' index (deliveries_asleep) leaves out those the relay holds in memory. Keys
-- append (rowids grow) and leave when a delivery finishes: measured, a delivery's append and
-- outcome cost the writer 10.1 µs of SQL instead of 9.2 (medians of 5, batches of 100).
CREATE INDEX IF NOT EXISTS deliveries_pending ON deliveries (state) WHERE state = 'pending';
CREATE TABLE IF NOT EXISTS attempts (
    delivery_id TEXT NOT NULL,
    number INTEGER NOT NULL,
    started_at REAL NOT NULL,
    duration REAL NOT NULL,
    status INTEGER,
    error TEXT,
    PRIMARY KEY (delivery_id, number)
) WITHOUT ROWID;
-- Delivery reports: the webhook that wants the later events of a message (POST /reports, or
-- an event that names its webhook_id binds its payload.id). Found by message id as the writer
-- appends each event (see append); by expiry for retention. One webhook per message: a new
-- binding replaces the old.
CREATE TABLE IF NOT EXISTS bindings (
    message_id TEXT PRIMARY KEY,
    webhook_id TEXT NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS bindings_by_expiry ON bindings (expires_at);
-- Webhooks switched off while their settings stay (relay webhooks disable, a 410 Gone,
-- disable_after): a disabled webhook's deliveries sleep in the journal, unattempted, until it
-- is enabled. One row per webhook whose state ever changed; relay/journal/states.py.
CREATE TABLE IF NOT EXISTS webhook_state (
    webhook_id TEXT PRIMARY KEY,
    enabled INTEGER NOT NULL,
    reason TEXT,
    changed_at REAL NOT NULL
) WITHOUT ROWID;
"""


class SchemaError(Exception):
    """The journal file cannot be used by this relay."""


def connect(state_dir: Path) -> sqlite3.Connection:
    """Open (creating if needed) the journal in ``state_dir``."""
    state_dir.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(
        state_dir / FILENAME, isolation_level=None, check_same_thread=False, timeout=30
    )
    conn.execute("PRAGMA journal_mode=WAL")
    # Durable per commit: WAL with synchronous=NORMAL is not, across power loss.
    conn.execute("PRAGMA synchronous=FULL")
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise SchemaError(
            f"{state_dir / FILENAME}: written by a newer relay (schema {version}, "
            f"this relay knows {SCHEMA_VERSION})"
        )
    conn.executescript(SCHEMA)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    return conn


# -- operations: op(conn, *args) -> result -------------------------------------------------


def append(conn, event_rows, delivery_rows, binding_rows=(), report_rows=(), now=0.0):
    """New events ``(id, name, body, received_at)`` and deliveries
    ``(id, event_id, webhook_id, created_at, updated_at)``; with them, new bindings
    ``(message_id, webhook_id, expires_at)`` (see ``bind``), and delivery reports.

    ``report_rows`` are ``(event index, message_id, webhook ids the event goes to already)``:
    an event whose message is bound (unexpired at ``now``) to another webhook gets a delivery
    there too, in this transaction, so ingest needs no read of its own and memory holds no
    bindings. Its id is the event's: an event has at most one report, and ids are unique
    across events and deliveries alike (relay/ingest/events.py ``new_id``), so the writer makes
    none. The bindings go in first: they apply to every event of the batch.

    Returns ``(event index, delivery id, webhook_id)`` of the reports' deliveries.
    """
    conn.executemany("INSERT INTO events VALUES (?, ?, ?, ?)", event_rows)
    conn.executemany(
        "INSERT INTO deliveries (id, event_id, webhook_id, created_at, updated_at)"
        " VALUES (?, ?, ?, ?, ?)",
        delivery_rows,
    )
    if binding_rows:
        bind(conn, binding_rows)
    if not report_rows:
        return []
    bound = _bound(conn, [message_id for _, message_id, _ in report_rows], now)
    if not bound:
        return []
    added, rows = [], []
    for index, message_id, routed in report_rows:
        webhook_id = bound.get(message_id)
        if webhook_id is not None and webhook_id not in routed:
            event_id = event_rows[index][0]
            added.append((index, event_id, webhook_id))
            rows.append((event_id, event_id, webhook_id, now, now))
    conn.executemany(
        "INSERT INTO deliveries (id, event_id, webhook_id, created_at, updated_at)"
        " VALUES (?, ?, ?, ?, ?)",
        rows,
    )
    return added


def _bound(conn, message_ids: list[str], now: float) -> dict[str, str]:
    """The webhooks ``message_ids`` are bound to, unexpired at ``now``: one primary-key search
    each, in one statement (json_each: one statement whatever the batch's size, ~0.8 µs an id
    in batches of 100 against ~4 µs a statement each, measured)."""
    if len(message_ids) == 1:
        return dict(
            conn.execute(
                "SELECT message_id, webhook_id FROM bindings"
                " WHERE message_id = ? AND expires_at > ?",
                (message_ids[0], now),
            ).fetchall()
        )
    return dict(
        conn.execute(
            "SELECT b.message_id, b.webhook_id FROM json_each(?) j"
            " JOIN bindings b ON b.message_id = j.value WHERE b.expires_at > ?",
            (json.dumps(message_ids), now),
        ).fetchall()
    )


def bind(conn, rows):
    """``(message_id, webhook_id, expires_at)``: the webhook that gets the message's later
    events (its delivery reports) until then; it replaces any earlier binding of the message."""
    conn.executemany("INSERT OR REPLACE INTO bindings VALUES (?, ?, ?)", rows)


def has_bindings(conn, now):
    """Whether any binding is unexpired at ``now``: while none is, ingest need not ask."""
    query = "SELECT EXISTS (SELECT 1 FROM bindings WHERE expires_at > ?)"
    return conn.execute(query, (now,)).fetchone() == (1,)


def expire_bindings(conn, now, limit):
    """Delete up to ``limit`` bindings expired by ``now`` (through the expiry index); returns
    how many went."""
    return conn.execute(
        "DELETE FROM bindings WHERE message_id IN"
        " (SELECT message_id FROM bindings WHERE expires_at <= ? ORDER BY expires_at LIMIT ?)",
        (now, limit),
    ).rowcount


def record_attempts(conn, attempt_rows, delivery_rows):
    """Attempts ``(delivery_id, number, started_at, duration, status, error)`` and what follows
    each: ``(state, attempts, next_at, updated_at, last_outcome, delivery_id)``."""
    conn.executemany("INSERT OR REPLACE INTO attempts VALUES (?, ?, ?, ?, ?, ?)", attempt_rows)
    conn.executemany(
        "UPDATE deliveries SET state = ?, attempts = ?, next_at = ?, updated_at = ?,"
        " last_outcome = ? WHERE id = ?",
        delivery_rows,
    )


def put_to_sleep(conn, rows):
    """``(next_at, delivery_id)``: pending deliveries memory hands back to the journal."""
    conn.executemany("UPDATE deliveries SET next_at = ? WHERE id = ? AND state = 'pending'", rows)


def last_rowid(conn):
    """The newest delivery's rowid: what a relay that starts now may find orphaned."""
    return conn.execute("SELECT COALESCE(MAX(rowid), 0) FROM deliveries").fetchone()[0]


def recover(conn, after, upto, run_start):
    """Deliveries with rowids in ``(after, upto]`` that a dead relay held in memory become due
    now; returns how many. Ranges of rowids, so that a large journal is recovered in short
    steps and the first deliveries leave while the rest is still being looked at. Rows this
    run touched already (claimed, attempted: ``updated_at`` since ``run_start``) are its own."""
    return conn.execute(
        "UPDATE deliveries SET next_at = ? WHERE rowid > ? AND rowid <= ?"
        " AND state = 'pending' AND next_at IS NULL AND updated_at < ?",
        (run_start, after, upto, run_start),
    ).rowcount


def claim_due(conn, webhook_id, now, limit):
    """Up to ``limit`` deliveries to ``webhook_id`` due by ``now``, taken into memory.

    Returns ``(delivery_id, attempts, event_id, name, body, received_at)`` rows.
    """
    rows = conn.execute(
        "SELECT d.id, d.attempts, e.id, e.name, e.body, e.received_at"
        " FROM deliveries d JOIN events e ON e.id = d.event_id"
        " WHERE d.webhook_id = ? AND d.next_at IS NOT NULL AND d.next_at <= ?"
        " ORDER BY d.next_at LIMIT ?",
        (webhook_id, now, limit),
    ).fetchall()
    conn.executemany(
        "UPDATE deliveries SET next_at = NULL, updated_at = ? WHERE id = ?",
        [(now, r[0]) for r in rows],
    )
    return rows


def next_due(conn, webhook_ids):
    """When the earliest sleeping delivery to any of ``webhook_ids`` is due (inf: none)."""
    earliest = math.inf
    for webhook_id in webhook_ids:  # one indexed MIN per webhook: O(log n) each
        (at,) = conn.execute(
            "SELECT MIN(next_at) FROM deliveries WHERE webhook_id = ? AND next_at IS NOT NULL",
            (webhook_id,),
        ).fetchone()
        if at is not None:
            earliest = min(earliest, at)
    return earliest


def prune(conn, after, cutoff, limit):
    """Delete events received before ``cutoff`` whose deliveries all finished before it, with
    those deliveries and their attempts. Looks at up to ``limit`` events, oldest first from
    rowid ``after``. An event with a delivery still pending, or finished since, stays.

    Returns ``(the last rowid looked at, events deleted, whether to go on past it)``. Rowids
    follow arrival: the pass ends at a step whose newest event was received since ``cutoff``.

    The newest event and the newest delivery always stay, so that SQLite never hands their
    rowids out again: ``last_rowid`` tells a relay that starts which rows are older than it.
    """
    rows = conn.execute(
        "SELECT rowid, id, received_at FROM events WHERE rowid > ? ORDER BY rowid LIMIT ?",
        (after, limit),
    ).fetchall()
    if not rows:
        return after, 0, False
    ids = [event_id for _, event_id, received_at in rows if received_at < cutoff]
    marks = ",".join("?" * len(ids))
    kept = {
        event_id
        for (event_id,) in conn.execute(
            f"SELECT DISTINCT event_id FROM deliveries WHERE event_id IN ({marks})"
            " AND (state = 'pending' OR updated_at >= ?)"
            " UNION SELECT event_id FROM deliveries"
            " WHERE rowid = (SELECT MAX(rowid) FROM deliveries)"
            " UNION SELECT id FROM events WHERE rowid = (SELECT MAX(rowid) FROM events)",
            (*ids, cutoff),
        )
    }
    gone = [(event_id,) for event_id in ids if event_id not in kept]
    conn.executemany(
        "DELETE FROM attempts WHERE delivery_id IN (SELECT id FROM deliveries WHERE event_id = ?)",
        gone,
    )
    conn.executemany("DELETE FROM deliveries WHERE event_id = ?", gone)
    conn.executemany("DELETE FROM events WHERE id = ?", gone)
    last_seen, _, last_received = rows[-1]
    return last_seen, len(gone), len(rows) == limit and last_received < cutoff


def set_webhook_state(conn, webhook_id, enabled, reason, changed_at):
    """Disable (``enabled`` false) or enable ``webhook_id``, saying why."""
    conn.execute(
        "INSERT OR REPLACE INTO webhook_state VALUES (?, ?, ?, ?)",
        (webhook_id, int(enabled), reason, changed_at),
    )


def webhook_states(conn):
    """Every ``(webhook_id, enabled, reason, changed_at)``: a few rows, one per webhook."""
    return [
        (w, bool(e), r, c) for w, e, r, c in conn.execute("SELECT * FROM webhook_state").fetchall()
    ]


OPERATIONS = {
    op.__name__: op
    for op in (
        append,
        record_attempts,
        put_to_sleep,
        last_rowid,
        recover,
        claim_due,
        next_due,
        prune,
        bind,
        has_bindings,
        expire_bindings,
        set_webhook_state,
        webhook_states,
    )
}


def run_batch(
    conn: sqlite3.Connection, batch: list[tuple[str, tuple]]
) -> list[tuple[bool, object]]:
    """Run ``(operation, args)`` pairs in one transaction; ``(ok, result or error text)`` each.

    If the transaction fails, each operation runs alone, so one bad operation fails alone. Not
    only SQLite's errors: a value it cannot bind (text that is no UTF-8, say) raises something
    else, and must fail its operation, not the writer.
    """
    try:
        return [(True, result) for result in _transaction(conn, batch)]
    except Exception as e:  # noqa: BLE001
        if len(batch) == 1:
            return [(False, _describe(e))]
    results = []
    for item in batch:
        try:
            results.append((True, _transaction(conn, [item])[0]))
        except Exception as e:  # noqa: BLE001
            results.append((False, _describe(e)))
    return results


def _describe(error: Exception) -> str:
    return str(error) if isinstance(error, sqlite3.Error) else f"{type(error).__name__}: {error}"


def _transaction(conn: sqlite3.Connection, batch) -> list:
    conn.execute("BEGIN IMMEDIATE")
    try:
        results = [OPERATIONS[name](conn, *args) for name, args in batch]
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return results
