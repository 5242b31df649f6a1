"""``relay webhooks add`` and ``relay webhooks list``: compose webhooks without hand-editing TOML;
``relay webhooks render`` (relay/cli/render.py) shows what one would send.

``add`` edits relay.toml with tomlkit because tomllib only reads, and rewriting the file from
parsed data would drop the comments and layout the user keeps there. The edited text is checked
by the same code as ``relay check`` (configuration and plugins) before it replaces the file, so a
bad webhook never reaches a running relay's next reload.
"""

from __future__ import annotations

import argparse
import os
import secrets
import stat
import sys
from pathlib import Path

from relay import config as config_module
from relay.cli import render, webhook_state
from relay.cli.common import CommandError, add_config_option, load
from relay.plugins import Components, PluginError, make_plugin_manager

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
FORMATS = ("json", "form", "multipart")


def add_arguments(parser: argparse.ArgumentParser) -> None:

    actions = parser.add_subparsers(dest="webhooks_command", required=True)
    add = actions.add_parser("add", help="append a webhook to the configuration file")
    add_config_option(add)
    add.add_argument("--id", help="default: a generated one, printed")
    add.add_argument("--url", required=True, help="may hold @{{placeholders}} after the host")
    add.add_argument("--name", help="what the webhook is for")
    add.add_argument("--method", type=str.upper, choices=METHODS, help="default: POST")
    add.add_argument("--header", action="append", default=[], type=_pair, metavar="NAME=TEMPLATE")
    add.add_argument("--body-format", choices=FORMATS, help="default: json")
    add.add_argument(
        "--body-field", action="append", default=[], type=_pair, metavar="KEY=TEMPLATE"
    )
    add.add_argument("--on-missing", choices=("empty", "fail"), help="default: empty")
    add.add_argument(
        "--events",
        action="append",
        default=[],
        metavar="PATTERN[,PATTERN]",
        help="event patterns to receive; default: only events sent with this webhook's id",
    )
    listing = actions.add_parser("list", help="show the webhooks of the configuration file")
    add_config_option(listing)
    shown = actions.add_parser(
        "render", help="print the exact request a webhook would send for an event; sends nothing"
    )
    add_config_option(shown)
    render.add_arguments(shown)
    webhook_state.add_arguments(actions)


def cmd_webhooks(args) -> int:
    """add a (compose) webhook to the configuration file, list them, or render one's request"""
    commands = {"add": add_webhook, "list": list_webhooks, "render": render.cmd_render}
    return commands.get(args.webhooks_command, webhook_state.cmd)(args)


def _pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    # Not quoted: "Authorization: Bearer ..." (a colon for the "=") is a header and its token.
    if not sep:
        raise argparse.ArgumentTypeError("expected KEY=VALUE, got no '='")
    if not key:
        raise argparse.ArgumentTypeError("expected KEY=VALUE, got nothing before the '='")
    return key, value


def read_document(config: Path):
    """relay.toml as tomlkit reads it (comments and layout kept), and its resolved path."""
    import tomlkit

    path = config.resolve()
    try:
        return tomlkit.parse(path.read_text(encoding="utf-8")), path
    except OSError as e:
        raise CommandError(f"{config}: cannot read: {e.strerror}") from None
    except tomlkit.exceptions.ParseError as e:
        raise CommandError(f"{path.name}: not valid TOML: {e}") from None


def add_webhook(args) -> int:
    import tomlkit

    document, path = read_document(args.config)

    webhooks = document.get("webhooks")
    if webhooks is None:
        webhooks = document["webhooks"] = tomlkit.aot()
    elif not isinstance(webhooks, tomlkit.items.AoT):
        raise CommandError(f"{path.name}: webhooks: expected an array of tables ([[webhooks]])")
    taken = {w.get("id") for w in webhooks}
    webhook_id = args.id or _new_id(taken)
    webhooks.append(_table(webhook_id, args))

    text = tomlkit.dumps(document)
    _validate(text, path)
    _replace(path, text)
    print(webhook_id)
    events = (
        ", ".join(_events(args.events)) or f'only events sent with "webhook_id": "{webhook_id}"'
    )
    print(
        f"added to {path.name} (events: {events}); a running relay picks it up on reload "
        "(relay reload, or SIGHUP)",
        file=sys.stderr,
    )
    return 0


def _new_id(taken: set) -> str:
    while (candidate := f"wh_{secrets.token_hex(6)}") in taken:
        pass
    return candidate


def _events(values: list[str]) -> list[str]:
    return [p.strip() for value in values for p in value.split(",") if p.strip()]


def _table(webhook_id: str, args):
    """The new ``[[webhooks]]`` entry, keys in the order a person would write them."""
    import tomlkit

    table = tomlkit.table()
    table["id"] = webhook_id
    if args.name:
        table["name"] = args.name
    table["events"] = _events(args.events)
    if args.method:
        table["method"] = args.method
    table["url"] = args.url
    if args.header:
        table["headers"] = _inline(dict(args.header))
    if args.on_missing:
        table["on_missing"] = args.on_missing
    if args.body_format:
        table["body_format"] = args.body_format
    if args.body_field:
        fields: dict[str, str | list[str]] = {}
        for key, value in args.body_field:  # a repeated key is an array (repeated form field)
            old = fields.get(key)
            fields[key] = (
                value if old is None else [*([old] if isinstance(old, str) else old), value]
            )
        table["body"] = _inline(fields)
    table.add(tomlkit.nl())  # a blank line before whatever table follows
    return table


def _inline(values: dict):
    import tomlkit

    table = tomlkit.inline_table()
    table.update(values)
    return table


def _validate(text: str, path: Path) -> None:
    """What ``relay check`` would say about the edited file, before it is written."""

    try:
        config = config_module.loads(text, path)
        Components.collect(make_plugin_manager(config)).bind(config)
    except config_module.ConfigError as e:
        raise CommandError(*e.errors, f"{path.name} is unchanged") from None
    except PluginError as e:
        raise CommandError(str(e), f"{path.name} is unchanged") from None


def _replace(path: Path, text: str) -> None:
    """Atomically, so a relay watching the file never reads half of it; same permissions, as
    the file may hold secrets."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text, encoding="utf-8")
    try:
        os.chmod(temporary, stat.S_IMODE(path.stat().st_mode))
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def list_webhooks(args) -> int:

    config, _, _ = load(args.config)
    for w in config.webhooks:
        method = w.template.method if w.template is not None else "POST"
        kind = "compose" if w.template is not None else "plain"
        events = ",".join(w.events) or "(webhook_id only)"
        print(f"{w.id}  {kind}  {method} {w.url}  events={events}")
        if w.name:
            print(f"    {w.name}")
    return 0
