"""The journal on PostgreSQL: every operation of relay/journal/sqlite.py, for relays that share
one database (``[journal] url = "postgresql://..."``).

The same names, arguments and results as SQLite's (sqlite.py documents each); what differs is
what sharing asks for:

- What a relay holds in memory is leased, not only marked: ``held_by`` its run and
  ``lease_until`` a deadline by the server's clock, set in the same statement that journals a
  fresh delivery or claims a due one. ``renew_leases`` extends all of a run's at once (one
  UPDATE per period, relay/journal/leases.py), and takes over, due at once, what runs that
  stopped renewing held. Claims are ``FOR UPDATE SKIP LOCKED``: relays never wait on each
  other's rows, and no lock is held across an HTTP call. An outcome, a hand-back or a
  takeover changes only a row this run still holds (``held_by``): one recorded by a relay
  whose lease was taken over meanwhile is dropped (the other relay now decides).
- Ordering per key: the key's advisory lock (relay/journal/pg_batch.py) is held by the
  transaction that appends to it or finishes one of it, so that "is one of the key pending?"
  and "release the next" see each other across relays.
- A batch that made deliveries due or sleeping (a retry, a hand-back, a takeover, a release)
  ends with ``NOTIFY relay_journal, 'due'``, and a change of webhook states with ``'states'``:
  the other relays look again (relay/journal/pg_notify.py) rather than poll.
- ``last_rowid``/``recover``: a relay that starts recovers at once what the last run of its
  own state_dir held (that one is dead: the state_dir's lock says so); other relays' runs are
  left to their leases.

Statements take columns as arrays (``unnest``): one statement per operation, whatever the
batch's size.
"""

from __future__ import annotations

import json
import math

from relay.journal.pg_batch import (  # noqa: F401 - the engine's interface, here
    OPEN_ERRORS,
    PgJournal,
    connect,
    lock_keys,
    run_batch,
)
from relay.model import order_key

LEASES = True
NOW = "extract(epoch from now())"  # the server's clock (the transaction's start): for leases
WAITING = math.inf  # as sqlite.WAITING: waits for an earlier delivery of its key
TAKE_OVER_STEP = 5000  # deliveries a takeover moves per statement


def _columns(rows, width: int) -> list[list]:
    return [list(column) for column in zip(*rows, strict=True)] if rows else [[]] * width


INSERT_EVENTS = (
    "INSERT INTO events (id, name, body, received_at)"
    " SELECT * FROM unnest(%b::text[], %b::text[], %b::bytea[], %b::float8[])"
)


def append(conn, event_rows, delivery_rows, binding_rows=(), report_rows=(), now=0.0):
    cur = conn.cursor()
    if event_rows:
        cur.execute(INSERT_EVENTS, _columns(event_rows, 4))
    if delivery_rows:
        cur.execute(conn.insert_deliveries, _columns(delivery_rows, 5))
    if binding_rows:
        bind(conn, binding_rows)
    if not report_rows:
        return []
    bound = _bound(conn, [message_id for _, message_id, _ in report_rows], now)
    added, rows = [], []
    for index, message_id, routed in report_rows:
        webhook_id = bound.get(message_id)
        if webhook_id is not None and webhook_id not in routed:
            event_id = event_rows[index][0]
            added.append((index, event_id, webhook_id))
            rows.append((event_id, event_id, webhook_id, now, now))
    if rows:
        cur.execute(conn.insert_deliveries, _columns(rows, 5))
    return added


def append_ordered(conn, event_rows, delivery_rows, binding_rows, report_rows, now, ordered):
    rows, paths = ordered
    added = append(conn, event_rows, delivery_rows, binding_rows, report_rows, now)
    cur = conn.cursor()
    waiting = []
    for row in rows:  # lock_keys took each key's lock at the start of the batch
        if cur.execute(conn.insert_ordered, (*row, row[2], row[5])).fetchone()[0]:
            waiting.append(row[0])
    for index, delivery_id, webhook_id in added:
        path = paths.get(webhook_id)
        key = path and order_key(json.loads(event_rows[index][2]), path)
        if key is not None and _order(conn, delivery_id, webhook_id, key):
            waiting.append(delivery_id)
    return added, waiting


