"""Which webhooks are switched off, and why: the journal's ``webhook_state`` rows, a webhook's
``enabled = false``, a 410 Gone, and ``disable_after`` (failing with no success for so long).

A disabled webhook's deliveries stay pending and asleep in the journal: the scheduler claims
none for it, and its lane puts back whatever reaches it, unattempted (tries are not spent). Its
lane resumes when it is enabled again (``relay webhooks enable``, or a reload that reads the
journal's rows: see relay/journal/states.py).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

from relay.config import Webhook
from relay.journal.states import WebhookState

log = logging.getLogger(__name__)


class Health:
    def __init__(self):
        self.disabled: dict[str, WebhookState] = {}  # from the journal: enabled false
        # Wall time of the first failed attempt since each webhook's last success.
        self.failing_since: dict[str, float] = {}

    def enabled(self, webhook: Webhook) -> bool:
        return webhook.enabled and webhook.id not in self.disabled

    def load(self, states: dict[str, WebhookState]) -> None:
        self.disabled = {w: s for w, s in states.items() if not s.enabled}
        for webhook_id in states.keys() - self.disabled.keys():
            self.failing_since.pop(webhook_id, None)  # enabled again: its clock starts anew

    def set(self, state: WebhookState) -> None:
        if state.enabled:
            self.disabled.pop(state.webhook_id, None)
            self.failing_since.pop(state.webhook_id, None)
        else:
            self.disabled[state.webhook_id] = state

    def succeeded(self, webhook: Webhook) -> None:
        if self.failing_since:
            self.failing_since.pop(webhook.id, None)

    def failed(self, webhook: Webhook, url: str | None, status: int | None, at: float):
        """Why this failure disables ``webhook`` (None: it does not)."""
        since = self.failing_since.setdefault(webhook.id, at)
        if status == 410:
            return f"410 Gone from {without_query(url or webhook.url)}"
        if webhook.disable_after is not None and at - since >= webhook.disable_after:
            started = datetime.fromtimestamp(since, UTC).isoformat(timespec="seconds")
            return f"failing since {started.replace('+00:00', 'Z')}"
        return None


def without_query(url: str) -> str:
    """The URL as far as its path: a query may carry a token."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(an invalid URL)"
    netloc = parts.hostname or ""
    if parts.port is not None:
        netloc = f"{netloc}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
