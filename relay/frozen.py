"""What running as the one-file binary (dist/relay, scripts/build) changes, and what relay does
about it.

PyInstaller's one-file binary is two processes: its bootloader unpacks the bundle into a
temporary directory, starts itself again as the Python process that runs relay, forwards that
process every signal it gets, and deletes the directory once it has exited. So:

- kill -9 of the bootloader (the process a supervisor started and knows) would leave relay
  running, orphaned and holding the state directory's lock, and the restart would fail. The
  Python process has the kernel SIGKILL it when the bootloader dies (PR_SET_PDEATHSIG); its own
  children then end as after any kill -9 of the relay (the journal writer commits the batch it
  has). The hidden children (relay/children.py) are not under a bootloader and keep outliving
  the relay as they do from a virtualenv.
- A signal sent to the whole process group (Ctrl-C in a terminal, ``kill -- -PGID``) would
  reach relay twice, directly and forwarded, and a second SIGINT or SIGTERM means "stop now,
  without the grace period". ``relay run`` moves to a process group of its own, so that each
  reaches it once, from the bootloader. (A supervisor that signals every process of a cgroup,
  systemd's default KillMode, cannot be told apart: docs/relay.service sets KillMode=mixed.)

Exports ``frozen`` and ``under_bootloader``.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def frozen() -> bool:
    """Whether this is the binary (PyInstaller sets ``sys.frozen``), not Python running relay."""
    return bool(getattr(sys, "frozen", False))


def under_bootloader(command: str | None) -> None:
    """Called first by the binary's top process (not its hidden children); ``command`` is the
    subcommand it runs (``run``, ``check`` ...)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        print(
            f"relay: warning: PR_SET_PDEATHSIG failed ({os.strerror(ctypes.get_errno())}):"
            " kill -9 of the binary's first process would not reach relay",
            file=sys.stderr,
        )
    if command == "run":
        try:
            os.setpgid(0, 0)
        except OSError:  # a session leader already (started by setsid): its own group
            pass
