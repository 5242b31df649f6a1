"""``relay run`` and ``relay reload``: the daemon's life."""

from __future__ import annotations

import argparse
import logging
import os
import sys

import trio

from relay import config as config_module
from relay.cli.common import (
    CommandError,
    add_config_option,
    admin_request,
    first_error,
    ingest_request,
    load,
)
from relay.journal import JournalError
from relay.journal.lock import StateDirLocked
from relay.logs import FORMATS, OVERRIDE


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_option(parser)
    parser.add_argument(
        "--log", choices=FORMATS, help="the log format, instead of [relay] log (default: text)"
    )


def cmd_run(args) -> int:
    """run the relay until SIGTERM or SIGINT"""
    from relay.delivery.remote import DeliveryProcessError
    from relay.notify import NotifyingRelay, serve
    from relay.startup import StartError

    config, pm, components = load(args.config)
    # The delivery process reads the file itself: the environment tells it about --log, and
    # without --log nothing inherited may make it log otherwise than this process.
    if args.log:
        os.environ[OVERRIDE] = args.log
    else:
        os.environ.pop(OVERRIDE, None)
    config_module.configure_logging(config, args.log)
    log = logging.getLogger("relay")
    status = 0
    try:
        trio.run(serve, NotifyingRelay(config, pm, components))
    except* (StartError, StateDirLocked, OSError) as group:
        log.error("cannot start: %s", first_error(group))
        status = 1
    except* (JournalError, DeliveryProcessError) as group:
        log.error("stopping: %s", first_error(group))
        status = 1
    return status


def cmd_reload(args) -> int:
    """ask the running relay to reload its configuration (as SIGHUP does)"""
    import httpx

    config = config_module.load_for_admin(args.config)
    try:
        if config.relay.admin is not None:
            response = admin_request(config, "POST", "/api/reload")
        else:  # the ingest listener's deprecated POST /reload
            response = ingest_request(config, "POST", "/reload")
    except httpx.HTTPError as e:
        raise CommandError(f"cannot reach the relay of {args.config}: {e}") from None
    try:
        answer = response.json()
    except ValueError:
        raise CommandError(f"the relay answered {response.status_code}: {response.text}") from None
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
