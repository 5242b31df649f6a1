"""``GET /api/deliveries`` (``relay deliveries``' filters, a page at a time) and
``GET /api/deliveries/{id}`` (what ``relay deliveries show`` prints).

Both read the journal read-only in a thread (relay/journal/views.py, history.py: the file, or
the PostgreSQL database on a connection of their own), not through the relay's committer: a
long listing or history then holds no commit, and so no ingest acknowledgement. Pages are
keyset pages: ``before`` is the rowid (PostgreSQL: ``seq``) the previous page ended at (its
``next_before``), so a page deep in a journal of millions costs what the first one does.
"""

from __future__ import annotations

import math
from urllib.parse import parse_qsl

import trio

from relay.delivery.capture import secret_forms, webhook_secrets
from relay.delivery.records import history_json
from relay.http.server import HTTPRequest
from relay.journal import views
from relay.journal.history import history

STATES = ("pending", "parked", "failed", "delivered", "all")
MAX_LIMIT = 1000


class Invalid(Exception):
    """A request's parameters or body are wrong: ``problems`` are (field, reason) pairs."""

    def __init__(self, problems: list[tuple[str, str]], status: int = 400):
        self.problems = problems
        self.status = status

    def answer(self) -> tuple[int, dict]:
        return self.status, {
            "error": "invalid request",
            "problems": [{"field": f, "reason": r} for f, r in self.problems],
        }


def query(request: HTTPRequest, known: tuple[str, ...]) -> dict[str, str]:
    """The query's parameters, each once, each one of ``known``."""
    found: dict[str, str] = {}
    problems = []
    for name, value in parse_qsl(request.query, keep_blank_values=True):
        if name not in known:
            problems.append((name, f"unknown parameter (known: {', '.join(known)})"))
        elif name in found:
            problems.append((name, "given more than once"))
        found[name] = value
    if problems:
        raise Invalid(problems)
    return found


def number(field: str, value: object) -> float:
    """A Unix time: a finite number (JSON's, or a query's text)."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise Invalid([(field, f"expected Unix seconds, got {value[:40]!r}")]) from None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise Invalid([(field, "expected Unix seconds (a number)")], 422)
    return float(value)


def _whole(field: str, text: str, low: int, high: int) -> int:
    if not text.isdigit() or not low <= int(text) <= high:
        raise Invalid([(field, f"expected a whole number from {low} to {high}, got {text[:40]!r}")])
    return int(text)


async def list_deliveries(admin, request: HTTPRequest, params: dict):
    """``GET /api/deliveries``: newest first, ``limit`` a page (default 50)."""
    args = query(request, ("state", "webhook", "event", "since", "until", "limit", "before"))
    state = args.get("state", "all" if "event" in args else "pending")
    if state not in STATES:
        raise Invalid([("state", f"expected one of {', '.join(STATES)}, got {state[:40]!r}")])
    limit = _whole("limit", args.get("limit", "50"), 1, MAX_LIMIT)
    before = _whole("before", args["before"], 1, 2**63 - 1) if "before" in args else None
    since = number("since", args["since"]) if "since" in args else None
    until = number("until", args["until"]) if "until" in args else None
    relay = admin.relay
    known = {w.id for w in relay.config.webhooks}
    rows = await trio.to_thread.run_sync(
        lambda: views.list_deliveries(
            relay.config.relay.state_dir,
            url=relay.config.journal.url,
            state=state,
            webhook_id=args.get("webhook"),
            known_webhooks=known,
            event_id=args.get("event"),
            since=since,
            until=until,
            limit=limit,
            before=before,
        )
    )
    return 200, {
        "deliveries": [row_json(row, known) for row in rows],
        "next_before": rows[-1].rowid if len(rows) == limit else None,
    }


def row_json(row: views.DeliveryRow, known: set[str]) -> dict:
    """As ``relay deliveries --json`` has it, with times in Unix seconds."""
    parked = row.state == "pending" and row.webhook_id not in known
    return {
        "id": row.id,
        "webhook_id": row.webhook_id,
        "event_id": row.event_id,
        "event": row.event,
        "state": "parked" if parked else row.state,
        "attempts": row.attempts,
        "created_at": row.created_at,
        "last_attempt_at": row.last_attempt_at,
        "next_attempt_at": row.next_at if row.state == "pending" else None,
        "last_status": row.last_status,
        "last_error": row.last_error,
    }


async def show(admin, request: HTTPRequest, params: dict):
    """``GET /api/deliveries/{id}``: a delivery (or an event's deliveries), every attempt and
    replay."""
    query(request, ())
    relay = admin.relay
    some_id = params["id"]
    found = await trio.to_thread.run_sync(
        lambda: history(relay.config.relay.state_dir, some_id, url=relay.config.journal.url)
    )
    if found is None:
        return 404, {
            "error": f"no delivery or event {some_id[:80]!r} in the journal",
            "problems": [{"field": "id", "reason": "no such delivery or event"}],
        }
    known = {w.id for w in relay.config.webhooks}
    return 200, history_json(found, config_secrets(relay.config), known)


def config_secrets(config) -> list[str]:
    """The forms of every secret the configuration's webhooks send or sign with."""
    return secret_forms(set().union(*(webhook_secrets(w) for w in config.webhooks)))
