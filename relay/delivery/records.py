"""Reading back what relay/delivery/capture.py recorded of attempts, and a delivery's whole
history (relay/journal/history.py) as JSON: what ``relay deliveries show --json`` prints and
``GET /api/deliveries/{id}`` answers, so that both say the same.

Times are Unix seconds, durations seconds. Bodies are text when they are UTF-8, else base64
(``body_base64``). Whatever holds a secret's value is masked once more on the way out (the
records were masked when made; this catches a secret added to the configuration since).
"""

from __future__ import annotations

import base64

from relay.delivery.capture import BODY_KEPT, mask_text, mask_url
from relay.journal.history import AttemptRecord, DeliveryHistory, EventHistory


def read_request(record: bytes) -> dict:
    """A request record: ``method``, ``url``, ``headers`` (pairs), and its body: the event's
    (``body_is_event``, no copy kept) or ``body`` (its first bytes) of ``body_length``."""
    head, _, body = record.partition(b"\n\n")
    first, *lines = head.decode("utf-8", "replace").split("\n")
    mark, _, rest = first.partition(" ")
    method, _, url = rest.partition(" ")
    headers = [list(line.split(": ", 1)) if ": " in line else [line, ""] for line in lines]
    is_event = mark == "="
    return {
        "method": method,
        "url": url,
        "headers": headers,
        "body_is_event": is_event,
        "body_length": None if is_event else int(mark) if mark.isdigit() else len(body),
        **_body(body if not is_event else None),
    }


def read_response(record: bytes) -> dict:
    """A response record: ``status_line``, ``headers`` (pairs), the first bytes of ``body``."""
    head, _, body = record.partition(b"\r\n\r\n")
    first, *lines = head.decode("latin-1").split("\r\n")
    headers = []
    for line in lines:
        name, _, value = line.partition(":")
        headers.append([name, value.strip(" \t")])
    length = next((v for n, v in headers if n.lower() == "content-length"), "")
    # Whether more came than was kept: a body as long as what is kept, unless its length says
    # it was all.
    cut = int(length) > len(body) if length.isdigit() else len(body) >= BODY_KEPT
    return {"status_line": first, "headers": headers, **_body(body), "body_truncated": cut}


def _body(body: bytes | None) -> dict:
    if body is None:
        return {"body": None, "body_base64": False}
    try:
        return {"body": body.decode("utf-8"), "body_base64": False}
    except UnicodeDecodeError:
        return {"body": base64.b64encode(body).decode("ascii"), "body_base64": True}


def history_json(history: EventHistory, forms: list[str], known: set[str]) -> dict:
    """``history`` as JSON, masking every form of a secret in ``forms``; ``known``: the
    webhooks of the configuration (a pending delivery to another is parked)."""
    event = {
        "id": history.id,
        "name": history.name,
        "received_at": history.received_at,
        **_body(history.body),
    }
    return _masked(
        {"event": event, "deliveries": [_delivery(d, known) for d in history.deliveries]}, forms
    )


def _delivery(delivery: DeliveryHistory, known: set[str]) -> dict:
    state = delivery.state
    if state == "pending" and delivery.webhook_id not in known:
        state = "parked"
    return {
        "id": delivery.id,
        "webhook_id": delivery.webhook_id,
        "state": state,
        "attempts": delivery.attempts,
        "attempt_base": delivery.attempt_base,
        "created_at": delivery.created_at,
        "updated_at": delivery.updated_at,
        "next_attempt_at": delivery.next_at if delivery.state == "pending" else None,
        "waiting_replay": delivery.waiting_replay,
        "last_outcome": delivery.last_outcome,
        "history": [_attempt(a) for a in delivery.history],
        "replays": [
            {"replayed_at": r.replayed_at, "by": r.by, "attempts_before": r.attempts_before}
            for r in delivery.replays
        ],
    }


def _attempt(attempt: AttemptRecord) -> dict:
    return {
        "number": attempt.number,
        "started_at": attempt.started_at,
        "duration": attempt.duration,
        "status": attempt.status,
        "error": attempt.error,
        "request": read_request(attempt.request) if attempt.request is not None else None,
        "response": read_response(attempt.response) if attempt.response is not None else None,
    }


def _masked(value, forms: list[str]):
    """Every string in ``value`` with the secrets' forms masked (a URL as a URL is)."""
    if not forms:
        return value
    if isinstance(value, str):
        return mask_text(value, forms)
    if isinstance(value, list):
        return [_masked(v, forms) for v in value]
    if isinstance(value, dict):
        return {k: (mask_url if k == "url" else _masked)(v, forms) for k, v in value.items()}
    return value
