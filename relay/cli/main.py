"""The ``relay`` command.

Each subcommand is a function ``cmd_NAME(args) -> exit status`` with an ``add_NAME(parser)`` that
declares its arguments; ``COMMANDS`` lists them.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import httpx
import trio

from relay import config as config_module
from relay import webhooks_cli
from relay.journal import JournalError
from relay.plugins import PluginError, load_with_plugins


class CommandError(Exception):
    """Ends a command with these lines on stderr and exit status 2."""

    def __init__(self, *lines: str):
        self.lines = lines


def load(config_path: Path):
    """The configuration with its plugins loaded and option tables bound."""
    try:
        return load_with_plugins(config_path)
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
    from relay.remote_dispatch import DeliveryProcessError

    config, pm, components = load(args.config)
    config_module.configure_logging(config)
    log = logging.getLogger("relay")
    status = 0
    try:
        trio.run(serve, Relay(config, pm, components))
    except* OSError as group:
        log.error("cannot start: %s", _first(group))
        status = 1
    except* (JournalError, DeliveryProcessError) as group:
        log.error("stopping: %s", _first(group))
        status = 1
    return status


def cmd_reload(args) -> int:
    """ask the running relay to reload its configuration (as SIGHUP does)"""
    config = config_module.load_for_admin(args.config)
    try:
        response = _admin_request(config, "POST", "/reload")
    except httpx.HTTPError as e:
        raise CommandError(f"cannot reach the relay of {args.config}: {e}") from None
    answer = response.json()
    if response.status_code != 200:
        print(answer.get("error", response.text), file=sys.stderr)
        for line in answer.get("problems", []):
            print(f"  {line}", file=sys.stderr)
        return 1
    print(
        f"reloaded: {len(answer['webhooks'])} webhook(s); "
        f"added: {', '.join(answer['added']) or 'none'}; "
        f"removed: {', '.join(answer['removed']) or 'none'}"
    )
    if answer["restart_needed"]:
        print(f"restart to apply: {', '.join(answer['restart_needed'])}")
    return 0


def _admin_request(config, method: str, path: str) -> httpx.Response:
    """Reach the daemon on its Unix socket when it has one, else on its TCP port."""
    relay = config.relay
    if relay.socket is not None:
        transport = httpx.HTTPTransport(uds=str(relay.socket))
        base = "http://relay"
    elif relay.listen is not None:
        transport, base = None, f"http://{relay.listen}"
    else:
        raise CommandError(f"{config.path.name}: [relay] has neither socket nor listen")
    with httpx.Client(transport=transport, base_url=base, timeout=30) as client:
        return client.request(method, path)


def add_deliveries_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_option(parser)
    parser.add_argument(
        "--state",
        choices=("pending", "parked", "failed", "delivered", "all"),
        default="pending",
        help="parked: pending for a webhook no longer in the configuration (default: pending)",
    )
    parser.add_argument("--webhook", help="only deliveries to this webhook id")
    parser.add_argument("--limit", type=int, default=50)


def cmd_deliveries(args) -> int:
    """list deliveries from the journal: pending, parked, failed or delivered"""
    from relay.journal import list_deliveries

    config = config_module.load_for_admin(args.config)
    known = {w.id for w in config.webhooks}
    rows = list_deliveries(
        config.relay.state_dir,
        state=args.state,
        webhook_id=args.webhook,
        known_webhooks=known,
        limit=args.limit,
    )
    now = time.time()
    print(f"{'delivery':32}  {'webhook':16}  {'event':24}  {'state':9}  tries  {'next':>8}  last")
    for row in rows:
        state = "parked" if row.state == "pending" and row.webhook_id not in known else row.state
        if row.next_at is None:
            due = "now" if row.state == "pending" else "-"
        else:
            due = f"{max(0, row.next_at - now):.0f}s"
        print(
            f"{row.id:32}  {row.webhook_id:16}  {row.event:24}  {state:9}  {row.attempts:5}  "
            f"{due:>8}  {row.last_outcome or ''}"
        )
    return 0


KIND_NAMES = {
    "signers": "signer",
    "transports": "transport",
    "retry_policies": "retry policy",
    "webhook_options": "webhook option",
}


def cmd_plugins(args) -> int:
    """list the plugins loaded, where from, and the hooks and names each provides"""
    config, pm, components = load(args.config)
    for name, plugin in pm.list_name_plugin():
        source = getattr(plugin, "__file__", None) or type(plugin).__module__
        hooks = sorted(caller.name for caller in pm.get_hookcallers(plugin) or ())
        provides = sorted(
            f"{KIND_NAMES[kind]} {component}"
            for (kind, component), owner in components.owners.items()
            if owner == name
        )
        print(f"{name}\n  from: {source}\n  hooks: {', '.join(hooks)}")
        if provides:
            print(f"  provides: {', '.join(provides)}")
    return 0


def _first(error: BaseException) -> BaseException:
    """The first exception inside nested exception groups (what trio's nurseries raise)."""
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


COMMANDS = {
    "run": (cmd_run, add_config_option),
    "check": (cmd_check, add_config_option),
    "reload": (cmd_reload, add_config_option),
    "deliveries": (cmd_deliveries, add_deliveries_arguments),
    "plugins": (cmd_plugins, add_config_option),
    "webhooks": (webhooks_cli.cmd_webhooks, webhooks_cli.add_arguments),
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
