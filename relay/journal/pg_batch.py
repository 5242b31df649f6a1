"""PostgreSQL's connection for the journal's writer, and ``run_batch``: a batch of operations
(relay/journal/postgresql.py) in one transaction, one commit for all (group commit), as on
SQLite.

Besides SQLite's ``run_batch``:

- the advisory locks of every order key the batch appends to or releases are taken first, in
  one sorted order, so that two relays' batches never wait for each other in a circle;
- a batch that a deadlock or a serialization failure aborts is run again (twice at most)
  before its operations are tried one by one;
- a broken connection (the server restarted) is opened again at the next batch; the run, and
  so the leases, stay the same;
- a batch that made deliveries due ends with ``NOTIFY relay_journal`` (pg_notify.py).
"""

from __future__ import annotations

from pathlib import Path

import psycopg

from relay.journal import pg_schema
from relay.journal.engines import masked, scrub
from relay.journal.pg_schema import OPEN_ERRORS, migrate, raw_connect

CHANNEL = "relay_journal"
RETRIES = 2  # a batch aborted by a deadlock or a serialization failure runs again this often
RETRYABLE = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)
NOW = "extract(epoch from now())"

__all__ = ["OPEN_ERRORS", "PgJournal", "connect", "lock_keys", "run_batch"]


class PgJournal:
    """The writer's connection: psycopg's (opened again when it breaks), the run it writes
    for, its lease, and the statements that mark rows with both (literals: the statements
    stay the same, and are prepared once)."""

    def __init__(
        self,
        url: str,
        lease: float,
        run_id: int | None,
        previous_run: int | None,
        raw: psycopg.Connection | None = None,
    ):
        self.url = url
        self.lease = float(lease)
        self.run_id = run_id
        self.previous_run = previous_run
        self.raw = raw
        self.notify = False  # this transaction made deliveries due: tell the other relays
        self.states_changed = False  # it changed a webhook's state
        held_by = "NULL" if run_id is None else str(int(run_id))
        lease_until = f"{NOW} + {self.lease!r}"
        self.insert_deliveries = (
            "INSERT INTO deliveries (id, event_id, webhook_id, created_at, updated_at, held_by,"
            f" lease_until) SELECT i, e, w, c, u, {held_by}, {lease_until} FROM unnest("
            "%b::text[], %b::text[], %b::text[], %b::float8[], %b::float8[]) AS t (i, e, w, c, u)"
        )
        self.insert_ordered = (
            "INSERT INTO deliveries (id, event_id, webhook_id, created_at, updated_at, order_key,"
            " next_at, held_by, lease_until) SELECT v.*,"
            " CASE WHEN b.busy THEN 'Infinity'::float8 END,"
            f" CASE WHEN b.busy THEN NULL ELSE {held_by} END,"
            f" CASE WHEN b.busy THEN NULL ELSE {lease_until} END"
            " FROM (VALUES (%s, %s, %s, %s::float8, %s::float8, %s)) AS v,"
            " (SELECT EXISTS (SELECT 1 FROM deliveries WHERE webhook_id = %s AND order_key = %s"
            " AND state = 'pending') AS busy) AS b RETURNING next_at IS NOT NULL"
        )
        self.update_outcomes = (
            "UPDATE deliveries d SET state = t.state, attempts = t.attempts, next_at = t.next_at,"
            " updated_at = t.updated_at, last_outcome = t.last_outcome, lease_until = NULL"
            " FROM unnest(%b::text[], %b::int4[], %b::float8[], %b::float8[], %b::text[],"
            " %b::text[]) AS t (state, attempts, next_at, updated_at, last_outcome, id)"
            f" WHERE d.id = t.id AND d.held_by = {held_by} AND d.state = 'pending' RETURNING d.id"
        )
        self.claim = (
            "WITH due AS (SELECT id FROM deliveries WHERE webhook_id = %s AND next_at <= %s"
            " ORDER BY next_at LIMIT %s FOR UPDATE SKIP LOCKED)"
            " UPDATE deliveries d SET next_at = NULL, updated_at = %s,"
            f" held_by = {held_by}, lease_until = {lease_until}"
            " FROM due, events e WHERE d.id = due.id AND e.id = d.event_id"
            " RETURNING d.id, d.attempts, e.id, e.name, e.body, e.received_at"
        )

    def open(self) -> None:
        if self.raw is None or self.raw.closed or self.raw.broken:
            if self.raw is not None:
                self.raw.close()
            self.raw = raw_connect(self.url, autocommit=True)

    def cursor(self) -> psycopg.Cursor:
        return self.raw.cursor()

    @property
    def backend_pid(self) -> int | None:
        return self.raw.info.backend_pid if self.raw is not None else None

    def end_run(self) -> None:
        """A clean stop: the run ends, unless it still holds something (writes that could
        not be made), which its lease then hands to the others."""
        if self.run_id is None:
            return
        try:
            self.open()
            self.raw.execute(
                f"UPDATE runs SET ended_at = {NOW} WHERE id = %s AND NOT EXISTS (SELECT 1 FROM"
                " deliveries WHERE held_by = %s AND state = 'pending' AND next_at IS NULL)",
                (self.run_id, self.run_id),
            )
        except psycopg.Error:
            pass  # its lease expires instead

    def close(self) -> None:
        self.end_run()
        if self.raw is not None:
            self.raw.close()


