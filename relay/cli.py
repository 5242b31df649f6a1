"""The ``relay`` command.

Each subcommand is a function ``cmd_NAME(args) -> exit status`` with an ``add_NAME(parser)`` that
declares its arguments; ``COMMANDS`` lists them.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import trio

from relay import config as config_module
from relay.plugins import Components, PluginError, make_plugin_manager


class CommandError(Exception):
    """Ends a command with these lines on stderr and exit status 2."""

    def __init__(self, *lines: str):
        self.lines = lines


def load(config_path: Path):
    """The configuration with its plugins loaded and option tables bound."""
    try:
        config = config_module.load(config_path)
        pm = make_plugin_manager(config)
        components = Components.collect(pm)
        return components.bind(config), pm, components
    except config_module.ConfigError as e:
        raise CommandError(*e.errors) from None
    except PluginError as e:
        raise CommandError(f"{config_path.name}: {e}") from None


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", "-c", type=Path, default=Path("relay.toml"), help="default: relay.toml"
    )


def cmd_check(args) -> int:
    """validate the configuration and list the webhooks it defines"""
    config, _, _ = load(args.config)
    print(f"{config.path.name}: ok, {len(config.webhooks)} webhook(s)")
    for w in config.webhooks:
        print(
            f"  {w.id}: {w.url}  events={','.join(w.events)}  signer={w.signer}  "
            f"tries={w.tries} timeout={w.timeout:g}s"
        )
    return 0


def cmd_run(args) -> int:
    """run the relay until SIGTERM or SIGINT"""
    from relay.daemon import Relay, serve

    config, pm, components = load(args.config)
    logging.basicConfig(
        level=config.relay.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        trio.run(serve, Relay(config, pm, components))
    except OSError as e:
        logging.getLogger("relay").error("cannot start: %s", e)
        return 1
    return 0


COMMANDS = {
    "run": (cmd_run, add_config_option),
    "check": (cmd_check, add_config_option),
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
