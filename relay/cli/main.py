"""The ``relay`` command.

Each subcommand is a function ``cmd_NAME(args) -> exit status`` with a function that declares its
arguments, in a module per group of commands; ``COMMANDS`` lists them.
"""

from __future__ import annotations

import argparse
import sys

from relay.cli import checking, deliveries, running, webhooks
from relay.cli.common import CommandError, add_config_option

COMMANDS = {
    "run": (running.cmd_run, running.add_run_arguments),
    "check": (checking.cmd_check, add_config_option),
    "reload": (running.cmd_reload, add_config_option),
    "deliveries": (deliveries.cmd_deliveries, deliveries.add_arguments),
    "plugins": (checking.cmd_plugins, add_config_option),
    "webhooks": (webhooks.cmd_webhooks, webhooks.add_arguments),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="relay", description="A durable webhook relay.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name, (function, add_arguments) in COMMANDS.items():
        add_arguments(subparsers.add_parser(name, help=function.__doc__))
    args = parser.parse_args(argv)
    function, _ = COMMANDS[args.command]
    try:
        return function(args)
    except CommandError as e:
        for line in e.lines:
            print(line, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
