"""Read-only views of a journal, opened straight from the file: they work whether or not a
relay is running, and never go through the committer. For the commands, and the running relay's
pending counts (``count_pending``), which would otherwise hold its one writer."""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Iterable
from pathlib import Path

import trio
from attrs import frozen

from relay.journal.replays import due_at
from relay.journal.sqlite import FILENAME, pending_counts


@frozen
class DeliveryRow:
    """One delivery as ``relay deliveries`` shows it; times are Unix seconds."""

    id: str
    webhook_id: str
    event_id: str
    event: str  # the event's name
    state: str  # pending | delivered | failed (parked is the command's reading of pending)
    attempts: int
    created_at: float
    last_attempt_at: float | None  # when the last attempt started
    next_at: float | None  # None when pending: in the relay's memory (queued, or under way)
    last_status: int | None  # the last attempt's HTTP status, when an answer came
    last_error: str | None  # what went wrong otherwise (or besides)
    rowid: int = 0  # its place in the journal: the cursor of a page (``before``)


def list_deliveries(state_dir: Path, *, url: str | None = None, **filters) -> list[DeliveryRow]:
    """See ``deliveries`` (``url``: a PostgreSQL journal, relay/journal/pg_views.py)."""
    if url is not None:
        from relay.journal import pg_views

        return [DeliveryRow(*row) for row in pg_views.deliveries(url, **filters)]
    return [DeliveryRow(*row) for row in deliveries(state_dir, **filters)]


def page(
    state_dir: Path,
    *,
    limit: int,
    before: int | None,
    scan: int | None,
    url: str | None = None,
    **filters,
) -> tuple[list[DeliveryRow], int | None]:
    """A page of ``list_deliveries`` and the cursor of the next (None: no more), for the web
    console. ``scan``: the most rowids one page walks, for filters no index answers (an event's
    name, a webhook among every state): a page of a rare name in a journal of millions ends
    after that many, with fewer rows and the cursor where it stopped, rather than walking the
    whole journal before it answers. On PostgreSQL (``url``) its ``seq`` stands for rowids."""
    lowest = oldest = None
    if scan is not None:
        if url is not None:
            from relay.journal import pg_views

            oldest, newest = pg_views.seq_range(url)
        else:
            oldest, newest = rowid_range(state_dir)
        top = before if before is not None else newest + 1
        lowest = max(oldest, top - scan)
    rows = list_deliveries(state_dir, url=url, limit=limit, before=before, lowest=lowest, **filters)
    if len(rows) == limit:
        return rows, rows[-1].rowid
    return rows, lowest if lowest is not None and lowest > oldest else None


def rowid_range(state_dir: Path) -> tuple[int, int]:
    """The oldest and newest deliveries' rowids (1 and 0: none)."""
    conn = sqlite3.connect(f"{(state_dir / FILENAME).absolute().as_uri()}?mode=ro", uri=True)
    try:
        # Two subqueries: MIN and MAX in one would walk the table instead of two lookups.
        sql = (
            "SELECT COALESCE((SELECT MIN(rowid) FROM deliveries), 1),"
            " COALESCE((SELECT MAX(rowid) FROM deliveries), 0)"
        )
        return conn.execute(sql).fetchone()
    finally:
        conn.close()


async def count_pending(state_dir: Path, *, task_status=trio.TASK_STATUS_IGNORED) -> dict[str, int]:
    """Pending deliveries per webhook id, as the journal holds them when this is called.

    On a read-only connection of its own, in a thread: WAL lets it read beside the writer, so
    neither the relay's start nor its commits wait for the walk (over a second for a million
    pending from a cold disk, measured, when the writer took it first). ``task_status.started()``
    comes once its snapshot is taken: what is written after that is not in the count. (A
    PostgreSQL journal is counted at each scrape instead: relay/admin/status.py.)
    """
    conn = sqlite3.connect(
        f"file:{state_dir / FILENAME}?mode=ro",
        uri=True,
        isolation_level=None,
        check_same_thread=False,
    )
    try:
        conn.execute("BEGIN")  # one read transaction: one snapshot, fixed by its first read
        conn.execute("SELECT 1 FROM deliveries LIMIT 1").fetchall()
        task_status.started()
        return await trio.to_thread.run_sync(pending_counts, conn)
    finally:
        conn.close()


# -- listing, for `relay deliveries`: read-only, straight from the file ------------------------
#
# The journal may hold millions of deliveries, so every filter is answered from an index or from
# a bounded run of rowids (rowids follow arrival: the newest rows are the highest), newest first
# without a sort (tests/test_cli_deliveries.py checks each combination's EXPLAIN QUERY PLAN):
# - pending, parked: deliveries_pending, in rowid order (pending are few among the finished);
# - failed: deliveries_failed, in rowid order;
# - --event: deliveries_by_event (an event has one delivery per webhook);
# - --since/--until: a rowid range, found by a binary search on created_at (no index on the
#   time: that would cost every append);
# - delivered and all: the rowids from the newest down, stopping at the limit (most rows are
#   delivered, so the limit is reached among the newest), or within --since/--until's range.
# --webhook filters whichever of these applies.

LISTING = (
    "d.id, d.webhook_id, d.event_id, e.name, d.state, d.attempts, d.created_at,"
    " a.started_at, d.next_at, a.status, a.error, d.rowid"
)


