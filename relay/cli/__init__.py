"""The ``relay`` command line: ``main`` (relay/cli/main.py) and a module per group of commands.

Exports ``main``.
"""

from relay.cli.main import main

__all__ = ["main"]
