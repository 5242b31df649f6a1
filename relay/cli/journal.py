"""``relay journal check`` and ``relay journal salvage``: is the journal sound, and copying out of
a damaged one what can still be read (relay/journal/repair.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from relay import config as config_module
from relay.cli.common import CommandError, add_config_option
from relay.journal import FILENAME, check, salvage
from relay.journal.repair import SalvageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="journal_command", required=True)
    checking = commands.add_parser(
        "check",
        help="run every check a relay makes at start, and quick_check whatever the size",
    )
    add_config_option(checking)
    salvaging = commands.add_parser(
        "salvage", help="copy what is readable of a damaged journal into a new one"
    )
    salvaging.add_argument("source", type=Path, help=f"the damaged {FILENAME} (or its directory)")
    salvaging.add_argument("dest_dir", type=Path, help="a new state_dir for the copy")


def cmd_journal(args) -> int:
    """check the journal, or salvage what is readable of a damaged one"""
    if args.journal_command == "check":
        config = config_module.load_for_admin(args.config)
        ok, lines = check(config.relay.state_dir)
        for line in lines:
            print(line, file=sys.stdout if ok else sys.stderr)
        return 0 if ok else 1
    source = args.source / FILENAME if args.source.is_dir() else args.source
    try:
        report = salvage(source, args.dest_dir)
    except SalvageError as e:
        raise CommandError(str(e), status=1) from None
    for line in report.lines():
        print(line)
    dest = args.dest_dir.absolute()
    print(f'salvaged into {dest / FILENAME}; to use it, set [relay] state_dir = "{dest}"')
    return 0
