"""``python -m relay`` and the frozen binary's entry point (scripts/build): the command line,
or one of relay's own child processes (relay/children.py), started before the command line is
imported so that a child loads only what it runs."""

import sys

from relay.children import DELIVERY, WRITER

if len(sys.argv) > 1 and sys.argv[1] in (WRITER, DELIVERY):
    child = sys.argv.pop(1)
    if child == WRITER:
        from relay.journal.writer import main
    else:
        from relay.delivery.process import main
    sys.exit(main())

from relay import frozen  # noqa: E402

if frozen.frozen():
    frozen.under_bootloader(sys.argv[1] if len(sys.argv) > 1 else None)

from relay.cli import main  # noqa: E402

sys.exit(main())
