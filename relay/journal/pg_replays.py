"""Replays on PostgreSQL: relay/journal/replays.py's ``replay`` and ``claim_replays`` for relays
that share the journal.

The same band of ``next_at`` holds replayed deliveries waiting for their lane, the same results
and skips. What sharing adds:

- A delivery "in memory" is any relay's: pending with ``next_at`` NULL. ``held_ok`` (no relay
  runs on this state_dir) lets through only those whose lease has expired by the server's
  clock: other relays may be running, and what they hold stays theirs.
- The rows are locked (``FOR UPDATE``) after the order keys they have (the keys' advisory
  locks, as an append and a delivery that finishes take them: pg_batch.lock_keys), so that "is
  another of its key pending?" and another relay's release of the next of that key see each
  other; each replay of a batch is written before the next is looked at, so that two replays
  of one key in one batch go one after the other.
- A replay ends with ``NOTIFY relay_journal, 'states'``: every relay re-reads the states and
  looks for replays in each of its lanes (relay/delivery/replays.py), whichever relay's admin
  listener took the replay.
- ``claim_replays`` marks what it takes with this run and a lease, as ``claim_due`` does, and
  skips rows another relay is claiming (``SKIP LOCKED``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from relay.journal.pg_batch import PgJournal, lock_keys, run_batch
from relay.journal.pg_schema import noted_runs, raw_connect, version
from relay.journal.replays import BAND, IN_FLIGHT, UNKNOWN, WAITING, in_batches, is_waiting

NOW = "extract(epoch from now())"
INFINITY = float("inf")  # as postgresql.WAITING: waits for an earlier delivery of its key


def replay(conn, ids, now, by, held_ok=False, dry_run=False, ours=(None, None)):
    """As replays.replay; ``(replayed, skipped)``. ``ours``, with ``held_ok``: the state_dir's
    owner and last run (pg_schema.noted_runs), whose runs are dead (the caller holds its
    lock): what they held is replayed at once, not when its lease expires."""
    ids = list(dict.fromkeys(ids))
    cur = conn.cursor()
    keys = cur.execute(
        "SELECT webhook_id, order_key FROM deliveries"
        " WHERE id = ANY(%b::text[]) AND order_key IS NOT NULL",
        (ids,),
    ).fetchall()
    if not dry_run:
        lock_keys(conn, keys)
    found = {
        row[0]: row
        for row in cur.execute(
            "SELECT id, webhook_id, state, attempts, next_at, order_key,"
            f" (lease_until IS NOT NULL AND lease_until < {NOW})"
            " OR held_by IN (SELECT id FROM runs WHERE owner = %s OR id = %s) FROM deliveries"
            " WHERE id = ANY(%b::text[])" + ("" if dry_run else " ORDER BY id FOR UPDATE"),
            (*ours, ids),
        ).fetchall()
    }
    replayed, skipped = [], []
    for delivery_id in ids:
        row = found.get(delivery_id)
        if row is None:
            skipped.append((delivery_id, UNKNOWN))
            continue
        _, webhook_id, state, attempts, next_at, key, expired = row
        if state == "pending" and next_at is None and not (held_ok and expired):
            skipped.append((delivery_id, IN_FLIGHT))
        elif state == "pending" and is_waiting(next_at):
            skipped.append((delivery_id, WAITING))
        else:
            replayed.append((delivery_id, webhook_id, state, attempts))
            if not dry_run:
                cur.execute(
                    "UPDATE deliveries SET state = 'pending', attempt_base = attempts,"
                    " next_at = %s, updated_at = %s, lease_until = NULL WHERE id = %s",
                    (_next_at(cur, delivery_id, webhook_id, key, now), now, delivery_id),
                )
    if replayed and not dry_run:
        cur.execute(
            "INSERT INTO replays (delivery_id, replayed_at, by, attempts_before)"
            " SELECT * FROM unnest(%b::text[], %b::float8[], %b::text[], %b::int4[])",
            (
                [r[0] for r in replayed],
                [now] * len(replayed),
                [by] * len(replayed),
                [r[3] for r in replayed],
            ),
        )
        conn.states_changed = True  # every relay looks for replays in its lanes
    return replayed, skipped


def _next_at(cur, delivery_id, webhook_id, key, now) -> float:
    """As replays._next_at: behind another pending delivery of its key (its lock is held), else
    in the replays' band."""
    if key is not None and (
        cur.execute(
            "SELECT 1 FROM deliveries WHERE webhook_id = %s AND order_key = %s"
            " AND state = 'pending' AND id <> %s LIMIT 1",
            (webhook_id, key, delivery_id),
        ).fetchone()
        is not None
    ):
        return INFINITY
    return BAND + now


def claim_replays(conn, webhook_id, now, limit):
    """As replays.claim_replays: up to ``limit``, in the order they were replayed, held by this
    run under a lease."""
    rows = (
        conn.cursor()
        .execute(
            "WITH due AS (SELECT id, next_at FROM deliveries WHERE webhook_id = %s"
            " AND next_at >= %s AND next_at < %s ORDER BY next_at LIMIT %s"
            " FOR UPDATE SKIP LOCKED)"
            " UPDATE deliveries d SET next_at = NULL, updated_at = %s,"
            f" held_by = {int(conn.run_id)}, lease_until = {NOW} + {conn.lease!r}"
            " FROM due, events e WHERE d.id = due.id AND e.id = d.event_id"
            " RETURNING due.next_at, d.id, d.attempts, e.id, e.name, e.body, e.received_at,"
            " d.attempt_base",
            (webhook_id, BAND, 2 * BAND, limit, now),
        )
        .fetchall()
    )
    return [tuple(row[1:]) for row in sorted(rows, key=lambda row: (row[0], row[1]))]


OPERATIONS = (replay, claim_replays)


def write_replays(
    url: str,
    ids: Sequence[str],
    now: float,
    by: str,
    *,
    held_ok: bool,
    dry_run: bool = False,
    progress: Callable[[int], None] | None = None,
    state_dir: Path | None = None,
) -> tuple[list[tuple], list[tuple]]:
    """As replays.write_replays, in the shared database (``relay replay`` when no relay's admin
    listener answers): ``BATCH`` a transaction, on a connection of its own. Each transaction's
    NOTIFY has every running relay look for replays in its lanes: none needs a reload. With
    ``held_ok``, what the runs of ``state_dir`` (locked by the caller) held goes too."""
    raw = raw_connect(url, autocommit=True)
    ours = noted_runs(state_dir, version(raw)[1]) if held_ok and state_dir else (None, None)
    journal = PgJournal(url, 0.0, None, raw)

    def one(batch: list[str]) -> tuple[list[tuple], list[tuple]]:
        args = (batch, now, by, held_ok, dry_run, ours)
        [(ok, result)] = run_batch(journal, [("replay", args)])
        if not ok:
            raise RuntimeError(result)  # its text is scrubbed of the URL's password
        return result

    try:
        return in_batches(ids, one, progress)
    finally:
        journal.close()
