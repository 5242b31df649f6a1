"""The journal's side of replays (``relay replay``): a delivery given a fresh attempt budget.

A replay sets ``attempt_base`` to the attempts made so far (the retry policy counts its tries
from there; the attempts' numbers go on, so the history stays), makes the delivery pending
again, and writes a row in ``replays`` (by whom, when, attempts before). A delivery the relay
holds in memory (pending with ``next_at`` NULL: queued or being attempted) is not replayed:
what the relay will record of it would undo the replay.

Replayed deliveries wait in a queue of their own, so that thousands of them do not starve fresh
traffic: their ``next_at`` is ``BAND`` plus the time of the replay, a value far beyond any
time (the year 36,800), in the same index (``deliveries_asleep``, on ``(webhook_id, next_at)``)
as the deliveries asleep until their time. So the scheduler's claim of what is due by now
never takes them, ``claim_replays`` takes them in the order they were replayed, both in
O(log n), and no schema change was needed. Views read such a ``next_at`` back as the time of
the replay (``due_at``): they are due since then, as soon as their lane has room.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from relay.model import Delivery, Event

BAND = float(2**40)  # next_at of a replayed delivery waiting for its lane: BAND + replayed at
BATCH = 500  # deliveries replayed per transaction: each holds the writer a few milliseconds
IN_FLIGHT = "in flight: the relay holds it in memory (queued or being attempted)"
WAITING = "replayed already, waiting for room in its lane"
UNKNOWN = "no such delivery"


def is_waiting(next_at: float | None) -> bool:
    """Whether ``next_at`` is a replayed delivery's, waiting for room in its lane."""
    return next_at is not None and BAND <= next_at < 2 * BAND


def due_at(next_at: float | None) -> float | None:
    """``next_at`` as a time: a waiting replay's is the time it was replayed."""
    return next_at - BAND if is_waiting(next_at) else next_at


# -- operations (relay/journal/sqlite.py runs them, in the writer) ---------------------------


def replay(conn, ids, now, by, held_ok=False, dry_run=False):
    """Replay the deliveries ``ids`` at ``now``, ``by`` someone: those held in memory are
    skipped, unless ``held_ok`` (no relay runs: what a dead run held is held by nobody).

    Returns ``(replayed, skipped)``: ``(id, webhook_id, state before, attempts)`` each, and
    ``(id, reason)``. ``dry_run``: what would be replayed, nothing written."""
    ids = list(dict.fromkeys(ids))
    found = {
        row[0]: row
        for row in conn.execute(
            "SELECT d.id, d.webhook_id, d.state, d.attempts, d.next_at, d.order_key"
            " FROM json_each(?) j"
            " JOIN deliveries d ON d.id = j.value",
            (json.dumps(ids),),
        )
    }
    replayed, skipped = [], []
    for delivery_id in ids:
        row = found.get(delivery_id)
        if row is None:
            skipped.append((delivery_id, UNKNOWN))
            continue
        _, webhook_id, state, attempts, next_at, _ = row
        if state == "pending" and next_at is None and not held_ok:
            skipped.append((delivery_id, IN_FLIGHT))
        elif state == "pending" and is_waiting(next_at):
            skipped.append((delivery_id, WAITING))
        else:
            replayed.append((delivery_id, webhook_id, state, attempts))
    if replayed and not dry_run:
        for r in replayed:  # one at a time: a replay of a key sees the one before it pending
            conn.execute(
                "UPDATE deliveries SET state = 'pending', attempt_base = attempts, next_at = ?,"
                " updated_at = ? WHERE id = ?",
                (_next_at(conn, found[r[0]], now), now, r[0]),
            )
        conn.executemany(
            "INSERT INTO replays VALUES (?, ?, ?, ?)", [(r[0], now, by, r[3]) for r in replayed]
        )
    return replayed, skipped


def _next_at(conn, row, now) -> float:
    """A replay waits in the replays' band, or, when its webhook orders by key (order_by) and
    another delivery of its key is pending, for its key (``math.inf``, as sqlite.py's
    ``WAITING``): the one of a key that ends releases the oldest pending, so a replay goes in
    acceptance order among them and never beside one in flight."""
    delivery_id, webhook_id, _, _, _, key = row
    if (
        key is not None
        and conn.execute(
            "SELECT 1 FROM deliveries WHERE webhook_id = ? AND order_key = ? AND state = 'pending'"
            " AND id <> ? LIMIT 1",
            (webhook_id, key, delivery_id),
        ).fetchone()
    ):
        return math.inf
    return BAND + now


