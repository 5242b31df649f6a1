"""``relay deliveries``: what the journal holds, read straight from its file."""

from __future__ import annotations

import argparse
import time

from relay import config as config_module
from relay.cli.common import add_config_option


def add_arguments(parser: argparse.ArgumentParser) -> None:
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
