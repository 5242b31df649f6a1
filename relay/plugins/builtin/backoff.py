"""The seed's retry schedule: 10 s, 100 s, 1000 s ... capped at 100 000 s, 3 tries by default.

Attempt n fails; the next one waits ``min(first * factor ** (n - 1), max)`` seconds, until
``tries`` attempts are spent. ``backoff.jitter`` (a fraction, 0 by default) spreads retries of
many deliveries that failed together.
"""

import random

from relay.plugins import hookimpl


def exponential(webhook, attempt, outcome):
    if attempt >= webhook.tries:
        return None
    delay = webhook.backoff.delay(attempt)
    if webhook.backoff.jitter:
        delay *= 1 + random.uniform(-webhook.backoff.jitter, webhook.backoff.jitter)
    return delay


@hookimpl
def register_retry_policies(register):
    register("exponential", exponential)
