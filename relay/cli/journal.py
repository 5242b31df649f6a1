"""``relay journal check``, ``migrate`` and ``salvage``: is the journal sound, bringing its schema
up to this relay's, and copying out of a damaged one what can still be read
(relay/journal/repair.py). On PostgreSQL (``[journal] url``) check and migrate run against the
database (relay/journal/pg_views.py); salvage is SQLite's."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from relay import config as config_module
from relay.cli.common import CommandError, add_config_option
from relay.journal import FILENAME, check, salvage
from relay.journal.engines import masked, scrub
from relay.journal.repair import SalvageError
from relay.journal.schema import SCHEMA_VERSION


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="journal_command", required=True)
    checking = commands.add_parser(
        "check",
        help="run every check a relay makes at start, and quick_check whatever the size",
    )
    add_config_option(checking)
    migrating = commands.add_parser(
        "migrate",
        help="create the journal's schema, or bring it up to this relay's (a relay that starts"
        " does it too)",
    )
    add_config_option(migrating)
    salvaging = commands.add_parser(
        "salvage", help="copy what is readable of a damaged journal into a new one"
    )
    salvaging.add_argument("source", type=Path, help=f"the damaged {FILENAME} (or its directory)")
    salvaging.add_argument("dest_dir", type=Path, help="a new state_dir for the copy")


def cmd_journal(args) -> int:
    """check the journal, or salvage what is readable of a damaged one"""
    if args.journal_command == "migrate":
        return _migrate(config_module.load_for_admin(args.config))
    if args.journal_command == "check":
        config = config_module.load_for_admin(args.config)
        if config.journal.url is not None:
            from relay.journal.pg_views import check as check_database

            ok, lines = check_database(config.journal.url)
        else:
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


def _migrate(config) -> int:
    url = config.journal.url
    try:
        if url is None:
            from relay.journal.schema import connect

            connect(config.relay.state_dir, start_run=False).close()  # migrates as it opens
            where = str((config.relay.state_dir / FILENAME).absolute())
            before = after = None
        else:
            from relay.journal.pg_views import migrate_url

            before, after = migrate_url(url)
            where = masked(url)
    except Exception as e:  # noqa: BLE001 - sqlite3, psycopg, OSError, SchemaError: say it
        raise CommandError(scrub(str(e), url), status=1) from None
    if before is None:
        print(f"{where}: at schema {SCHEMA_VERSION}")
    elif before == after:
        print(f"{where}: at schema {after} already")
    else:
        print(f"{where}: schema {before or 'none'} -> {after}")
    return 0
