"""The endpoints of the admin listener (routes.py lists them; docs/admin-api.yaml documents
them): ``/metrics`` and the JSON API under ``/api/``. Times are Unix seconds, durations seconds.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from relay import __version__
from relay.admin.status import enabled, runtime_states, webhook_states
from relay.config import Webhook
from relay.http.server import HTTPRequest


async def metrics(admin, request: HTTPRequest, params: dict):
    """``GET /metrics``: Prometheus' text format (metrics.py)."""
    return 200, await admin.metrics.render(request)


async def status(admin, request: HTTPRequest, params: dict):
    """``GET /api/status``: the relay, and each webhook's backlog and health."""
    relay = admin.relay
    states = await webhook_states(relay)
    return 200, {
        "status": "stopping" if relay.stopping else "ok",
        "version": __version__,
        "started_at": relay.started_at,
        "uptime_seconds": max(0.0, relay.clock.now() - relay.started_at),
        "config_path": str(relay.config.path),
        "config_loaded_at": relay.config_loaded_at,
        "in_flight": relay.dispatcher.in_flight(),
        "webhooks": [state.as_json() for state in states],
    }


async def webhooks(admin, request: HTTPRequest, params: dict):
    """``GET /api/webhooks``: the webhooks as configured (never their secrets nor headers)."""
    relay = admin.relay
    states = await runtime_states(relay)
    return 200, {"webhooks": [describe(w, states) for w in relay.config.webhooks]}


async def reload(admin, request: HTTPRequest, params: dict):
    """``POST /api/reload``: what ``relay reload`` and SIGHUP do. 422: the file is invalid and
    nothing changed; 503: the relay is stopping."""
    relay = admin.relay
    ok, answer = await relay.try_reload()
    if ok:
        return 200, answer
    return (503 if relay.stopping else 422), answer


def describe(webhook: Webhook, states: dict) -> dict:
    return {
        "id": webhook.id,
        "name": webhook.name,
        "enabled": enabled(webhook, states)[0],
        "kind": "compose" if webhook.template is not None else "plain",
        "method": webhook.template.method if webhook.template is not None else "POST",
        "url": _without_password(webhook.url),
        "events": list(webhook.events),
        "signer": webhook.signer,
        "transport": webhook.transport,
        "retry": webhook.retry,
        "tries": webhook.tries,
        "timeout": webhook.timeout,
        "concurrency": webhook.concurrency,
    }


def _without_password(url: str) -> str:
    """The URL as configured, but a password in it (``https://user:secret@host/``) masked."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))
