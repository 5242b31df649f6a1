"""The seed's retry schedule: 10 s, 100 s, 1000 s ... capped at 100 000 s, 3 tries by default.

Attempt n fails; the next one waits ``min(first * factor ** (n - 1), max)`` seconds, until
``tries`` attempts are spent. ``backoff.jitter`` (a fraction, 0 by default) spreads retries of
many deliveries that failed together. A 429 or 503 that says ``Retry-After`` waits at least
that long, and never past ``backoff.max``.
"""

import random

from relay.plugins import hookimpl


def exponential(webhook, attempt, outcome):
    if attempt >= webhook.tries:
        return None
    delay = webhook.backoff.delay(attempt)
    if webhook.backoff.jitter:
        delay *= 1 + random.uniform(-webhook.backoff.jitter, webhook.backoff.jitter)
    if outcome.retry_after is not None:
        delay = min(max(delay, outcome.retry_after), webhook.backoff.max)
    return delay


@hookimpl
def register_retry_policies(register):
    register("exponential", exponential)