def deliveries(
    state_dir: Path,
    *,
    state: str = "pending",
    webhook_id: str | None = None,
    known_webhooks: Iterable[str] = (),
    event_id: str | None = None,
    since: float | None = None,
    until: float | None = None,
    limit: int = 50,
    before: int | None = None,
    event_name: str | None = None,
    lowest: int | None = None,
) -> list[tuple]:
    """Rows of ``LISTING`` for ``relay deliveries``, the newest first, read-only from the
    journal file (a relay may be running or not).

    ``parked`` means pending for a webhook not in ``known_webhooks``; ``event_id`` may be an
    event's id or one of its deliveries' ids; ``since``/``until`` bound ``created_at``;
    ``before``: only rows older than that rowid (the next page: keyset, never OFFSET, so a page
    costs the same however deep); ``lowest``: none below that rowid; ``event_name``: the
    event's name, or a pattern (``whatsapp:message:*``, SQLite's GLOB). A replay waiting for
    its lane shows as due since it was replayed. Raises FileNotFoundError when ``state_dir``
    holds no journal.
    """
    path = (state_dir / FILENAME).absolute()
    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, "no journal", str(path))
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=30)
    try:
        if event_id is not None:
            found = conn.execute(
                "SELECT event_id FROM deliveries WHERE id = ?", (event_id,)
            ).fetchone()
            event_id = found[0] if found else event_id
        first = first_rowid(conn, since) if since is not None else None
        end = first_rowid(conn, until, after=True) if until is not None else None
        if before is not None:
            end = before if end is None else min(end, before)
        sql, params = deliveries_query(
            state,
            webhook_id,
            known_webhooks,
            limit,
            event_id=event_id,
            since=since,
            until=until,
            rowids=(first, end),
            event_name=event_name,
            lowest=lowest,
        )
        rows = conn.execute(sql, params).fetchall()
        return [(*r[:8], due_at(r[8]), *r[9:]) if r[8] is not None else r for r in rows]
    finally:
        conn.close()


def first_rowid(conn, at: float, *, after: bool = False) -> int:
    """The rowid where deliveries created at ``at`` or later (``after``: later than ``at``)
    begin, by a binary search of point lookups (O(log² n)) in place of an index on the time.

    Rowids follow arrival and ``created_at`` is the arrival time, so they rise together, but
    only nearly: the requests of one group commit may be out of order by microseconds, so a
    row that close to the bound may fall on the other side of it. The query filters on
    ``created_at`` too: the range only narrows the scan.
    """
    low, high = conn.execute(
        "SELECT COALESCE(MIN(rowid), 0), COALESCE(MAX(rowid), 0) + 1 FROM deliveries"
    ).fetchone()
    while low < high:  # the bound is in [low, high]
        middle = (low + high) // 2
        found = conn.execute(
            "SELECT rowid, created_at FROM deliveries WHERE rowid >= ? ORDER BY rowid LIMIT 1",
            (middle,),
        ).fetchone()
        if found is None:  # no deliveries at all
            return low
        rowid, created_at = found
        if created_at > at or (created_at == at and not after):
            high = middle
        else:
            low = rowid + 1
    return low


def deliveries_query(
    state,
    webhook_id,
    known_webhooks,
    limit,
    *,
    event_id: str | None = None,
    since: float | None = None,
    until: float | None = None,
    rowids: tuple[int | None, int | None] = (None, None),
    event_name: str | None = None,
    lowest: int | None = None,
) -> tuple[str, list]:
    """The SQL of ``list_deliveries`` and its parameters; ``rowids`` is ``[first, end)``."""
    where, params = [], []
    if state in ("pending", "parked", "failed", "delivered"):
        # A literal, not a parameter: it must match the partial indexes' WHERE to use them.
        where.append({"parked": "d.state = 'pending'"}.get(state, f"d.state = '{state}'"))
    if state == "parked":
        known = list(known_webhooks)
        where.append(f"d.webhook_id NOT IN ({','.join('?' * len(known))})")
        params.extend(known)
    if webhook_id is not None:
        where.append("d.webhook_id = ?")
        params.append(webhook_id)
    if event_id is not None:
        where.append("d.event_id = ?")
        params.append(event_id)
    if event_name is not None:
        where.append("e.name GLOB ?" if "*" in event_name else "e.name = ?")
        params.append(event_name)
    if lowest is not None:
        where.append("d.rowid >= ?")
        params.append(lowest)
    first, end = rowids
    if first is not None:
        where.append("d.rowid >= ? AND d.created_at >= ?")
        params.extend((first, since))
    if end is not None:
        where.append("d.rowid < ?" if until is None else "d.rowid < ? AND d.created_at <= ?")
        params.extend((end,) if until is None else (end, until))
    sql = (
        f"SELECT {LISTING}"
        " FROM deliveries d"
        # Else the planner takes a state's partial index as just as good: with a backlog of
        # pending, far from it.
        + (" INDEXED BY deliveries_by_event" if event_id is not None else "")
        + " JOIN events e ON e.id = d.event_id"
        " LEFT JOIN attempts a ON a.delivery_id = d.id AND a.number = d.attempts"
        + (" WHERE " + " AND ".join(where) if where else "")
        + " ORDER BY d.rowid DESC LIMIT ?"  # the newest first, without sorting the journal
    )
    return sql, [*params, limit]