def connect(state_dir: Path, url: str, *, lease: float = 30.0, start_run: bool = True) -> PgJournal:
    """The journal at ``url``: its schema created or migrated, and (``start_run``) a run of
    ``state_dir`` started, with the previous run of that state_dir noted for ``recover``."""
    raw = raw_connect(url, autocommit=True)
    try:
        migrate(raw, masked(url))
        run_id, previous = pg_schema.start_run(raw, state_dir) if start_run else (None, None)
    except BaseException:
        raw.close()
        raise
    return PgJournal(url, lease, run_id, previous, raw)


def lock_keys(conn: PgJournal, keys) -> None:
    """Take the advisory locks of ``(webhook_id, order_key)`` pairs, in one order (by the
    lock's number), held until the transaction ends."""
    keys = sorted(set(keys))
    if keys:
        conn.cursor().execute(
            "SELECT pg_advisory_xact_lock(k) FROM (SELECT DISTINCT"
            " hashtextextended(w || chr(1) || o, 0) AS k"
            " FROM unnest(%b::text[], %b::text[]) AS t (w, o) ORDER BY 1) AS s",
            ([w for w, _ in keys], [o for _, o in keys]),
        )


def _batch_keys(conn: PgJournal, batch) -> list[tuple[str, str]]:
    """The order keys ``batch`` appends to or releases (a report's key is known only later:
    postgresql._order takes its lock itself)."""
    keys, releasing = [], []
    for name, args in batch:
        if name == "append_ordered":
            keys.extend((row[2], row[5]) for row in args[5][0])
        elif name == "record_attempts" and len(args) > 2 and args[2]:
            releasing.extend(delivery_id for _, delivery_id in args[2])
    if releasing:
        keys.extend(
            conn.cursor()
            .execute(
                "SELECT webhook_id, order_key FROM deliveries"
                " WHERE id = ANY(%b::text[]) AND order_key IS NOT NULL",
                (releasing,),
            )
            .fetchall()
        )
    return keys


def run_batch(conn: PgJournal, batch: list[tuple[str, tuple]]) -> list[tuple[bool, object]]:
    """As sqlite.run_batch: one transaction; if it fails, each operation alone."""
    for _ in range(RETRIES + 1):
        try:
            return [(True, result) for result in _transaction(conn, batch)]
        except RETRYABLE:
            continue
        except Exception as e:  # noqa: BLE001
            if len(batch) == 1:
                return [(False, _describe(conn, e))]
            break
    results = []
    for item in batch:
        try:
            results.append((True, _transaction(conn, [item])[0]))
        except Exception as e:  # noqa: BLE001
            results.append((False, _describe(conn, e)))
    return results


def _describe(conn: PgJournal, error: Exception) -> str:
    text = str(error) if isinstance(error, psycopg.Error) else f"{type(error).__name__}: {error}"
    return scrub(text.strip(), conn.url)


def _transaction(conn: PgJournal, batch) -> list:
    from relay.journal.postgresql import OPERATIONS

    conn.open()
    conn.notify = conn.states_changed = False
    with conn.raw.transaction():
        lock_keys(conn, _batch_keys(conn, batch))
        results = [OPERATIONS[name](conn, *args) for name, args in batch]
        if conn.notify:
            conn.cursor().execute(f"NOTIFY {CHANNEL}, 'due'")
        if conn.states_changed:
            conn.cursor().execute(f"NOTIFY {CHANNEL}, 'states'")
    return results