def claim_replays(conn, webhook_id, now, limit):
    """Up to ``limit`` replayed deliveries to ``webhook_id``, in the order they were replayed,
    taken into memory; rows as ``claim_due``'s."""
    rows = conn.execute(
        "SELECT d.id, d.attempts, e.id, e.name, e.body, e.received_at, d.attempt_base"
        " FROM deliveries d JOIN events e ON e.id = d.event_id"
        " WHERE d.webhook_id = ? AND d.next_at IS NOT NULL AND d.next_at >= ? AND d.next_at < ?"
        " ORDER BY d.next_at LIMIT ?",
        (webhook_id, BAND, 2 * BAND, limit),
    ).fetchall()
    conn.executemany(conn.claim, [(now, r[0]) for r in rows])
    return rows


OPERATIONS = (replay, claim_replays)


def deliveries_of(webhook_id: str, rows) -> list[Delivery]:
    """The deliveries of ``claim_due``'s or ``claim_replays``' rows."""
    return [
        Delivery(
            id=delivery_id,
            webhook_id=webhook_id,
            event=Event(id=event_id, name=name, body=body, received_at=received_at),
            attempts=attempts,
            attempt_base=attempt_base,
        )
        for delivery_id, attempts, event_id, name, body, received_at, attempt_base in rows
    ]


class Replaying:
    """``Journal``'s methods for replays; they queue through its committer (``_call``)."""

    async def replay(
        self, ids: Sequence[str], now: float, by: str, *, dry_run: bool = False
    ) -> tuple[list[tuple], list[tuple]]:
        """Replay ``ids`` (see ``replay``), ``BATCH`` to a transaction; on disk on return."""
        replayed, skipped = [], []
        for start in range(0, len(ids), BATCH):
            batch = ids[start : start + BATCH]
            done, left = await self._call("replay", batch, now, by, False, dry_run)
            replayed += done
            skipped += left
        return replayed, skipped

    async def claim_replays(self, webhook_id: str, now: float, limit: int) -> list[Delivery]:
        """Take up to ``limit`` replayed deliveries to ``webhook_id`` into memory."""
        return deliveries_of(webhook_id, await self._call("claim_replays", webhook_id, now, limit))

    async def put_back_replays(self, delivery_ids: Iterable[str], now: float) -> None:
        """Hand replayed deliveries that found no room back to the queue of replays."""
        await self._submit("put_to_sleep", [(BAND + now, i) for i in delivery_ids])


def write_replays(
    state_dir: Path,
    ids: Sequence[str],
    now: float,
    by: str,
    *,
    held_ok: bool,
    dry_run: bool = False,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[tuple], list[tuple]]:
    """Replay ``ids`` straight in the journal file (``relay replay`` when it cannot ask a
    running relay), one transaction per ``BATCH``, as ``Replaying.replay``; ``progress(n)``
    after each. WAL lets this one writer in beside a running relay's, as
    relay/journal/states.py does for webhook states."""
    from relay.journal import schema

    conn = schema.connect(state_dir, start_run=False)

    def one(batch: list[str]) -> tuple[list[tuple], list[tuple]]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            done = replay(conn, batch, now, by, held_ok, dry_run)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return done

    try:
        return in_batches(ids, one, progress)
    finally:
        conn.close()


def in_batches(
    ids: Sequence[str],
    one: Callable[[list[str]], tuple[list[tuple], list[tuple]]],
    progress: Callable[[int], None] | None,
) -> tuple[list[tuple], list[tuple]]:
    """``one(batch)`` for each ``BATCH`` of ``ids`` (a transaction each), its replayed and
    skipped gathered; ``progress(n)`` after each."""
    replayed, skipped = [], []
    for start in range(0, len(ids), BATCH):
        done, left = one(list(ids[start : start + BATCH]))
        replayed += done
        skipped += left
        if progress is not None:
            progress(len(done) + len(left))
    return replayed, skipped
