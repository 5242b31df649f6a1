"""The commands that start relay's own child processes: the journal writer
(relay/journal/writer.py) and the delivery process (relay/delivery/process.py).

Each is the same program again with a hidden subcommand, ``relay _journal-writer STATE_DIR`` or
``relay _delivery CONFIG PREVIOUS_RUN FD``, which relay/__main__.py runs before it imports the
command line. Frozen (dist/relay, scripts/build) there is no python to run with ``-m``:
``sys.executable`` is the binary itself, and the subcommand is its first argument. From a
virtualenv it is ``python -m relay _journal-writer ...``, the same subcommand, so every test
starts the children the way the binary does. Going through relay/__main__.py costs nothing
measurable (it imports no more than ``-m relay.journal.writer`` did: README, Shipping relay).

Exports ``WRITER`` and ``DELIVERY`` (the subcommands) and ``command``.
"""

from __future__ import annotations

import sys

WRITER = "_journal-writer"
DELIVERY = "_delivery"


def command(subcommand: str, *args: str) -> list[str]:
    """The argv that runs ``subcommand`` in a new process of this same relay."""
    if getattr(sys, "frozen", False):  # PyInstaller's one-file binary
        return [sys.executable, subcommand, *args]
    return [sys.executable, "-m", "relay", subcommand, *args]
