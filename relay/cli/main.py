"""The ``relay`` command.

Each subcommand is a function ``cmd_NAME(args) -> exit status`` with a function that declares its
arguments, in a module per group of commands; ``COMMANDS`` lists them.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from relay import config as config_module
from relay.cli import (
    checking,
    deliveries,
    health,
    journal,
    listen,
    replay,
    running,
    send,
    status,
    webhooks,
)
from relay.cli.common import CommandError, add_config_option
from relay.journal import JournalError

COMMANDS = {
    "run": (running.cmd_run, running.add_run_arguments),
    "check": (checking.cmd_check, add_config_option),
    "reload": (running.cmd_reload, add_config_option),
    "send": (send.cmd_send, send.add_arguments),
    "listen": (listen.cmd_listen, listen.add_arguments),
    "status": (status.cmd_status, status.add_arguments),
    "health": (health.cmd_health, health.add_arguments),
    "deliveries": (deliveries.cmd_deliveries, deliveries.add_arguments),
    "replay": (replay.cmd_replay, replay.add_arguments),
    "plugins": (checking.cmd_plugins, add_config_option),
    "webhooks": (webhooks.cmd_webhooks, webhooks.add_arguments),
    "journal": (journal.cmd_journal, journal.add_arguments),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="relay", description="A durable webhook relay.")
    parser.add_argument("--version", action=_Version)
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
        return e.status
    except config_module.ConfigError as e:  # a command that reads relay.toml without load()
        for line in e.errors:
            print(line, file=sys.stderr)
        return 2
    except JournalError as e:  # it names the journal (a database's URL, its password masked)
        print(f"relay {args.command}: cannot read the journal: {e}", file=sys.stderr)
        return 1


class _Version(argparse.Action):
    """``--version``, worked out only when asked for: it may run git."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(
            option_strings,
            dest,
            nargs=0,
            default=argparse.SUPPRESS,
            help="print relay's version (and its git commit, in a checkout) and exit",
        )

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_text())
        parser.exit()


def version_text() -> str:
    """``relay 0.1.0``, and ``(git 1bc32f9)`` after it when the package runs from a git
    checkout or from a binary built from one (scripts/build bakes the commit in), so that a bug
    report names the code that ran, not only the release it grew from."""
    from importlib import metadata

    import relay

    try:
        version = metadata.version("relay")
    except metadata.PackageNotFoundError:  # run from a tree that was never installed
        version = relay.__version__
    package = Path(relay.__file__).resolve().parent
    commit = _built_commit(package) if getattr(sys, "frozen", False) else _git_commit(package)
    return f"relay {version}" + (f" (git {commit})" if commit else "")


def _built_commit(package: Path) -> str | None:
    """The commit scripts/build wrote into the binary (relay/COMMIT), if it was built in a
    checkout."""
    try:
        return (package / "COMMIT").read_text().strip() or None
    except OSError:
        return None


def _git_commit(package: Path) -> str | None:
    """The short hash of HEAD when ``package`` is the ``relay/`` folder of a git work tree;
    None without git, outside a checkout, or when the checkout around it is another project's
    (a virtualenv inside someone's repository)."""
    try:
        found = subprocess.run(
            ["git", "rev-parse", "--show-toplevel", "--short", "HEAD"],
            cwd=package,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = found.stdout.split()
    if found.returncode != 0 or len(lines) != 2:
        return None
    top, commit = lines
    return commit if Path(top).resolve() == package.parent else None


if __name__ == "__main__":
    sys.exit(main())
