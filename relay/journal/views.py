"""Read-only views of a journal, opened straight from the file: they work whether or not a
relay is running, and never go through the committer. For the commands, and the running relay's
pending counts (``count_pending``), which would otherwise hold its one writer."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import trio
from attrs import frozen

from relay.journal import sqlite as journal_sql


@frozen
class DeliveryRow:
    id: str
    webhook_id: str
    event: str
    state: str
    attempts: int
    next_at: float | None
    last_outcome: str | None


def list_deliveries(state_dir: Path, **filters) -> list[DeliveryRow]:
    """See ``relay.journal.sqlite.list_deliveries``."""
    return [DeliveryRow(*row) for row in journal_sql.list_deliveries(state_dir, **filters)]


async def count_pending(state_dir: Path, *, task_status=trio.TASK_STATUS_IGNORED) -> dict[str, int]:
    """Pending deliveries per webhook id, as the journal holds them when this is called.

    On a read-only connection of its own, in a thread: WAL lets it read beside the writer, so
    neither the relay's start nor its commits wait for the walk (over a second for a million
    pending from a cold disk, measured, when the writer took it first). ``task_status.started()``
    comes once its snapshot is taken: what is written after that is not in the count.
    """
    conn = sqlite3.connect(
        f"file:{state_dir / journal_sql.FILENAME}?mode=ro",
        uri=True,
        isolation_level=None,
        check_same_thread=False,
    )
    try:
        conn.execute("BEGIN")  # one read transaction: one snapshot, fixed by its first read
        conn.execute("SELECT 1 FROM deliveries LIMIT 1").fetchall()
        task_status.started()
        return await trio.to_thread.run_sync(journal_sql.pending_counts, conn)
    finally:
        conn.close()
