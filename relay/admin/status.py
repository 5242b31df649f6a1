"""What the admin listener says about each webhook, for /api/status and /metrics alike.

On SQLite, pending counts are kept, not counted: the journal's count at start (a walk of its
pending index, 0.2 s a million pending, over a second from a cold disk: read beside the writer
while the relay starts, relay.journal.count_pending, and an early scrape waits for it), plus
what ingest journaled since, minus what delivery finished since. Counting at each scrape
instead would cost that walk every time, and through the journal's one writer it would hold
every commit, and so every ingest acknowledgement, meanwhile. The oldest pending delivery is
asked of the journal at each scrape: one indexed MIN per webhook, O(log n). Delivery's counts
reach the relay with the delivery process's report, every 0.5 s: a count may trail what the
journal holds by that much.

On PostgreSQL the journal is shared, and a retry one relay put to sleep may be finished by
another: counts kept by each relay would drift from the truth. There the database is asked at
each scrape, on a connection of its own (a count of the pending deliveries, ~0.16 s at a
million, which holds no commit of anybody's): every relay on the journal shows the same
counts, all of theirs. A database that refuses the connection makes the scrape a 503.
"""

from __future__ import annotations

import trio
from attrs import frozen

from relay.config import Webhook
from relay.journal.states import WebhookState as JournalState


async def runtime_states(relay) -> dict[str, JournalState]:
    """The webhook states set at run time (``relay webhooks disable``, a 410 Gone,
    ``disable_after``): the journal's ``webhook_state`` rows, where the delivery process writes
    them too (through this relay's committer), so that they are read here in either delivery
    mode. A few rows, read at each scrape."""
    return await relay.journal.webhook_states()


def enabled(webhook: Webhook, states: dict[str, JournalState]) -> tuple[bool, str | None]:
    """Whether ``webhook`` takes deliveries, and why not: the one place /metrics and the API
    ask. Disabled by relay.toml (``enabled = false``), or by a state set at run time."""
    if not webhook.enabled:
        return False, "enabled = false in the configuration"
    state = states.get(webhook.id)
    if state is not None and not state.enabled:
        return False, state.reason or "disabled"
    return True, None


@frozen
class WebhookState:
    id: str
    enabled: bool
    disabled_reason: str | None  # why not enabled (a 410 Gone, relay webhooks disable ...)
    pending: int
    oldest_pending_age: float | None  # seconds; None when nothing is pending
    last_success_at: float | None  # wall time, this run
    consecutive_failures: int  # attempts failed since the last success (this run)

    def as_json(self) -> dict:
        return {
            "id": self.id,
            "enabled": self.enabled,
            "disabled_reason": self.disabled_reason,
            "pending": self.pending,
            "oldest_pending_age_seconds": self.oldest_pending_age,
            "last_success_at": self.last_success_at,
            "consecutive_failures": self.consecutive_failures,
        }


async def webhook_states(relay) -> list[WebhookState]:
    """One per configured webhook, in the file's order (one journal read for them all)."""
    await relay.pending_counted.wait()  # a scrape just after the start waits for the count
    webhooks = relay.config.webhooks
    oldest = await relay.journal.oldest_pending([w.id for w in webhooks])
    runtime = await runtime_states(relay)
    now = relay.clock.now()
    stats = relay.dispatcher.stats
    if (url := relay.config.journal.url) is not None:
        from relay.journal import pg_views

        shared = await trio.to_thread.run_sync(pg_views.pending_counts, url)
    at_start, routed = relay.pending_at_start, relay.ingest_stats.routed
    states = []
    for webhook in webhooks:
        wid = webhook.id
        if url is not None:
            pending = shared.get(wid, 0)
        else:
            pending = max(0, at_start.get(wid, 0) + routed.get(wid, 0) - stats.finished(wid))
        since = oldest.get(wid)
        delivered = stats.webhooks.get(wid)
        on, why = enabled(webhook, runtime)
        states.append(
            WebhookState(
                id=wid,
                enabled=on,
                disabled_reason=why,
                pending=pending,
                oldest_pending_age=max(0.0, now - since) if since is not None else None,
                last_success_at=delivered.last_success if delivered else None,
                consecutive_failures=delivered.consecutive_failures if delivered else 0,
            )
        )
    return states
