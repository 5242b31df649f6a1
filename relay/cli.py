"""The ``relay`` command: run the daemon, check a configuration."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import trio

from relay import config as config_module
from relay.plugins import Components, PluginError, make_plugin_manager


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="relay", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("run", "run the relay"),
        ("check", "validate the configuration and list the webhooks it defines"),
    ):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("--config", "-c", type=Path, default=Path("relay.toml"))
    args = parser.parse_args(argv)
    try:
        config = config_module.load(args.config)
        pm = make_plugin_manager(config)
        components = Components.collect(pm)
        components.check(config)
    except config_module.ConfigError as e:
        for line in e.errors:
            print(line, file=sys.stderr)
        return 2
    except PluginError as e:
        print(f"{args.config}: {e}", file=sys.stderr)
        return 2
    if args.command == "check":
        return check(config)
    return run(config, pm, components)


def check(config) -> int:
    print(f"{config.path}: ok, {len(config.webhooks)} webhook(s)")
    for w in config.webhooks:
        print(
            f"  {w.id}: {w.url}  events={','.join(w.events)}  signer={w.signer}  "
            f"tries={w.tries} timeout={w.timeout:g}s"
        )
    return 0


def run(config, pm, components) -> int:
    from relay.daemon import Relay, serve

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


if __name__ == "__main__":
    sys.exit(main())
