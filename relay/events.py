"""Reading events from an ingest request body, and routing them to webhooks.

Pure functions, no I/O: the ingest server calls them and turns ``InvalidEvents`` into a 4xx
whose JSON names every problem by field.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from collections.abc import Sequence

from attrs import frozen

from relay.config import Config, Webhook


class InvalidEvents(Exception):
    """The request body holds no acceptable events; ``problems`` are (field, reason) pairs."""

    def __init__(self, problems: list[tuple[str, str]], status: int = 422):
        self.problems = problems
        self.status = status
        super().__init__("; ".join(f"{f}: {r}" if f else r for f, r in problems))

    def as_json(self) -> dict:
        return {
            "error": "invalid events" if self.status == 422 else "bad request",
            "problems": [{"field": f, "reason": r} for f, r in self.problems],
        }


@frozen
class Incoming:
    """One validated event, before it has an id."""

    name: str
    webhook_id: str | None
    body: bytes


def parse(body: bytes, config: Config) -> list[Incoming]:
    """Parse one event object or an array of them; every problem is reported, none accepted."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidEvents([("", f"body is not valid JSON: {e}")], status=400) from None
    if isinstance(data, dict):
        items, prefix = [data], lambda i: ""
    elif isinstance(data, list):
        items, prefix = data, lambda i: f"[{i}]"
    else:
        raise InvalidEvents([("", "expected an event object or an array of them")])

    problems: list[tuple[str, str]] = []
    incoming: list[Incoming] = []
    for i, item in enumerate(items):
        at = prefix(i)
        if not isinstance(item, dict):
            problems.append((at, "expected an object"))
            continue
        name = item.get("event")
        if "event" not in item:
            problems.append((f"{at}.event".lstrip("."), "missing"))
        elif not isinstance(name, str) or not name:
            problems.append((f"{at}.event".lstrip("."), "must be a non-empty string"))
        if "payload" not in item:
            problems.append((f"{at}.payload".lstrip("."), "missing"))
        elif not isinstance(item["payload"], dict):
            problems.append((f"{at}.payload".lstrip("."), "must be an object"))
        webhook_id = item.get("webhook_id")
        if webhook_id is not None:
            if not isinstance(webhook_id, str):
                problems.append((f"{at}.webhook_id".lstrip("."), "must be a string"))
            elif config.webhook(webhook_id) is None:
                problems.append((f"{at}.webhook_id".lstrip("."), f"no webhook {webhook_id!r}"))
        if not problems:
            incoming.append(Incoming(name=name, webhook_id=webhook_id, body=_canonical(item)))
    if problems:
        raise InvalidEvents(problems)
    return incoming


def _canonical(item: dict) -> bytes:
    """The event as it will be delivered: the same JSON, compactly written."""
    return json.dumps(item, ensure_ascii=False, separators=(",", ":")).encode()


def new_id() -> str:
    """128 random bits, as hex: unique without coordination, and cheaper than uuid4()."""
    return os.urandom(16).hex()


class Router:
    """Which webhooks an event goes to: its ``webhook_id`` alone, or every pattern match."""

    def __init__(self, webhooks: Sequence[Webhook]):
        self._routes = [
            (w.id, re.compile("|".join(fnmatch.translate(p) for p in w.events) or "(?!)"))
            for w in webhooks
        ]
        self._cache: dict[str, tuple[str, ...]] = {}

    def route(self, name: str, webhook_id: str | None = None) -> tuple[str, ...]:
        if webhook_id is not None:
            return (webhook_id,)
        found = self._cache.get(name)
        if found is None:
            found = tuple(wid for wid, pattern in self._routes if pattern.match(name))
            if len(self._cache) < 10_000:
                self._cache[name] = found
        return found
