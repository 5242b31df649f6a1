"""What the journal's writes have come to: whether it is failing, and the fire-and-forget writes
that failed, kept until they are written.

Why keep them: a fire-and-forget write (an attempt's outcome, deliveries handed back to sleep in
the journal) is queued and forgotten, and the dispatcher has let its delivery go. If it fails (a
full disk), the row still says the delivery is held in this run's memory, where it no longer
is: nothing would attempt it until a restart. Seen: a disk that filled and then had room again
left 144 of 410 acknowledged events pending on disk, never attempted. So the committer keeps
each one that failed and sends it again, ``RETRY_FIRST`` seconds later, doubling up to
``RETRY_MAX``, until it is written; then whoever listens (the scheduler) looks in the journal
again, as what was written may be due.

Why this rather than a pass that re-reads the journal for this run's deliveries that memory
lost: the kept write carries what happened (a delivered delivery is recorded delivered, never
sent twice; the attempt's number and error stay recorded), and nothing has to know what memory
holds, which is not one place (deliveries on their way to the delivery process are in a pipe).
A delivery memory let go has one such write at most, so they are bounded by what was pending.

Each kept write goes in a batch alone, never merged: one that can never be written (a value
SQLite cannot bind) fails alone, again and again, and logs each time, but holds nothing else up.

``failing``: the last failure's text, while no write has succeeded since; ``/healthz`` answers
503 meanwhile. While failing with nothing kept, each retry is a probe (one small row written),
so that the journal knows when the disk has room again without waiting for traffic.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import trio
from attrs import define

log = logging.getLogger("relay.journal.committer")

RETRY_FIRST = 0.5  # seconds before a failed write is sent again
RETRY_MAX = 10.0
# Operations that write whenever they succeed; the others write only when they found something
# (a claim of nothing succeeds on a full disk, and says nothing about it).
WRITES = frozenset({"append", "append_ordered", "record_attempts", "put_to_sleep", "bind", "probe"})


@define
class Op:
    name: str
    args: tuple
    done: trio.Event | None  # None: fire-and-forget
    result: object = None
    error: str | None = None
    alone: bool = False  # kept after a failure: never merged with another


class Health:
    def __init__(self):
        self.failing: str | None = None
        self.kept: list[Op] = []
        self.retry_at = math.inf  # trio time of the next retry (or probe)
        self._delay = RETRY_FIRST
        self.listeners: list[Callable[[], None]] = []
        self.closing = False  # the queue closed: the kept writes had their last try

    def due(self) -> list[Op]:
        """The kept writes, to send again now; a probe when there are none but the journal is
        failing."""
        self.retry_at = math.inf
        kept, self.kept = self.kept, []
        if not kept and self.failing is not None:
            return [Op("probe", (time.time(),), None, alone=True)]
        return kept

    def settle(self, owners: list[list[Op]], results: list[tuple[bool, object]]) -> None:
        """Hand each op its result; keep the fire-and-forget ones that failed, and tell the
        listeners when some that had failed are written."""
        failed = rewritten = 0
        for op_group, (ok, result) in zip(owners, results, strict=True):
            for op in op_group:
                if ok:
                    op.result = result
                    if _wrote(op.name, result):
                        self.failing = None
                    rewritten += op.alone and op.name != "probe"
                else:
                    op.error = self.failing = result
                    if op.done is None and op.name != "probe":
                        op.alone = True
                        self.kept.append(op)
                        failed += 1
                if op.done is not None:
                    op.done.set()
        if failed:
            log.error(
                "journal: %d writes failed (%s); kept, and sent again in %g s",
                failed,
                self.failing,
                self._delay,
            )
        if rewritten:
            log.warning("journal: %d writes that had failed are written", rewritten)
            for listener in self.listeners:
                listener()
        if self.kept or self.failing is not None:
            if self.retry_at == math.inf:
                self.retry_at = trio.current_time() + self._delay
                self._delay = min(self._delay * 2, RETRY_MAX)
        else:
            self._delay = RETRY_FIRST

    def lost(self) -> None:
        """The journal closes with writes still kept: their deliveries stay pending, held by
        this run, and the next run recovers them."""
        if self.kept:
            log.error(
                "journal: %d writes could not be made (%s); their deliveries resume at the next"
                " start",
                len(self.kept),
                self.failing,
            )


def _wrote(name: str, result: object) -> bool:
    if name in WRITES:
        return True
    if name == "prune":
        return result[1] > 0
    return name in ("claim_due", "recover", "expire_bindings") and bool(result)
