"""A webhook's recent attempts, for the web console: success rate and p50/p99 of their durations
over the last 5 minutes and the last hour, and attempts per second for its live chart.

Aggregated as they happen, never kept one by one: an attempt adds to the slot of the second it
ended in (a count, a count of the delivered, and a histogram of durations in logarithmic bins,
~12% wide), and a second slot older than five minutes is folded into its minute's slot, kept
for an hour. So memory is bounded (at most 300 second slots and 60 minute slots a webhook,
whatever the traffic) and an attempt costs a few dict and list operations (~0.3 µs).

The delivery process records; its report carries the second slots that changed since the last
one (``changes``), and the relay's copy takes them in (``merge``), replacing a slot it had for
the same second, so that a report arriving twice or late counts nothing twice. The percentiles
are a bin's geometric middle: within ~12% of the true value.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import deque

SECONDS = 300  # second slots kept: the 5-minute window, and the chart
MINUTES = 60  # minute slots kept: the hour
FLOOR = 1e-4  # seconds: bin 0 holds everything up to 0.1 ms
PER_DECADE = 10  # bins per factor of 10: each ~26% wide, its middle within ~12% of any value
BINS = 61  # up to 100 s; the last bin holds everything longer


# Where each bin but the first begins: a bisect (in C) finds a duration's bin.
BOUNDS = tuple(FLOOR * 10 ** (index / PER_DECADE) for index in range(1, BINS))


def bin_of(duration: float) -> int:
    return bisect_right(BOUNDS, duration)


def bin_middle(index: int) -> float:
    return FLOOR * 10 ** ((index + 0.5) / PER_DECADE)


class Recent:
    """One webhook's slots: ``[start, attempts, delivered, {bin: count}]``, oldest first."""

    __slots__ = ("seconds", "minutes", "_reported")

    def __init__(self):
        self.seconds: deque[list] = deque()
        self.minutes: deque[list] = deque()
        self._reported = 0  # the newest second slot at the last report: it may have grown since

    def add(self, ended_at: float, ok: bool, duration: float) -> None:
        second = int(ended_at)
        seconds = self.seconds
        # Attempts end nearly in order; one a little behind the newest slot (or a wall clock
        # stepped back) counts in the newest, which is at most a second off.
        slot = seconds[-1] if seconds else None
        if slot is None or slot[0] < second:
            slot = self._open(second)
        slot[1] += 1
        if ok:
            slot[2] += 1
        bins = slot[3]
        index = bisect_right(BOUNDS, duration)
        bins[index] = bins.get(index, 0) + 1

    def _open(self, second: int) -> list:
        slot = [second, 0, 0, {}]
        seconds = self.seconds
        seconds.append(slot)
        while seconds[0][0] <= second - SECONDS:
            self._fold(seconds.popleft())
        return slot

    def _fold(self, slot: list) -> None:
        minute = slot[0] // 60 * 60
        minutes = self.minutes
        if minutes and minutes[-1][0] == minute:
            into = minutes[-1]
        else:
            into = [minute, 0, 0, {}]
            minutes.append(into)
            while minutes[0][0] <= minute - MINUTES * 60:
                minutes.popleft()
        into[1] += slot[1]
        into[2] += slot[2]
        bins = into[3]
        for index, count in slot[3].items():
            bins[index] = bins.get(index, 0) + count

    # -- across the pipe ---------------------------------------------------------------------

    def changes(self) -> list[tuple]:
        """The second slots that changed since the last call (for the delivery process's
        report): the newest one then, which may have grown, and every one since."""
        reported = self._reported
        changed = []
        for slot in reversed(self.seconds):
            if slot[0] < reported:
                break
            changed.append((slot[0], slot[1], slot[2], dict(slot[3])))
        if self.seconds:
            self._reported = self.seconds[-1][0]
        changed.reverse()
        return changed

    def merge(self, slots: list[tuple]) -> None:
        """Take in a report's ``changes()``: each replaces the slot of its second."""
        seconds = self.seconds
        for second, attempts, delivered, bins in slots:
            slot = None
            for existing in reversed(seconds):  # the newest one or two, in practice
                if existing[0] <= second:
                    slot = existing if existing[0] == second else None
                    break
            if slot is None:
                if seconds and seconds[-1][0] > second:
                    continue  # older than what this side has moved on from: already folded
                slot = self._open(second)
            slot[1], slot[2], slot[3] = attempts, delivered, dict(bins)

    # -- reading -----------------------------------------------------------------------------

    def window(self, now: float, span: float) -> Window:
        """The attempts that ended in the last ``span`` seconds: to the second within the
        last five minutes, to the minute beyond (a minute slot counts whole when any of it
        is within ``span``)."""
        since = now - span
        slots = [slot for slot in self.seconds if slot[0] + 1 > since]
        if span > SECONDS:
            slots += [slot for slot in self.minutes if slot[0] + 60 > since]
        attempts = delivered = 0
        bins: dict[int, int] = {}
        for _, count, ok, histogram in slots:
            attempts += count
            delivered += ok
            for index, n in histogram.items():
                bins[index] = bins.get(index, 0) + n
        return Window(attempts, delivered, bins)

    def per_second(self, since: int) -> dict[int, tuple[int, int]]:
        """``{second: (attempts, delivered)}`` from ``since`` on."""
        found = {}
        for slot in reversed(self.seconds):
            if slot[0] < since:
                break
            found[slot[0]] = (slot[1], slot[2])
        return found


class Window:
    """What ``Recent.window`` found: counts and the durations' histogram."""

    __slots__ = ("attempts", "delivered", "_bins")

    def __init__(self, attempts: int, delivered: int, bins: dict[int, int]):
        self.attempts = attempts
        self.delivered = delivered
        self._bins = bins

    @property
    def success_rate(self) -> float | None:
        """Delivered attempts among all, 0 to 1; None when there were none."""
        return self.delivered / self.attempts if self.attempts else None

    def quantile(self, q: float) -> float | None:
        """The duration below which a share ``q`` of the attempts ended (seconds)."""
        if not self.attempts:
            return None
        rank = max(1, math.ceil(q * self.attempts))
        seen = 0
        for index in sorted(self._bins):
            seen += self._bins[index]
            if seen >= rank:
                return bin_middle(index)
        return bin_middle(max(self._bins))
