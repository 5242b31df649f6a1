"""``relay deliveries``: what the journal holds, read straight from its file (read-only), so it
works whether or not a relay runs, and never waits for one."""

from __future__ import annotations

import argparse
import io
import json
import math
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from relay import config as config_module
from relay.cli import show
from relay.cli.common import add_config_option, no_journal
from relay.journal import DeliveryRow, list_deliveries

STATES = ("pending", "parked", "failed", "delivered", "all")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?[smhdw])+")
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
# --json's keys, in this order (README, Commands, documents them).
JSON_KEYS = (
    "id",
    "webhook_id",
    "event_id",
    "event",
    "state",
    "attempts",
    "created_at",
    "last_attempt_at",
    "next_attempt_at",
    "last_status",
    "last_error",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_option(parser)
    parser.add_argument(
        "--state",
        choices=STATES,
        help="parked: pending for a webhook no longer in the configuration "
        "(default: pending; all with --event)",
    )
    parser.add_argument("--webhook", help="only deliveries to this webhook id")
    parser.add_argument(
        "--event",
        help="only this event's deliveries: its id (as POST /events answers) or a delivery's",
    )
    parser.add_argument(
        "--since",
        type=when,
        metavar="AGO|TIME",
        help="created since: 10m, 2h, 7d, 30s ago, "
        "or an ISO 8601 time (local unless it has a zone)",
    )
    parser.add_argument("--until", type=when, metavar="AGO|TIME", help="created until: as --since")
    parser.add_argument("--limit", type=_positive, default=50, help="the newest N (default: 50)")
    parser.add_argument("--json", action="store_true", help="a JSON array of objects")
    actions = parser.add_subparsers(dest="deliveries_command", metavar="{show}")
    shown = actions.add_parser(
        "show", help="one delivery (or an event's): every attempt, request and answer, replays"
    )
    # SUPPRESS: `relay deliveries -c x show ID` keeps the -c given before "show".
    shown.add_argument("--config", "-c", type=Path, default=argparse.SUPPRESS)
    show.add_arguments(shown)


def when(text: str) -> float:
    """A duration (``10m``, ``1h30m``) meaning that long ago, or an ISO 8601 time, as Unix
    seconds; a time without a zone is local, as a person at this machine means it."""
    text = text.strip()
    if _DURATION.fullmatch(text):
        ago = sum(float(n) * UNITS[unit] for n, unit in _PART.findall(text))
        return time.time() - ago
    try:
        moment = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a duration (10m, 2h, 7d, 30s) or an ISO 8601 time, got {text!r}"
        ) from None
    return moment.timestamp()  # naive: local time


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def cmd_deliveries(args) -> int:
    """list deliveries from the journal: by state, webhook, event, time; or show one"""
    if args.deliveries_command == "show":
        return show.cmd_show(args)
    config = config_module.load_for_admin(args.config)
    known = {w.id for w in config.webhooks}
    state = args.state or ("all" if args.event else "pending")
    try:
        rows = list_deliveries(
            config.relay.state_dir,
            url=config.journal.url,
            state=state,
            webhook_id=args.webhook,
            known_webhooks=known,
            event_id=args.event,
            since=args.since,
            until=args.until,
            limit=args.limit,
        )
    except FileNotFoundError as e:
        raise no_journal(config, e) from None
    parked = [row.state == "pending" and row.webhook_id not in known for row in rows]
    if args.json:
        json.dump([_as_json(r, p) for r, p in zip(rows, parked, strict=True)], sys.stdout)
        print()
    else:
        _table(rows, parked)
    return 0


def _state(row: DeliveryRow, parked: bool) -> str:
    return "parked" if parked else row.state


def _outcome(row: DeliveryRow) -> str:
    """As relay.model.Outcome.describe says it."""
    if row.last_status is not None:
        return f"HTTP {row.last_status}" + (f" ({row.last_error})" if row.last_error else "")
    return row.last_error or ""


def _iso(at: float | None) -> str | None:
    if at is None or at == math.inf:  # inf: waits for an earlier delivery of its key
        return None
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")


