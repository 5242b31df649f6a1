"""What attempts amounted to, per webhook: plain counters the admin listener's /metrics reads.

Plain numbers rather than prometheus_client's metrics, because attempts run in the delivery
process and /metrics is served by the relay: the delivery process counts here and sends what
changed with its periodic report (relay/delivery/process.py), and the relay's copy
(relay/delivery/remote.py) takes them in. With ``delivery = "inline"`` the relay reads the
dispatcher's own. The counts are totals since the process started (the relay's run): a report
replaces what the relay had for a webhook, so nothing is lost or counted twice however the
reports fall. Each webhook's recent attempts (relay/delivery/recent.py: the web console's
rates and percentiles over 5 minutes and an hour) go along, as the seconds that changed.

One attempt costs a dict lookup, a bisect and a few increments (~1 µs); nothing is formatted
or labelled until somebody scrapes.
"""

from __future__ import annotations

from bisect import bisect_left

from relay.delivery.recent import Recent
from relay.model import Outcome

OUTCOMES = ("delivered", "failed", "timeout", "error")  # how an attempt ended
FINAL_STATES = ("delivered", "failed")  # how a delivery ended, after its last attempt
# Upper bounds (seconds) of relay_attempt_duration_seconds' buckets: prometheus_client's
# defaults, which span loopback answers to the 3 s default timeout and past it.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
# How relay/delivery/attempt.py words an attempt cut off by the webhook's timeout.
TIMEOUT_PREFIX = "no response within "


def outcome_kind(outcome: Outcome) -> int:
    """The index in OUTCOMES: delivered (2xx), failed (another answer), timeout (none within
    the webhook's timeout), error (no answer: connection refused, a plugin failed ...)."""
    if outcome.ok:
        return 0
    if outcome.status is not None:
        return 1
    if outcome.error is not None and outcome.error.startswith(TIMEOUT_PREFIX):
        return 2
    return 3


class WebhookStats:
    """One webhook's totals. ``last_success``: wall time the last delivered attempt ended;
    ``consecutive_failures``: attempts that failed since (or since the start); ``last_error``:
    how the last failed attempt ended (Outcome.describe), at ``last_error_at``."""

    __slots__ = (
        "attempts",
        "finished",
        "buckets",
        "duration_sum",
        "last_success",
        "consecutive_failures",
        "last_error",
        "last_error_at",
        "recent",
    )

    def __init__(self):
        self.attempts = [0] * len(OUTCOMES)
        self.finished = [0] * len(FINAL_STATES)
        self.buckets = [0] * (len(DURATION_BUCKETS) + 1)  # not cumulative; the last is +Inf
        self.duration_sum = 0.0
        self.last_success: float | None = None
        self.consecutive_failures = 0
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.recent = Recent()

    def as_tuple(self) -> tuple:
        return (
            tuple(self.attempts),
            tuple(self.finished),
            tuple(self.buckets),
            self.duration_sum,
            self.last_success,
            self.consecutive_failures,
            self.last_error,
            self.last_error_at,
        )

    def update(self, values: tuple) -> None:
        """Take ``as_tuple()``'s totals of the other side (its recent slots go apart)."""
        attempts, finished, buckets, self.duration_sum, self.last_success, failures, *last = values
        self.attempts, self.finished = list(attempts), list(finished)
        self.buckets, self.consecutive_failures = list(buckets), failures
        self.last_error, self.last_error_at = last


class DeliveryStats:
    def __init__(self):
        self.webhooks: dict[str, WebhookStats] = {}
        self._changed: set[str] = set()

    def record(self, webhook_id: str, outcome: Outcome, *, final: bool, ended_at: float) -> None:
        """An attempt ended at ``ended_at`` (wall time); ``final``: it was the delivery's last."""
        stats = self.webhooks.get(webhook_id)
        if stats is None:
            stats = self.webhooks[webhook_id] = WebhookStats()
        kind = outcome_kind(outcome)
        stats.attempts[kind] += 1
        duration = outcome.duration
        stats.buckets[bisect_left(DURATION_BUCKETS, duration)] += 1
        stats.duration_sum += duration
        stats.recent.add(ended_at, kind == 0, duration)
        if kind == 0:
            stats.last_success = ended_at
            stats.consecutive_failures = 0
            if final:
                stats.finished[0] += 1
        else:
            stats.consecutive_failures += 1
            stats.last_error, stats.last_error_at = outcome.describe(), ended_at
            if final:
                stats.finished[1] += 1
        self._changed.add(webhook_id)

    def finished(self, webhook_id: str) -> int:
        """Deliveries to ``webhook_id`` that ended (delivered or failed for good) in this run."""
        stats = self.webhooks.get(webhook_id)
        return sum(stats.finished) if stats is not None else 0

    # -- across the pipe ---------------------------------------------------------------------

    def changes(self) -> dict[str, tuple]:
        """The totals of the webhooks that changed since the last call, and their recent
        seconds that changed (for the report)."""
        changed, self._changed = self._changed, set()
        webhooks = self.webhooks
        return {
            webhook_id: (webhooks[webhook_id].as_tuple(), webhooks[webhook_id].recent.changes())
            for webhook_id in changed
        }

    def merge(self, changes: dict[str, tuple]) -> None:
        """Take in a report's ``changes()``: its totals replace ours, its seconds our slots of
        the same seconds."""
        for webhook_id, (values, seconds) in changes.items():
            stats = self.webhooks.get(webhook_id)
            if stats is None:
                stats = self.webhooks[webhook_id] = WebhookStats()
            stats.update(values)
            stats.recent.merge(seconds)
