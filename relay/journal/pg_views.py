"""Read-only views of a PostgreSQL journal, and the commands' few writes, each on a connection
of its own (never the writer's): what views.py and states.py do on SQLite, for ``relay
deliveries``, ``relay webhooks``, ``relay journal`` and the admin listener's pending counts.

``relay deliveries`` answers every filter from an index or a bounded run of ``seq`` (as views.py
does with rowids): newest first by ``seq``, ``--since``/``--until`` by a binary search on
``created_at`` along it.
"""

from __future__ import annotations

import functools

import psycopg

from relay.journal.engines import masked, scrub
from relay.journal.pg_schema import (
    SCHEMA_VERSION,
    migrate,
    raw_connect,
    schema_problems,
    version,
)
from relay.journal.replays import due_at
from relay.journal.writers import JournalError

# Seconds by which created_at may run out of seq's order: several relays' clocks (each stamps
# its own appends) and their commits interleaving. One relay's single writer keeps it to
# microseconds (views.first_rowid).
CLOCK_ROOM = 60.0
LISTING = (
    "d.id, d.webhook_id, d.event_id, e.name, d.state, d.attempts, d.created_at,"
    " a.started_at, d.next_at, a.status, a.error, d.seq"
)


class NoJournal(FileNotFoundError):
    """The database holds no journal yet (no relay has started on it)."""


def reader(url: str):
    """A connection of its own (autocommit); NoJournal when there is no journal there yet."""
    conn = raw_connect(url, autocommit=True)
    try:
        empty = version(conn)[0] == 0
    except BaseException:
        conn.close()
        raise
    if empty:
        conn.close()
        raise NoJournal(f"{masked(url)}: no journal there yet (a relay creates it at start)")
    return conn


def unreachable(url: str, error: psycopg.Error) -> JournalError:
    """A read that the database refused, as the journal's error (the admin listener answers
    503, a command says it): the URL's password scrubbed from its text."""
    return JournalError(f"{masked(url)}: {scrub(str(error).strip(), url)}")


def reading(function):
    """``function(url, ...)``'s psycopg errors (no connection to be had: a full pool,
    max_connections, pg_hba) as ``unreachable``."""

    @functools.wraps(function)
    def read(url, *args, **kwargs):
        try:
            return function(url, *args, **kwargs)
        except psycopg.Error as e:
            raise unreachable(url, e) from None

    return read


@reading
def deliveries(
    url: str,
    *,
    state: str = "pending",
    webhook_id: str | None = None,
    known_webhooks=(),
    event_id: str | None = None,
    since: float | None = None,
    until: float | None = None,
    limit: int | None = 50,
    before: int | None = None,
    event_name: str | None = None,
    lowest: int | None = None,
) -> list[tuple]:
    """As views.deliveries: ``before``, ``lowest`` and the rows' last column are ``seq``
    (SQLite's rowid), a waiting replay's ``next_at`` the time it was replayed, ``limit`` None
    no limit. ``event_name`` with a ``*`` is a pattern, as GLOB's on SQLite: ``*`` any text,
    ``?`` one character."""
    with reader(url) as conn:
        if event_id is not None:
            found = conn.execute(
                "SELECT event_id FROM deliveries WHERE id = %s", (event_id,)
            ).fetchone()
            event_id = found[0] if found else event_id
        where, params = [], []
        if state in ("pending", "parked", "failed", "delivered"):
            where.append("d.state = " + ("'pending'" if state == "parked" else f"'{state}'"))
        if state == "parked":
            where.append("NOT (d.webhook_id = ANY(%s))")
            params.append(list(known_webhooks))
        for column, value in (("d.webhook_id", webhook_id), ("d.event_id", event_id)):
            if value is not None:
                where.append(f"{column} = %s")
                params.append(value)
        if event_name is not None:
            where.append("e.name LIKE %s" if "*" in event_name else "e.name = %s")
            params.append(_like(event_name) if "*" in event_name else event_name)
        if lowest is not None:
            where.append("d.seq >= %s")
            params.append(lowest)
        # The seq range only narrows the scan, with room for the relays' clocks and commits
        # interleaving (CLOCK_ROOM); created_at decides.
        if since is not None:
            where.append("d.seq >= %s AND d.created_at >= %s")
            params += [first_seq(conn, since - CLOCK_ROOM), since]
        if until is not None:
            where.append("d.seq < %s AND d.created_at <= %s")
            params += [first_seq(conn, until + CLOCK_ROOM, after=True), until]
        if before is not None:
            where.append("d.seq < %s")
            params.append(before)
        sql = (
            f"SELECT {LISTING} FROM deliveries d JOIN events e ON e.id = d.event_id"
            " LEFT JOIN attempts a ON a.delivery_id = d.id AND a.number = d.attempts"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY d.seq DESC LIMIT %s"
        )
        rows = conn.execute(sql, [*params, limit]).fetchall()
        return [(*r[:8], due_at(r[8]), *r[9:]) for r in rows]


def _like(pattern: str) -> str:
    """A GLOB pattern's ``*`` and ``?`` as LIKE's, LIKE's own wildcards taken literally."""
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