def _as_json(row: DeliveryRow, parked: bool) -> dict:
    values = {
        "id": row.id,
        "webhook_id": row.webhook_id,
        "event_id": row.event_id,
        "event": row.event,
        "state": _state(row, parked),
        "attempts": row.attempts,
        "created_at": _iso(row.created_at),
        "last_attempt_at": _iso(row.last_attempt_at),
        "next_attempt_at": _iso(row.next_at),
        "last_status": row.last_status,
        "last_error": row.last_error,
    }
    return {key: values[key] for key in JSON_KEYS}


# The table's columns. A cell may wrap at its spaces, never inside a word: an id cut short is
# no id, and "whatsapp:mes" over "sage:status" reads as neither.
COLUMNS = (
    "delivery",
    "webhook",
    "event id",
    "event",
    "state",
    "attempts",
    "created",
    "last attempt",
    "next attempt",
    "last outcome",
)


def _table(rows: list[DeliveryRow], parked: list[bool]) -> None:
    from rich import box
    from rich.cells import cell_len
    from rich.console import Console
    from rich.measure import Measurement
    from rich.table import Table

    now = time.time()
    cells = [
        (
            row.id,
            row.webhook_id,
            row.event_id,
            row.event,
            _state(row, is_parked),
            str(row.attempts),
            _local(row.created_at, now),
            _local(row.last_attempt_at, now),
            _next(row, now),
            _outcome(row),
        )
        for row, is_parked in zip(rows, parked, strict=True)
    ]
    terminal = sys.stdout.isatty()
    console = Console(highlight=False) if terminal else Console(file=io.StringIO(), width=100_000)

    def widths(headers: list[list[str]]) -> list[int]:
        # Each column as wide as its widest value, so that rich never shrinks one (which it
        # does by cutting ids to "18ed3a87…").
        return [
            max(cell_len(text) for text in [*(c[i] for c in cells), *header])
            for i, header in enumerate(headers)
        ]

    sizes = widths([[name] for name in COLUMNS])
    if sum(sizes) + 2 * (len(sizes) - 1) > console.width:  # then a header wraps at its space
        sizes = widths([name.split() for name in COLUMNS])
        # and the outcome (an error's text, the one long value with spaces) at its spaces
        room = console.width - sum(sizes[:-1]) - 2 * (len(sizes) - 1)
        words = [w for c in cells for w in c[-1].split()] + ["outcome"]
        sizes[-1] = max(min(sizes[-1], room), max(map(cell_len, words)))
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, padding=(0, 1, 0, 0))
    for name, width in zip(COLUMNS, sizes, strict=True):
        table.add_column(
            name, width=width, overflow="fold", justify="right" if name == "attempts" else "left"
        )
    for row, values in zip(rows, cells, strict=True):
        table.add_row(*values, style="red" if row.state == "failed" else None)
    if terminal:
        # A terminal narrower than the table: lines the terminal wraps, not values cut short.
        needed = Measurement.get(console, console.options.update_width(100_000), table).maximum
        if needed > console.width:
            console = Console(highlight=False, width=needed)
        console.print(table, markup=False, emoji=False)
    else:
        # Into a pipe or a file: each row on one line, no trailing blanks: for grep and cut.
        console.print(table, markup=False, emoji=False, highlight=False)
        lines = console.file.getvalue().splitlines()
        sys.stdout.write("".join(f"{line.rstrip()}\n" for line in lines))
    if not rows:
        print("(none)", file=sys.stderr)


def _local(at: float | None, now: float) -> str:
    """Local time; the date only when it is not today's."""
    if at is None:
        return "-"
    moment = time.localtime(at)
    same_day = moment[:3] == time.localtime(now)[:3]
    return time.strftime("%H:%M:%S" if same_day else "%Y-%m-%d %H:%M:%S", moment)


def _next(row: DeliveryRow, now: float) -> str:
    if row.state != "pending":
        return "-"
    if row.next_at is None:
        return "now"  # in the relay's memory: queued or under way (or, if none runs, at start)
    if row.next_at == math.inf:
        return "after its key"  # order_by: once the earlier delivery of its key has ended
    if row.next_at <= now:
        return "due"
    seconds = row.next_at - now
    if seconds < 120:
        return f"in {seconds:.0f}s"
    if seconds < 7200:
        return f"in {seconds / 60:.0f}m"
    return f"in {seconds / 3600:.1f}h"