KEY_IS_BUSY = (
    "SELECT 1 FROM deliveries WHERE webhook_id = %s AND order_key = %s"
    " AND state = 'pending' AND id IS DISTINCT FROM %s LIMIT 1"
)
RELEASE_NEXT = (
    "UPDATE deliveries SET next_at = %s WHERE next_at = 'Infinity' AND id = ("
    " SELECT n.id FROM deliveries d JOIN deliveries n"
    " ON n.webhook_id = d.webhook_id AND n.order_key = d.order_key AND n.state = 'pending'"
    " WHERE d.id = %s ORDER BY n.seq LIMIT 1)"
)
RELEASE_WAITING = (
    "UPDATE deliveries SET next_at = %s"
    " WHERE webhook_id = %s AND next_at = 'Infinity' AND state = 'pending'"
)


def _order(conn, delivery_id, webhook_id, key) -> bool:
    """A report's delivery, appended unordered, gets its key; whether it waits. Its key's
    lock is taken here (a report's key is known only now)."""
    lock_keys(conn, [(webhook_id, key)])
    cur = conn.cursor()
    busy = cur.execute(KEY_IS_BUSY, (webhook_id, key, delivery_id)).fetchone() is not None
    cur.execute(
        "UPDATE deliveries SET order_key = %s, next_at = %s,"
        " lease_until = CASE WHEN %s THEN NULL ELSE lease_until END WHERE id = %s",
        (key, WAITING if busy else None, busy, delivery_id),
    )
    return busy


def release_waiting(conn, webhook_ids, now):
    cur = conn.cursor()
    released = sum(
        cur.execute(RELEASE_WAITING, (now, webhook_id)).rowcount for webhook_id in webhook_ids
    )
    conn.notify |= released > 0
    return released


def _bound(conn, message_ids, now) -> dict[str, str]:
    return dict(
        conn.cursor()
        .execute(
            "SELECT message_id, webhook_id FROM bindings"
            " WHERE message_id = ANY(%b::text[]) AND expires_at > %s",
            (message_ids, now),
        )
        .fetchall()
    )


def bind(conn, rows):
    latest = {message_id: (message_id, w, e) for message_id, w, e in rows}  # the last wins
    conn.cursor().execute(
        "INSERT INTO bindings SELECT * FROM unnest(%b::text[], %b::text[], %b::float8[])"
        " ON CONFLICT (message_id) DO UPDATE"
        " SET webhook_id = excluded.webhook_id, expires_at = excluded.expires_at",
        _columns(list(latest.values()), 3),
    )


def has_bindings(conn, now):
    query = "SELECT EXISTS (SELECT 1 FROM bindings WHERE expires_at > %s)"
    return conn.cursor().execute(query, (now,)).fetchone()[0]


def expire_bindings(conn, now, limit):
    return (
        conn.cursor()
        .execute(
            "DELETE FROM bindings WHERE message_id IN (SELECT message_id FROM bindings"
            " WHERE expires_at <= %s ORDER BY expires_at LIMIT %s FOR UPDATE SKIP LOCKED)",
            (now, limit),
        )
        .rowcount
    )