@reading
def seq_range(url: str) -> tuple[int, int]:
    """As views.rowid_range: the oldest and newest deliveries' ``seq`` (1 and 0: none)."""
    with reader(url) as conn:
        return conn.execute(
            "SELECT COALESCE((SELECT MIN(seq) FROM deliveries), 1),"
            " COALESCE((SELECT MAX(seq) FROM deliveries), 0)"
        ).fetchone()


JOURNAL_TABLES = (
    "journal_schema",
    "events",
    "deliveries",
    "attempts",
    "bindings",
    "webhook_state",
    "runs",
    "replays",
)


def _rows(url: str, sql: str, params: tuple = ()) -> list[tuple]:
    """What ``sql`` reads, on a connection of its own; none while the database holds no
    journal yet."""
    try:
        conn = reader(url)
    except NoJournal:
        return []
    with conn:
        return [tuple(row) for row in conn.execute(sql, params).fetchall()]


@reading
def _number(url: str, sql: str, params: tuple) -> int:
    """What ``sql`` counts; 0 while the database holds no journal yet."""
    rows = _rows(url, sql, params)
    return rows[0][0] if rows else 0


def journal_bytes(url: str) -> int:
    """The journal's tables with their indexes and TOAST (``relay_journal_bytes``): not the
    whole database, which may hold more than the journal."""
    return _number(
        url,
        # to_regclass: as the journal's own statements find them (search_path).
        "SELECT COALESCE(SUM(pg_total_relation_size(to_regclass(t))), 0)::bigint"
        " FROM unnest(%s::text[]) AS t",
        (list(JOURNAL_TABLES),),
    )


def first_seq(conn, at: float, *, after: bool = False) -> int:
    """As views.first_rowid: where deliveries created at ``at`` (``after``: later) begin."""
    low, high = conn.execute(
        "SELECT COALESCE(MIN(seq), 0), COALESCE(MAX(seq), 0) + 1 FROM deliveries"
    ).fetchone()
    while low < high:
        middle = (low + high) // 2
        found = conn.execute(
            "SELECT seq, created_at FROM deliveries WHERE seq >= %s ORDER BY seq LIMIT 1",
            (middle,),
        ).fetchone()
        if found is None:  # no deliveries at all
            return low
        seq, created_at = found
        if created_at > at or (created_at == at and not after):
            high = middle
        else:
            low = seq + 1
    return low


def read_states(url: str) -> list[tuple]:
    return _rows(url, "SELECT webhook_id, enabled, reason, changed_at FROM webhook_state")


def write_state(url: str, webhook_id, enabled, reason, changed_at) -> None:
    """One webhook's state, and the notification that makes every relay read the states."""
    from relay.journal.pg_batch import PgJournal, run_batch

    raw = raw_connect(url, autocommit=True)
    try:
        migrate(raw, masked(url))  # as on SQLite, a state set before any relay ran is kept
    except BaseException:
        raw.close()
        raise
    journal = PgJournal(url, 0.0, None, raw)
    try:
        [(ok, error)] = run_batch(
            journal, [("set_webhook_state", (webhook_id, enabled, reason, changed_at))]
        )
    finally:
        journal.close()
    if not ok:
        raise RuntimeError(error)


@reading
def pending_counts(url: str) -> dict[str, int]:
    """Each webhook's pending deliveries, every relay's (the admin listener's, at a scrape): a
    walk of the pending (an index of them, or the table when most are pending), on a connection
    of its own, so it holds no commit; measured 30-38 ms at 100,000 pending, 157-168 ms at a
    million."""
    query = "SELECT webhook_id, COUNT(*) FROM deliveries WHERE state = 'pending' GROUP BY 1"
    return dict(_rows(url, query))


def pending_count(url: str, webhook_id: str) -> int:
    return _number(
        url,
        "SELECT COUNT(*) FROM deliveries WHERE state = 'pending' AND webhook_id = %s",
        (webhook_id,),
    )


def check(url: str) -> tuple[bool, list[str]]:
    """``relay journal check`` on PostgreSQL: reachable, of a schema this relay knows, whole;
    and what it holds."""
    where = masked(url)
    try:
        conn = raw_connect(url, autocommit=True)
    except Exception as e:  # noqa: BLE001 - psycopg's or the OS's: say it
        return False, [f"{where}: cannot connect: {e}"]
    with conn:
        number, _ = version(conn)
        if number == 0:
            return True, [f"{where}: no journal yet (a relay creates it when it first starts)"]
        if number > SCHEMA_VERSION:
            return False, [f"{where}: written by a newer relay (schema {number})"]
        if problems := schema_problems(conn):
            return False, [f"{where}: {p}" for p in problems]
        (events,) = conn.execute("SELECT count(*) FROM events").fetchone()
        counts = conn.execute("SELECT state, count(*) FROM deliveries GROUP BY 1 ORDER BY 1")
        states = ", ".join(f"{n:,} {s}" for s, n in counts.fetchall()) or "none"
        live = conn.execute(
            "SELECT count(*) FROM runs WHERE ended_at IS NULL"
            " AND seen_at > extract(epoch from now()) - 120"
        ).fetchone()[0]
    return True, [
        f"{where}: ok (schema {number}; {events:,} events; deliveries: {states};"
        f" relays seen in the last 2 minutes: {live})"
    ]


def migrate_url(url: str) -> tuple[int, int]:
    """``relay journal migrate``: ``(version before, version after)``."""
    with raw_connect(url, autocommit=True) as conn:
        return migrate(conn, masked(url))
