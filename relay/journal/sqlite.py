"""The journal's SQLite schema and every operation on it, as plain blocking functions.

Operations are named and take plain data (tuples of str, bytes, float), so the same code runs in
the journal's writer process (relay/journal/writer.py, the default) or in the relay's own
process (``[relay] journal = "inline"``, and tests on trio's MockClock). ``run_batch`` runs a
batch of them in one transaction: one fsync for all (group commit). The schema, and opening a
journal, are relay/journal/schema.py's.
"""

from __future__ import annotations

import json
import math
import sqlite3

from relay.journal import replays
from relay.journal.schema import (  # noqa: F401 - what the journal's users know of it, here
    COLUMNS,
    FILENAME,
    OPEN_ERRORS,
    SCHEMA_VERSION,
    SchemaError,
    connect,
    schema_problems,
)
from relay.model import order_key

LEASES = False  # one relay per journal file (relay/journal/lock.py): nothing to lease

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
    conn.executemany(conn.insert_delivery, delivery_rows)
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
    conn.executemany(conn.insert_delivery, rows)
    return added


# next_at of a delivery that waits for an earlier pending one of its key (order_by): never due
# by time; the earlier one's final outcome makes it due (``record_attempts``' releases).
WAITING = math.inf


def append_ordered(conn, event_rows, delivery_rows, binding_rows, report_rows, now, ordered):
    """``append``, with deliveries ordered by key (``order_by``, relay/delivery/ordering.py).

    ``ordered`` holds ``(id, event_id, webhook_id, created_at, updated_at, order_key)`` rows
    and ``{webhook_id: order_by}`` for the deliveries reports add (``(rows, paths)``). A
    delivery whose key has an earlier one pending waits (next_at ``WAITING``) until that one
    finishes: decided here, in the writer, where every append and outcome is in one order, so
    that no two of a key are ever in flight, across restarts and reloads alike.

    Returns ``(append's result, the ids of the deliveries that wait)``.
    """
    rows, paths = ordered
    added = append(conn, event_rows, delivery_rows, binding_rows, report_rows, now)
    waiting = [row[0] for row in rows if _append_in_order(conn, row)]
    for index, delivery_id, webhook_id in added:
        path = paths.get(webhook_id)
        key = path and order_key(json.loads(event_rows[index][2]), path)
        if key is not None and _order(conn, delivery_id, webhook_id, key):
            waiting.append(delivery_id)
    return added, waiting


def _key_is_busy(conn, webhook_id, key, besides=None) -> bool:
    """Whether a delivery of ``key`` to ``webhook_id`` (other than ``besides``) is pending:
    one indexed lookup (deliveries_ordered)."""
    return conn.execute(KEY_IS_BUSY, (webhook_id, key, besides)).fetchone() is not None


KEY_IS_BUSY = (
    "SELECT 1 FROM deliveries WHERE webhook_id = ? AND order_key = ?"
    " AND state = 'pending' AND id IS NOT ? LIMIT 1"
)
# The oldest pending of a finished delivery's key, if it waits (a replayed one may be pending
# already): ``(now, finished delivery's id, WAITING)``.
RELEASE_NEXT = (
    "UPDATE deliveries SET next_at = ?1 WHERE next_at = ?3 AND rowid = ("
    " SELECT n.rowid FROM deliveries d JOIN deliveries n INDEXED BY deliveries_ordered"
    " ON n.webhook_id = d.webhook_id AND n.order_key = d.order_key"
    " AND n.state = 'pending' WHERE d.id = ?2 ORDER BY n.rowid LIMIT 1)"
)
# Else the planner walks every pending delivery (deliveries_pending).
RELEASE_WAITING = (
    "UPDATE deliveries INDEXED BY deliveries_asleep SET next_at = ?"
    " WHERE webhook_id = ? AND next_at = ? AND state = 'pending'"
)


def _append_in_order(conn, row) -> bool:
    """Insert an ordered delivery; whether it waits for an earlier one of its key."""
    delivery_id, event_id, webhook_id, created_at, updated_at, key = row
    busy = _key_is_busy(conn, webhook_id, key)
    conn.execute(
        "INSERT INTO deliveries (id, event_id, webhook_id, created_at, updated_at, order_key,"
        " next_at, held_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (*row, WAITING if busy else None, None if busy else conn.run_id),
    )
    return busy


def _order(conn, delivery_id, webhook_id, key) -> bool:
    """Give a delivery appended unordered (a delivery report's) its key; whether it waits."""
    busy = _key_is_busy(conn, webhook_id, key, besides=delivery_id)
    conn.execute(
        "UPDATE deliveries SET order_key = ?, next_at = ? WHERE id = ?",
        (key, WAITING if busy else None, delivery_id),
    )
    return busy


def release_waiting(conn, webhook_ids, now):
    """Make every delivery to ``webhook_ids`` that waits for its key due at ``now``: for
    webhooks that no longer have ``order_by`` (at start, and on reload). Through the index on
    ``(webhook_id, next_at)``: those that wait are at its end."""
    return sum(
        conn.execute(RELEASE_WAITING, (now, webhook_id, WAITING)).rowcount
        for webhook_id in webhook_ids
    )


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