def record_attempts(conn, attempt_rows, delivery_rows, release_rows=()):
    cur = conn.cursor()
    ids = [row[5] for row in delivery_rows]
    if len(set(ids)) == len(ids):
        done = cur.execute(conn.update_outcomes, _columns(delivery_rows, 6)).fetchall()
        updated = {delivery_id for (delivery_id,) in done}
    else:  # the same delivery twice in one batch: in order, one at a time
        updated = set()
        for row in delivery_rows:
            done = cur.execute(conn.update_outcomes, [[value] for value in row]).fetchall()
            updated.update(delivery_id for (delivery_id,) in done)
    attempts = {(row[0], row[1]): row for row in attempt_rows if row[0] in updated}
    if attempts:
        cur.execute(
            "INSERT INTO attempts (delivery_id, number, started_at, duration, status, error)"
            " SELECT * FROM unnest(%b::text[], %b::int4[], %b::float8[], %b::float8[],"
            " %b::int4[], %b::text[]) ON CONFLICT (delivery_id, number) DO UPDATE SET"
            " started_at = excluded.started_at, duration = excluded.duration,"
            " status = excluded.status, error = excluded.error",
            _columns(list(attempts.values()), 6),
        )
    sleeping = any(row[2] is not None for row in delivery_rows if row[5] in updated)
    released = 0
    for now, delivery_id in release_rows:
        if delivery_id in updated:
            released += cur.execute(RELEASE_NEXT, (now, delivery_id)).rowcount
    conn.notify |= sleeping or released > 0


def put_to_sleep(conn, rows):
    moved = (
        conn.cursor()
        .execute(
            "UPDATE deliveries d SET next_at = t.next_at, lease_until = NULL"
            " FROM unnest(%b::float8[], %b::text[]) AS t (next_at, id)"
            f" WHERE d.id = t.id AND d.state = 'pending' AND d.held_by = {conn.run_id}",
            _columns(rows, 2),
        )
        .rowcount
    )
    conn.notify |= moved > 0


def last_rowid(conn):
    """1 when the last run of this state_dir may have left deliveries held (``recover``)."""
    return 1 if conn.previous_run is not None else 0


def recover(conn, after, upto, now):
    """What the last run of this state_dir held becomes due at ``now`` (the whole of it in
    the first step: a run holds what fits in its memory)."""
    if after > 0 or conn.previous_run is None:
        return 0
    cur = conn.cursor()
    recovered = cur.execute(
        "UPDATE deliveries SET next_at = %s, lease_until = NULL"
        " WHERE held_by = %s AND state = 'pending' AND next_at IS NULL",
        (now, conn.previous_run),
    ).rowcount
    cur.execute(f"UPDATE runs SET ended_at = {NOW} WHERE id = %s", (conn.previous_run,))
    conn.notify |= recovered > 0
    return recovered


def probe(conn, now):
    conn.cursor().execute(f"UPDATE runs SET seen_at = {NOW} WHERE id = {conn.run_id}")


def renew_leases(conn):
    """Extend the leases of everything this run holds, in one statement, and take over what
    runs whose leases expired held: due at once. Returns how many were taken over."""
    cur = conn.cursor()
    cur.execute(
        f"UPDATE deliveries SET lease_until = {NOW} + {conn.lease} WHERE held_by = {conn.run_id}"
        " AND state = 'pending' AND next_at IS NULL"
    )
    cur.execute(f"UPDATE runs SET seen_at = {NOW} WHERE id = {conn.run_id}")
    expired = cur.execute(
        f"SELECT id FROM runs WHERE ended_at IS NULL AND seen_at < {NOW} - {conn.lease}"
        f" AND id <> {conn.run_id} FOR UPDATE SKIP LOCKED"
    ).fetchall()
    taken = 0
    for (run_id,) in expired:
        moved = cur.execute(
            f"UPDATE deliveries SET next_at = {NOW}, lease_until = NULL WHERE id IN ("
            " SELECT id FROM deliveries WHERE held_by = %s AND state = 'pending'"
            f" AND next_at IS NULL AND lease_until < {NOW} LIMIT {TAKE_OVER_STEP}"
            " FOR UPDATE SKIP LOCKED)",
            (run_id,),
        ).rowcount
        taken += moved
        if moved < TAKE_OVER_STEP:
            cur.execute(
                f"UPDATE runs SET ended_at = {NOW} WHERE id = %s AND NOT EXISTS (SELECT 1"
                " FROM deliveries WHERE held_by = %s AND state = 'pending' AND next_at IS NULL)",
                (run_id, run_id),
            )
    conn.notify |= taken > 0
    return taken


