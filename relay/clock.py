"""Wall-clock time read through trio's clock.

The journal stores wall-clock times (they must mean something after a restart); everything that
waits uses trio's clock. Deriving one from the other keeps them consistent, and lets tests drive
the whole schedule with trio's MockClock.
"""

import time

import trio


class Clock:
    def __init__(self):
        self._offset = time.time() - trio.current_time()

    def now(self) -> float:
        return trio.current_time() + self._offset

    def to_trio(self, wall: float) -> float:
        return wall - self._offset
