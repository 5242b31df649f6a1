"""One relay per state_dir, for the life of its process.

Two relays on one journal would each recover the other's deliveries in flight and send them
twice. The lock is ``fcntl.flock`` on ``state_dir/relay.lock``: the kernel drops it when the
process ends, however it ends (kill -9 included), so a crashed relay never leaves a stale lock
to clean up by hand. The file holds the holder's pid, for the message the next one prints.
Child processes do not inherit it (trio closes their other descriptors).
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path

FILENAME = "relay.lock"


class StateDirLocked(Exception):
    """Another relay holds this state_dir."""


@contextmanager
def hold(state_dir: Path):
    """Hold the state_dir's lock inside the ``with``; raise StateDirLocked when another
    process holds it."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / FILENAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            raise StateDirLocked(
                f"{state_dir} is in use by another relay (pid {holder}); "
                "one relay per state_dir ([relay] state_dir)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