def claim_due(conn, webhook_id, now, limit):
    return conn.cursor().execute(conn.claim, (webhook_id, now, limit, now)).fetchall()


def _earliest(conn, column: str, where: str, webhook_ids) -> list[tuple[str, float | None]]:
    """``(webhook_id, MIN(column))`` for each, each an indexed MIN (O(log n))."""
    return (
        conn.cursor()
        .execute(
            f"SELECT w, (SELECT MIN({column}) FROM deliveries WHERE webhook_id = w AND {where})"
            " FROM unnest(%b::text[]) AS w",
            (list(webhook_ids),),
        )
        .fetchall()
    )


def next_due(conn, webhook_ids):
    found = [at for _, at in _earliest(conn, "next_at", "next_at IS NOT NULL", webhook_ids)]
    return min((at for at in found if at is not None), default=math.inf)


def pending_counts(conn):
    query = "SELECT webhook_id, COUNT(*) FROM deliveries WHERE state = 'pending' GROUP BY 1"
    return dict(conn.cursor().execute(query).fetchall())


def oldest_pending(conn, webhook_ids):
    found = _earliest(conn, "created_at", "state = 'pending'", webhook_ids)
    return {webhook_id: at for webhook_id, at in found if at is not None}


def prune(conn, after, cutoff, limit):
    """As sqlite.prune, by ``seq``; each delete checks again what it deletes, so that a
    delivery another relay made pending meanwhile (a replay) stays, and its event with it."""
    cur = conn.cursor()
    rows = cur.execute(
        "SELECT seq, id, received_at FROM events WHERE seq > %s ORDER BY seq LIMIT %s",
        (after, limit),
    ).fetchall()
    if not rows:
        return after, 0, False
    old = [event_id for _, event_id, received_at in rows if received_at < cutoff]
    gone_deliveries = [
        delivery_id
        for (delivery_id,) in cur.execute(
            "DELETE FROM deliveries WHERE event_id = ANY(%b::text[]) AND event_id NOT IN ("
            " SELECT event_id FROM deliveries WHERE event_id = ANY(%b::text[])"
            " AND (state = 'pending' OR updated_at >= %s)) RETURNING id",
            (old, old, cutoff),
        ).fetchall()
    ]
    cur.execute("DELETE FROM attempts WHERE delivery_id = ANY(%b::text[])", (gone_deliveries,))
    gone = cur.execute(
        "DELETE FROM events e WHERE id = ANY(%b::text[])"
        " AND NOT EXISTS (SELECT 1 FROM deliveries WHERE event_id = e.id)",
        (old,),
    ).rowcount
    last_seen, _, last_received = rows[-1]
    return last_seen, gone, len(rows) == limit and last_received < cutoff


def set_webhook_state(conn, webhook_id, enabled, reason, changed_at):
    conn.cursor().execute(
        "INSERT INTO webhook_state VALUES (%s, %s, %s, %s) ON CONFLICT (webhook_id) DO UPDATE"
        " SET enabled = excluded.enabled, reason = excluded.reason,"
        " changed_at = excluded.changed_at",
        (webhook_id, bool(enabled), reason, changed_at),
    )
    conn.states_changed = True


def webhook_states(conn):
    query = "SELECT webhook_id, enabled, reason, changed_at FROM webhook_state"
    return [tuple(row) for row in conn.cursor().execute(query).fetchall()]


OPERATIONS = {
    op.__name__: op
    for op in (
        append,
        append_ordered,
        release_waiting,
        record_attempts,
        put_to_sleep,
        last_rowid,
        recover,
        probe,
        renew_leases,
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
