"""The journal's side of disabled webhooks: ``webhook_state``, one row per webhook whose state
was changed (``relay webhooks disable``/``enable``, a 410 Gone, ``disable_after``).

The relay reads the rows when it starts and on every reload, so a command can change a state
while a relay runs without a channel of its own: it writes the row straight into the file
(``write_state``, beside the running writer: WAL lets it, and the relay's lock on the state
directory is for relays, not for one row) and asks the relay to reload.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from attrs import frozen

from relay.journal import sqlite as journal_sql


@frozen
class WebhookState:
    webhook_id: str
    enabled: bool
    reason: str | None
    changed_at: float


class States:
    """``Journal``'s methods for webhook states; they queue through its committer like every
    other operation (``_call``)."""

    async def set_webhook_state(
        self, webhook_id: str, enabled: bool, reason: str | None, changed_at: float
    ) -> None:
        """Record that ``webhook_id`` is disabled or enabled; returns once it is on disk."""
        await self._call("set_webhook_state", webhook_id, enabled, reason, changed_at)

    async def webhook_states(self) -> dict[str, WebhookState]:
        return {row[0]: WebhookState(*row) for row in await self._call("webhook_states")}


def write_state(
    state_dir: Path, webhook_id: str, enabled: bool, reason: str | None, changed_at: float
) -> None:
    """Write one webhook's state straight into the journal file, running relay or not."""
    conn = journal_sql.connect(state_dir)
    try:
        conn.execute("BEGIN IMMEDIATE")
        journal_sql.set_webhook_state(conn, webhook_id, enabled, reason, changed_at)
        conn.execute("COMMIT")
    finally:
        conn.close()


def read_states(state_dir: Path) -> dict[str, WebhookState]:
    """The states in the journal file, read-only; empty when there is no journal yet."""
    path = state_dir / journal_sql.FILENAME
    if not path.exists():
        return {}
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        rows = conn.execute("SELECT * FROM webhook_state").fetchall()
    except sqlite3.OperationalError:  # a journal from before the table: nothing disabled
        return {}
    finally:
        conn.close()
    return {w: WebhookState(w, bool(e), r, c) for w, e, r, c in rows}


def pending_count(state_dir: Path, webhook_id: str) -> int:
    """How many deliveries to ``webhook_id`` are pending (through deliveries_pending)."""
    path = state_dir / journal_sql.FILENAME
    if not path.exists():
        return 0
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        (count,) = conn.execute(
            "SELECT COUNT(*) FROM deliveries WHERE state = 'pending' AND webhook_id = ?",
            (webhook_id,),
        ).fetchone()
    finally:
        conn.close()
    return count
