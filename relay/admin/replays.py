"""``POST /api/replay`` (``relay replay``) and ``POST /api/webhooks/{id}/disable`` and
``/enable`` (``relay webhooks disable``/``enable``): what operators change in a running relay.

A replay goes through the relay's own journal (its committer: in order with what delivery
records, so that no write of a delivery in flight undoes it; relay/journal/replays.py skips
those), then wakes the lanes of the webhooks it touched, in this process or in the delivery
process. Who asked is journaled with it: ``admin api from ADDRESS``, after the name the client
gives (``by``: ``relay replay`` sends the user running it).
"""

from __future__ import annotations

import json

import trio

from relay.admin.deliveries import Invalid, number
from relay.http.server import HTTPRequest
from relay.journal.history import select

REPLAY_KEYS = ("ids", "webhook", "state", "since", "until", "dry_run", "by")
REPLAY_STATES = ("failed", "delivered", "pending", "all")


def body_object(request: HTTPRequest, known: tuple[str, ...]) -> dict:
    """The request's JSON object (an empty body is ``{}``), with keys of ``known`` only."""
    if not request.body.strip():
        return {}
    try:
        value = json.loads(request.body)
    except (ValueError, RecursionError) as e:
        raise Invalid([("", f"malformed JSON: {e}")]) from None
    if not isinstance(value, dict):
        raise Invalid([("", "expected a JSON object")], 422)
    if unknown := sorted(set(value) - set(known)):
        raise Invalid([(key, f"unknown key (known: {', '.join(known)})") for key in unknown], 422)
    return value


def _text(body: dict, key: str, limit: int) -> str | None:
    value = body.get(key)
    if value is not None and (not isinstance(value, str) or not 0 < len(value) <= limit):
        raise Invalid([(key, f"expected a string of 1 to {limit} characters")], 422)
    return value


def who(request: HTTPRequest, name: str | None) -> str:
    """``admin api from ADDRESS``, after the name the client gave."""
    try:
        host, port = request.stream.socket.getpeername()[:2]
        peer = f"{host}:{port}"
    except (AttributeError, OSError, ValueError):
        peer = "an unknown address"
    return f"{name} via admin api from {peer}" if name else f"admin api from {peer}"


async def replay(admin, request: HTTPRequest, params: dict):
    """``POST /api/replay``: ``ids``, or ``webhook`` (with ``state``, default failed, and
    ``since``/``until``); ``dry_run`` says what would go and changes nothing."""
    body = body_object(request, REPLAY_KEYS)
    relay = admin.relay
    ids, webhook_id = body.get("ids"), _text(body, "webhook", 200)
    if (ids is None) == (webhook_id is None):
        raise Invalid([("ids", "give either ids or webhook (with state, since, until)")], 422)
    dry_run = body.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise Invalid([("dry_run", "expected true or false")], 422)
    if ids is not None:
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
            raise Invalid([("ids", "expected a non-empty array of delivery ids")], 422)
        extra = [key for key in ("state", "since", "until") if key in body]
        if extra:
            raise Invalid([(key, "only with webhook") for key in extra], 422)
    else:
        if relay.config.webhook(webhook_id) is None:
            raise Invalid([("webhook", f"no webhook {webhook_id!r} in the configuration")], 404)
        state = body.get("state", "failed")
        if state not in REPLAY_STATES:
            raise Invalid([("state", f"expected one of {', '.join(REPLAY_STATES)}")], 422)
        since = number("since", body["since"]) if "since" in body else None
        until = number("until", body["until"]) if "until" in body else None
        ids = await trio.to_thread.run_sync(
            lambda: select(
                relay.config.relay.state_dir,
                url=relay.config.journal.url,
                webhook_id=webhook_id,
                state=state,
                since=since,
                until=until,
            )
        )
    by = who(request, _text(body, "by", 100))
    replayed, skipped = await relay.journal.replay(ids, relay.clock.now(), by, dry_run=dry_run)
    if replayed and not dry_run:
        await relay.pending_counted.wait()  # the count at start must not replace these
        for _, webhook, was, _ in replayed:
            if was != "pending":
                relay.pending_at_start[webhook] = relay.pending_at_start.get(webhook, 0) + 1
        relay.dispatcher.replayed({webhook for _, webhook, _, _ in replayed})
    return 200, {
        "dry_run": dry_run,
        "by": by,
        "replayed": [
            {"id": i, "webhook_id": w, "state": s, "attempts": a} for i, w, s, a in replayed
        ],
        "skipped": [{"id": i, "reason": reason} for i, reason in skipped],
    }


async def disable(admin, request: HTTPRequest, params: dict):
    """``POST /api/webhooks/{id}/disable``: its deliveries are kept, none attempted."""
    reason = _text(body_object(request, ("reason",)), "reason", 500)
    return await _set(admin, params["id"], False, reason or "disabled through the admin api")


async def enable(admin, request: HTTPRequest, params: dict):
    """``POST /api/webhooks/{id}/enable``: its deliveries resume."""
    body_object(request, ())
    return await _set(admin, params["id"], True, None)


async def _set(admin, webhook_id: str, enabled: bool, reason: str | None):
    relay = admin.relay
    webhook = relay.config.webhook(webhook_id)
    if webhook is None:
        return 404, {
            "error": f"no webhook {webhook_id[:80]!r} in the configuration",
            "problems": [{"field": "id", "reason": "no such webhook"}],
        }
    await relay.set_webhook_enabled(webhook_id, enabled, reason)
    return 200, {
        "webhook_id": webhook_id,
        "enabled": enabled and webhook.enabled,
        "reason": reason,
        "configured_enabled": webhook.enabled,
    }
