"""``relay deliveries show ID``: a delivery's whole story (or, for an event's id, each of its
deliveries'): the event as received, every attempt with the request as sent and what came
back, and each replay.

It reads the journal file, read-only, whether or not a relay runs, as ``relay deliveries``
does, rather than asking a running relay's admin listener: it then works with the relay
stopped, without ``[relay] admin`` set, and without its token, and a long history read beside
the relay's writer holds none of its commits (``GET /api/deliveries/{id}`` reads the same file
the same way and answers the same JSON as ``--json``). Secrets print as ``***``: they were
masked when the attempt was recorded, and every value of ``[secrets]`` and every webhook's
``secret`` is masked again here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import tomllib

from relay import config as config_module
from relay.cli.common import CommandError, journal_name, no_journal
from relay.compose import resolve_secrets
from relay.delivery.capture import BODY_KEPT, secret_forms, webhook_secrets
from relay.delivery.records import history_json
from relay.journal.history import history


def add_arguments(parser) -> None:
    parser.add_argument("id", help="a delivery's id, or an event's (then each of its deliveries)")
    parser.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,  # the parent's, when given before "show"
        help="as GET /api/deliveries/{id} answers (Unix times)",
    )


def cmd_show(args) -> int:
    config = config_module.load_for_admin(args.config)
    try:
        found = history(config.relay.state_dir, args.id, url=config.journal.url)
    except FileNotFoundError as e:
        raise no_journal(config, e) from None
    if found is None:
        raise CommandError(f"no delivery or event {args.id!r} in {journal_name(config)}")
    shown = history_json(found, all_secrets(config), {w.id for w in config.webhooks})
    if args.json:
        json.dump(shown, sys.stdout, indent=2)
        print()
    else:
        sys.stdout.write("".join(f"{line}\n" for line in text(shown, time.time())))
    return 0


def all_secrets(config) -> list[str]:
    """The forms of every ``[secrets]`` value (the file's, as ``relay webhooks render`` reads
    them) and every webhook's signing secret."""
    try:
        data = tomllib.loads(config_module.read_text(config.path))
    except (config_module.ConfigError, tomllib.TOMLDecodeError):
        data = {}
    values, _ = resolve_secrets(data.get("secrets", {}), os.environ)
    values = set(values.values())
    for webhook in config.webhooks:
        values |= webhook_secrets(webhook)
    return secret_forms(values)


def text(shown: dict, now: float) -> list[str]:
    event = shown["event"]
    lines = [
        f"event {event['id']}: {event['name']}, received {moment(event['received_at'], now)}",
        *_indented(_body_text(event), "  "),
    ]
    for delivery in shown["deliveries"]:
        lines += ["", *_delivery(delivery, now)]
    return lines


def _delivery(delivery: dict, now: float) -> list[str]:
    attempts = delivery["attempts"]
    lines = [
        f"delivery {delivery['id']} to {delivery['webhook_id']}: {_state(delivery, now)},"
        f" {attempts} attempt{'s' if attempts != 1 else ''}"
        + (f" ({delivery['last_outcome']})" if delivery["last_outcome"] else "")
    ]
    lines.append(f"  created {moment(delivery['created_at'], now)}")
    after: dict[int, list[dict]] = {}  # replays, by the attempt they came after
    for replay in delivery["replays"]:
        after.setdefault(replay["attempts_before"], []).append(replay)
    lines += [_replay_line(replay, now) for replay in after.pop(0, [])]
    for attempt in delivery["history"]:
        lines += ["", *_attempt(attempt, now)]
        if replays := after.pop(attempt["number"], []):
            lines += ["", *(_replay_line(replay, now) for replay in replays)]
    for replays in after.values():  # after attempts no longer in the journal
        lines += [_replay_line(replay, now) for replay in replays]
    return lines


def _state(delivery: dict, now: float) -> str:
    state = delivery["state"]
    if state not in ("pending", "parked"):
        return state
    if delivery["waiting_replay"]:
        return f"{state}, replayed: waiting for room in its lane"
    due = delivery["next_attempt_at"]
    if due is None:
        return f"{state}, in the relay's memory (queued or being attempted)"
    return f"{state}, next attempt {'now' if due <= now else 'in ' + _span(due - now)}"


def _replay_line(replay: dict, now: float) -> str:
    before = replay["attempts_before"]
    return (
        f"  replayed {moment(replay['replayed_at'], now)} by {replay['by']}"
        f" ({before} attempt{'s' if before != 1 else ''} before: tries count anew)"
    )


def _attempt(attempt: dict, now: float) -> list[str]:
    outcome = f"HTTP {attempt['status']}" if attempt["status"] is not None else ""
    if attempt["error"]:
        outcome = f"{outcome} ({attempt['error']})" if outcome else attempt["error"]
    lines = [
        f"  attempt {attempt['number']}, {moment(attempt['started_at'], now)},"
        f" {attempt['duration'] * 1000:.0f} ms: {outcome or 'no outcome recorded'}"
    ]
    request, response = attempt["request"], attempt["response"]
    if request is None:
        lines.append("    (no request: it could not be built, or was not recorded)")
    else:
        lines.append(f"    > {request['method']} {request['url']}")
        lines += [f"    > {name}: {value}" for name, value in request["headers"]]
        if request["body_is_event"]:
            lines.append("    > (body: the event's body, as above)")
        elif request["body"]:
            lines.append("    >")
            kept = request["body_length"]
            lines += _indented(_body_text(request), "    > ")
            if kept is not None and kept > BODY_KEPT:
                lines.append(f"    > (the first 4 KiB of {kept:,} bytes)")
    if response is None:
        if request is not None:
            lines.append("    < (no answer)")
        return lines
    lines.append(f"    < {response['status_line']}")
    lines += [f"    < {name}: {value}" for name, value in response["headers"]]
    if response["body"]:
        lines.append("    <")
        lines += _indented(_body_text(response), "    < ")
        if response["body_truncated"]:
            lines.append("    < (the first 4 KiB)")
    return lines


def _body_text(part: dict) -> str:
    if part["body"] is None:
        return ""
    if part["body_base64"]:
        return f"(not text; base64) {part['body']}"
    return part["body"]


def _indented(body: str, prefix: str) -> list[str]:
    printable = "".join(c if c.isprintable() or c in "\n\t" else f"\\x{ord(c):02x}" for c in body)
    return [prefix + line for line in printable.splitlines()]


def moment(at: float, now: float) -> str:
    """Local time, to the millisecond; the date too when it is not today's."""
    local, today = time.localtime(at), time.localtime(now)
    stamp = time.strftime("%H:%M:%S" if local[:3] == today[:3] else "%Y-%m-%d %H:%M:%S", local)
    return f"{stamp}.{int(at * 1000) % 1000:03d}"


def _span(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"