def record_attempts(conn, attempt_rows, delivery_rows, release_rows=()):
    """Attempts ``(delivery_id, number, started_at, duration, status, error, request,
    response)`` (the last two: relay/delivery/capture.py's records, or None) and what follows
    each: ``(state, attempts, next_at, updated_at, last_outcome, delivery_id)``.

    ``release_rows``, ``(now, delivery_id)``: ordered deliveries that finished; the next of
    each one's key becomes due at ``now``, in this same transaction, so that no crash can leave
    a key with nothing in flight and the rest waiting."""
    conn.executemany(
        "INSERT OR REPLACE INTO attempts VALUES (?, ?, ?, ?, ?, ?, ?, ?)", attempt_rows
    )
    conn.executemany(
        "UPDATE deliveries SET state = ?, attempts = ?, next_at = ?, updated_at = ?,"
        " last_outcome = ? WHERE id = ?",
        delivery_rows,
    )
    if release_rows:
        conn.executemany(RELEASE_NEXT, [(now, d, WAITING) for now, d in release_rows])


def put_to_sleep(conn, rows):
    """``(next_at, delivery_id)``: pending deliveries memory hands back to the journal."""
    conn.executemany("UPDATE deliveries SET next_at = ? WHERE id = ? AND state = 'pending'", rows)


def last_rowid(conn):
    """The newest delivery's rowid: what a relay that starts now may find orphaned."""
    return conn.execute("SELECT COALESCE(MAX(rowid), 0) FROM deliveries").fetchone()[0]


def recover(conn, after, upto, now):
    """Deliveries with rowids in ``(after, upto]`` that a dead run held in memory become due
    at ``now``; returns how many. Ranges of rowids, so that a large journal is recovered in
    short steps and the first deliveries leave while the rest is still being looked at.

    A dead run's, by run identity: rows this run holds (appended, claimed) carry its id in
    ``held_by``; older rows have another run's, or NULL (schema 1). No wall-clock time is
    compared: a clock that stepped back across the restart changes nothing."""
    return conn.execute(
        "UPDATE deliveries SET next_at = ? WHERE rowid > ? AND rowid <= ?"
        " AND state = 'pending' AND next_at IS NULL AND (held_by IS NULL OR held_by <> ?)",
        (now, after, upto, conn.run_id),
    ).rowcount


def probe(conn, now):
    """A write of one small row, that says whether writes reach disk again (the committer
    sends it while the journal is failing and nothing else would find out)."""
    conn.execute("UPDATE runs SET seen_at = ? WHERE id = ?", (now, conn.run_id))


def claim_due(conn, webhook_id, now, limit):
    """Up to ``limit`` deliveries to ``webhook_id`` due by ``now``, taken into memory.

    Returns ``(delivery_id, attempts, event_id, name, body, received_at, attempt_base)`` rows.
    """
    rows = conn.execute(
        "SELECT d.id, d.attempts, e.id, e.name, e.body, e.received_at, d.attempt_base"
        " FROM deliveries d JOIN events e ON e.id = d.event_id"
        " WHERE d.webhook_id = ? AND d.next_at IS NOT NULL AND d.next_at <= ?"
        " ORDER BY d.next_at LIMIT ?",
        (webhook_id, now, limit),
    ).fetchall()
    conn.executemany(conn.claim, [(now, r[0]) for r in rows])
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


def pending_counts(conn):
    """``{webhook_id: deliveries pending}``, every webhook the journal has any for. A walk of the
    pending index (~0.2 s a million pending, over a second from a cold disk): views.py runs it
    once, at start, beside the writer."""
    return dict(
        conn.execute(
            "SELECT webhook_id, COUNT(*) FROM deliveries WHERE state = 'pending'"
            " GROUP BY webhook_id"
        ).fetchall()
    )


def oldest_pending(conn, webhook_ids):
    """``{webhook_id: created_at of its oldest pending delivery}`` for those that have one."""
    oldest = {}
    for webhook_id in webhook_ids:  # one indexed MIN per webhook: O(log n) each
        (at,) = conn.execute(
            "SELECT MIN(created_at) FROM deliveries WHERE webhook_id = ? AND state = 'pending'",
            (webhook_id,),
        ).fetchone()
        if at is not None:
            oldest[webhook_id] = at
    return oldest


def prune(conn, after, cutoff, limit):
    """Delete events received before ``cutoff`` whose deliveries all finished before it, with
    those deliveries, their attempts and their replays. Looks at up to ``limit`` events, oldest
    first from rowid ``after``. An event with a delivery still pending, or finished since, stays.

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
    for table in ("attempts", "replays"):
        conn.executemany(
            f"DELETE FROM {table} WHERE delivery_id IN"
            " (SELECT id FROM deliveries WHERE event_id = ?)",
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
        *replays.OPERATIONS,
        append,
        append_ordered,
        release_waiting,
        record_attempts,
        put_to_sleep,
        last_rowid,
        recover,
        probe,
        claim_due,
        next_due,
        oldest_pending,
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
