"""``relay status``: what the running relay's admin listener says of itself and its webhooks."""

from __future__ import annotations

import argparse
import json
import time

from relay import config as config_module
from relay.cli.common import CommandError, add_config_option, admin_request


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_option(parser)
    parser.add_argument("--json", action="store_true", help="print GET /api/status's JSON as is")


def cmd_status(args) -> int:
    """show the running relay's state: uptime, and each webhook's backlog and health"""
    import httpx

    config = config_module.load_for_admin(args.config)
    if config.relay.admin is None:
        raise CommandError(
            f"{config.path.name}: relay.admin is not set; relay status asks the admin listener"
        )
    try:
        response = admin_request(config, "GET", "/api/status")
    except httpx.HTTPError as e:
        raise CommandError(f"cannot reach the admin listener of {args.config}: {e}") from None
    try:
        answer = response.json()
    except ValueError:
        answer = {"error": response.text}
    if response.status_code != 200:
        raise CommandError(f"the relay answered {response.status_code}: {answer.get('error')}")
    if args.json:
        print(json.dumps(answer, indent=2))
    else:
        print("\n".join(format_status(answer, time.time())))
    return 0


def format_status(answer: dict, now: float) -> list[str]:
    lines = [
        f"relay {answer['version']}: {answer['status']}, up {duration(answer['uptime_seconds'])}"
        f" (since {moment(answer['started_at'])}); {answer['in_flight']} attempt(s) in flight",
        f"configuration: {answer['config_path']}, loaded {moment(answer['config_loaded_at'])}",
        "",
    ]
    rows = [("webhook", "enabled", "pending", "oldest", "last success", "failures in a row")]
    for w in answer["webhooks"]:
        age = w["oldest_pending_age_seconds"]
        success = w["last_success_at"]
        rows.append(
            (
                w["id"],
                "yes" if w["enabled"] else "no",
                f"{w['pending']:,}",
                duration(age) if age is not None else "-",
                f"{duration(now - success)} ago" if success is not None else "never (this run)",
                str(w["consecutive_failures"]),
            )
        )
    if len(rows) == 1:
        return lines + ["no webhooks configured"]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    numeric = {2, 5}  # right-aligned
    for row in rows:
        cells = [
            cell.rjust(width) if i in numeric else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    disabled = [w for w in answer["webhooks"] if w.get("disabled_reason")]
    if disabled:
        lines.append("")
        lines += [f"{w['id']} is disabled: {w['disabled_reason']}" for w in disabled]
    return lines


def moment(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(at))


def duration(seconds: float) -> str:
    """``3s``, ``5m 03s``, ``2h 04m``, ``3d 04h``: as much as a person reads at a glance."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours:02d}h"
