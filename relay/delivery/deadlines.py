"""The attempts' deadlines: a cancel scope per worker rather than per attempt, and one task per
lane that cancels a worker's scope when its attempt is overdue.

An attempt is cut off ``webhook.timeout`` seconds after its send starts. A cancel scope per
attempt would say that in one line, and was the largest single cost of the delivery process:
entering and leaving one for each attempt, in a worker among 64 on a saturated loop, cost ~18 µs
of CPU an attempt in situ (``CancelScope`` against none, 64 workers posting to an epoll receiver
on this 2-core VM: 43 against 25 µs a request), and setting a deadline on a long-lived scope and
clearing it again cost ~11 µs (trio's deadline heap, twice). So each worker enters one scope and
keeps it until it fires; an attempt's send writes a float as it starts (``Slot.arm``) and another
as it ends (``Slot.disarm``), and the lane's ``Watchdog`` sleeps until the earliest armed deadline
and cancels the scope of every worker whose deadline has passed. Under load it wakes about once
per timeout; a lane with nothing in flight sleeps until an attempt arms.

Only relay's own attempt (relay/delivery/flat.py) uses the slot. The general one keeps a scope
per attempt: its hooks may read the deadline (``attempt.deadline``, trio's effective deadline).

A spent scope is left for a new one: the worker concludes the attempt that was cut (its outcome:
"no response within 3 s") outside it, then enters the next (relay/delivery/lanes.py).
"""

from __future__ import annotations

import math

import trio


class Slot:
    """One worker's attempt clock: the scope its attempts run in, and the current attempt's
    deadline in trio time (``inf`` between attempts, and before the send starts)."""

    __slots__ = ("watchdog", "scope", "deadline")

    def __init__(self, watchdog: Watchdog):
        self.watchdog = watchdog
        self.scope = trio.CancelScope()
        self.deadline = math.inf

    def arm(self, timeout: float) -> float:
        """The send starts: the attempt is cut off ``timeout`` seconds from now, the deadline
        returned (trio time)."""
        self.deadline = deadline = trio.current_time() + timeout
        watchdog = self.watchdog
        if deadline < watchdog.sleeping_until:  # it is idle, or a reload shortened the timeout
            watchdog.wake.set()
        return deadline

    def disarm(self) -> None:
        self.deadline = math.inf

    @property
    def spent(self) -> bool:
        """Whether the watchdog cancelled this scope: nothing more may be awaited in it, and
        the worker enters a new one (``renew``)."""
        return self.scope.cancel_called

    def renew(self) -> None:
        self.scope = trio.CancelScope()


class Watchdog:
    """Cancels the scope of each worker whose attempt outlived its deadline."""

    def __init__(self):
        self.slots: list[Slot] = []
        self.wake = trio.Event()
        self.sleeping_until = math.inf

    def slot(self) -> Slot:
        slot = Slot(self)
        self.slots.append(slot)
        return slot

    def release(self, slot: Slot) -> None:
        self.slots.remove(slot)

    async def run(self) -> None:
        while True:
            self.wake = trio.Event()  # before looking, so that no arm is missed
            now = trio.current_time()
            earliest = math.inf
            for slot in self.slots:
                if slot.deadline <= now:
                    slot.deadline = math.inf
                    slot.scope.cancel()
                elif slot.deadline < earliest:
                    earliest = slot.deadline
            self.sleeping_until = earliest
            with trio.move_on_at(earliest):
                await self.wake.wait()
            self.sleeping_until = -math.inf  # awake: arms need not wake it
