"""Reading ``POST /reports`` bodies: which webhook wants the delivery reports of a message.

The reference has the application that sends a message ask for its delivery reports with a
``webhook_id``; the reports themselves are the status events the gateway sends later (sent,
delivered, read), which name no webhook. So the application tells relay once, by message id,
and the journal binds the two (relay/journal/sqlite.py, ``bindings``).

Pure functions, no I/O, like relay/ingest/events.py, whose error format they share.
"""

from __future__ import annotations

import json
from typing import Any

from relay.config import Config
from relay.ingest.events import MAX_MESSAGE_ID, InvalidEvents, message_id


class InvalidReports(InvalidEvents):
    what = "invalid report requests"


def parse(body: bytes, config: Config) -> list[tuple[str, str]]:
    """``(message_id, webhook_id)`` pairs from one ``{"message_id": ..., "webhook_id": ...}``
    object or an array of them; every problem is reported, none accepted."""
    try:
        value = json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError) as e:  # JSONDecodeError, bad UTF-8, huge numbers, depth
        raise InvalidReports([("", f"body is not valid JSON: {e}")], status=400) from None
    if isinstance(value, list):
        items = [(f"[{i}]", item) for i, item in enumerate(value)]
    elif isinstance(value, dict):
        items = [("", value)]
    else:
        raise InvalidReports([("", "expected a report request object or an array of them")])
    pairs: list[tuple[str, str]] = []
    problems: list[tuple[str, str]] = []
    for at, item in items:
        if not isinstance(item, dict):
            problems.append((at, "expected an object"))
            continue
        found = _problems(item, at, config)
        if found:
            problems.extend(found)
        else:
            pairs.append((item["message_id"], item["webhook_id"]))
    if problems:
        raise InvalidReports(problems)
    return pairs


def _problems(item: dict, at: str, config: Config) -> list[tuple[str, str]]:
    problems = []
    field = f"{at}.message_id".lstrip(".")
    if "message_id" not in item:
        problems.append((field, "missing"))
    elif message_id(item["message_id"]) is None:
        problems.append((field, _why_not(item["message_id"])))
    field = f"{at}.webhook_id".lstrip(".")
    webhook_id: Any = item.get("webhook_id")
    if "webhook_id" not in item:
        problems.append((field, "missing"))
    elif not isinstance(webhook_id, str):
        problems.append((field, "must be a string"))
    elif config.webhook(webhook_id) is None:
        problems.append((field, f"no webhook {webhook_id!r}"))
    return problems


def _why_not(value: Any) -> str:
    if not isinstance(value, str) or not value:
        return "must be a non-empty string"
    if len(value) > MAX_MESSAGE_ID:
        return f"must be at most {MAX_MESSAGE_ID} characters, got {len(value)}"
    return "must be Unicode text (a lone surrogate)"
