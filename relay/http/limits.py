"""How many connections the server may hold, and a log line that cannot become a log storm.

Every connection is a file descriptor, and so is everything else the process needs to keep
working: the journal's pipes (or its SQLite files), the delivery client's connections, the
listening sockets. A server that accepts until the kernel says EMFILE has starved those first,
and then cannot accept anyone either. So the server raises its soft open-files limit to the hard
limit (a process may, unprivileged), and holds at most that limit less a reserve; at the cap it
closes idle connections rather than refuse a newcomer (relay/http/server.py).
"""

from __future__ import annotations

import logging
import math
import resource
from pathlib import Path

log = logging.getLogger(__name__)

# Descriptors the relay's process needs besides its connections, measured at ~20 with the journal
# writer and the delivery process running (stdio, epoll, trio's wakeup pair, two listeners, the
# children's pipes and pidfds, the log): 64 leaves room for SQLite's three files, plugins and a
# reload. The daemon adds what delivery in this process holds (relay/daemon.py).
RESERVE = 64
# Whatever the limit: an idle connection costs ~10 KB of memory (its task, buffers, socket), and
# a sidecar's gateway needs tens. At the cap idle connections are closed, so this bounds memory,
# not service.
MAX_CONNECTIONS = 10_000


def raise_open_files_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit; the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:  # Linux refuses more than fs.nr_open
        target = _nr_open() or soft
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as e:
            log.debug("cannot raise the open files limit from %d to %d: %s", soft, target, e)
    log.debug("open files limit: %s (hard limit %s)", soft, _limit_text(hard))
    return MAX_CONNECTIONS * 2 if soft == resource.RLIM_INFINITY else soft


def connection_cap(open_files: int, reserve: int) -> int:
    """The connections a server may hold: the limit less ``reserve``, but at least a quarter of
    it (a tiny limit must still serve someone), and at most MAX_CONNECTIONS."""
    return max(1, min(MAX_CONNECTIONS, max(open_files - reserve, open_files // 4)))


def _nr_open() -> int | None:
    try:
        return int(Path("/proc/sys/fs/nr_open").read_text())
    except (OSError, ValueError):
        return None


def _limit_text(limit: int) -> str:
    return "unlimited" if limit == resource.RLIM_INFINITY else str(limit)


class Throttled:
    """A warning logged at once, then at most once per ``interval`` seconds with how often it
    happened meanwhile: a thousand failed accepts are one line, not a thousand tracebacks."""

    def __init__(self, interval: float, logger: logging.Logger = log):
        self.interval = interval
        self.log = logger
        self.count = 0
        self.message = ""
        self.logged_at = -math.inf

    def note(self, now: float, message: str) -> None:
        self.count += 1
        self.message = message
        self.flush(now)

    def flush(self, now: float) -> None:
        """Log what was noted, if the interval has passed since the last line."""
        if self.count and now - self.logged_at >= self.interval:
            if self.count > 1:
                elapsed = now - self.logged_at
                self.log.warning("%s (%d times in %.0f s)", self.message, self.count, elapsed)
            else:
                self.log.warning("%s", self.message)
            self.count = 0
            self.logged_at = now
