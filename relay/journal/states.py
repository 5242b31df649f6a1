"""The journal's side of disabled webhooks: ``webhook_state``, one row per webhook whose state
was changed (``relay webhooks disable``/``enable``, a 410 Gone, ``disable_after``).

The relay reads the rows when it starts and on every reload, so a command can change a state
while a relay runs without a channel of its own: it writes the row straight into the file
(``write_state``, beside the running writer: WAL lets it, and the relay's lock on the state
directory is for relays, not for one row) and asks the relay to reload.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
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

    _state_listeners: tuple[Callable[[], None], ...] = ()

    def on_states_changed(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` when another relay sharing this journal changed a webhook's
        state (PostgreSQL: relay/journal/pg_notify.py): the states are to be read again."""
        self._state_listeners = (*self._state_listeners, callback)

    def states_changed(self) -> None:
        for listener in self._state_listeners:
            listener()


def write_state(
    state_dir: Path,
    webhook_id: str,
    enabled: bool,
    reason: str | None,
    changed_at: float,
    *,
    url: str | None = None,
) -> None:
    """Write one webhook's state straight into the journal file (or database, at ``url``),
    running relay or not."""
    if url is not None:
        from relay.journal import pg_views

        return pg_views.write_state(url, webhook_id, enabled, reason, changed_at)
    conn = journal_sql.connect(state_dir)
    try:
        conn.execute("BEGIN IMMEDIATE")
        journal_sql.set_webhook_state(conn, webhook_id, enabled, reason, changed_at)
        conn.execute("COMMIT")
    finally:
        conn.close()


def read_states(state_dir: Path, *, url: str | None = None) -> dict[str, WebhookState]:
    """The states in the journal, read-only; empty when there is no journal yet."""
    if url is not None:
        from relay.journal import pg_views

        return {row[0]: WebhookState(*row) for row in pg_views.read_states(url)}
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


def pending_count(state_dir: Path, webhook_id: str, *, url: str | None = None) -> int:
    """How many deliveries to ``webhook_id`` are pending (through deliveries_pending)."""
    if url is not None:
        from relay.journal import pg_views

        return pg_views.pending_count(url, webhook_id)
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
