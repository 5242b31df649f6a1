"""``rate = "100/s"`` on a webhook: a token bucket that paces its lane's attempts.

One bucket per lane, so that a webhook held to its rate (or slow, or dead) delays nothing but
its own deliveries. A worker that finds the bucket empty reserves the next token and sleeps
until it is due: workers queue for tokens in the order they asked, and no wake-up is spent on
asking again. On trio's clock, so that tests run it on MockClock.
"""

from __future__ import annotations

import trio


class TokenBucket:
    """``rate`` tokens a second, up to ``burst`` saved up while the webhook is quiet."""

    def __init__(self, rate: float, burst: float):
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._at = trio.current_time()

    async def take(self) -> None:
        """Return when this attempt may start."""
        now = trio.current_time()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        self._tokens -= 1  # reserved, even if the wait below is cancelled: it errs slower
        if self._tokens < 0:
            await trio.sleep(-self._tokens / self.rate)


def bucket_for(webhook) -> TokenBucket | None:
    return TokenBucket(webhook.rate, webhook.rate.burst) if webhook.rate is not None else None
