"""Read-only views of a journal for the commands, opened straight from the file: they work
whether or not a relay is running, and never go through the committer."""

from __future__ import annotations

from pathlib import Path

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
