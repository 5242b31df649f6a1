"""``relay webhooks render ID [EVENT.json]``: the exact request a webhook would send, sent nowhere.

The request is built by the code of a real attempt (``Attempts.build_request`` in
relay/delivery/attempt.py): ``render_request``, the ``Relay-Delivery-Id`` header,
``prepare_request``, then the webhook's signer. So what is printed is what an attempt would
send, signature included, whatever plugins change. ``prepare_request`` runs as well: showing the
request before it would hide what auth plugins add, and a plugin that needs I/O for it (the
oauth2 plugin fetching a token) does that I/O here, as the first attempt would. The request to
the webhook itself is never sent, and no transport is opened.

Secrets never appear in the output: values of ``[secrets]`` and of the webhook's ``secret``
print as ``***`` wherever they land, and a header that came from a ``%secret%`` reference, that
holds such a value, or that authorizes (``Authorization``) prints as ``***`` whole.
"""

from __future__ import annotations

import json
import os
import sys
import time
import tomllib
from importlib import resources
from pathlib import Path
from urllib.parse import quote, quote_plus

import trio

from relay import config as config_module
from relay.cli.common import CommandError, load
from relay.compose import resolve_secrets
from relay.compose.placeholders import Secret
from relay.delivery.attempt import Attempts, PluginFailed
from relay.ingest import events as ingest_events
from relay.model import Delivery, Event, PermanentFailure, Request

MASK = "***"
EXAMPLES = ("Message Status Notification", "Message Incoming Notification", "Incoming Media")
AUTHORIZING = frozenset({"authorization", "proxy-authorization"})


def add_arguments(parser) -> None:
    parser.add_argument("id", help="the webhook's id")
    parser.add_argument(
        "event",
        nargs="?",
        type=Path,
        help="a JSON file holding an event or an array of them, as POST /events takes; "
        "default: the reference's three example events",
    )


def cmd_render(args) -> int:
    """print the exact request a webhook would send for an event; exit 1 if one cannot render"""
    config, pm, components = load(args.config)
    webhook = config.webhook(args.id)
    if webhook is None:
        known = ", ".join(w.id for w in config.webhooks) or "none"
        raise CommandError(f"{config.path.name}: no webhook {args.id!r} (webhooks: {known})")
    if args.event is None:
        body = resources.files("relay.compose").joinpath("examples.json").read_bytes()
        incoming = ingest_events.parse(body, config)
        labels = [f'the reference\'s "{title}" example' for title in EXAMPLES]
    else:
        incoming = _read_events(args.event, config)
        labels = [str(args.event)] * len(incoming)
    deliveries = [
        Delivery(
            id=ingest_events.new_id(),
            webhook_id=webhook.id,
            event=Event(ingest_events.new_id(), item.name, item.body, time.time()),
        )
        for item in incoming
    ]
    results = trio.run(_build, Attempts(pm, components, {}), webhook, deliveries)
    secrets = _secret_values(config, webhook)
    failed = 0
    out = sys.stdout
    for i, (item, label, result) in enumerate(zip(incoming, labels, results, strict=True)):
        if i:
            out.write("\n")
        out.write(f"# webhook {webhook.id}, event {item.name} from {label}: not sent\n")
        for note in _routing_notes(webhook, item):
            out.write(f"# {note}\n")
        if not isinstance(result, Request):
            failed += 1
            out.write(f"# an attempt would fail: {_mask(str(result), secrets)}\n")
            continue
        body = _mask_bytes(result.body, secrets)
        if body != result.body:
            out.write(f"# the body shows {MASK} for secrets; the signature covers the real bytes\n")
        out.write(_show(result, webhook, secrets))
        if body:
            out.flush()
            out.buffer.write(b"\n" + body + b"\n")
            out.buffer.flush()
    return 1 if failed else 0


def _read_events(path: Path, config) -> list[ingest_events.Incoming]:
    try:
        body = path.read_bytes()
    except OSError as e:
        raise CommandError(f"{path}: cannot read: {e.strerror}") from None
    try:
        return ingest_events.parse(body, config)
    except ingest_events.InvalidEvents as e:
        raise CommandError(
            *(
                f"{path}: {field}: {reason}" if field else f"{path}: {reason.removeprefix('body ')}"
                for field, reason in e.problems
            )
        ) from None


async def _build(attempts: Attempts, webhook, deliveries) -> list[Request | Exception]:
    results: list[Request | Exception] = []
    for delivery in deliveries:
        try:
            results.append(await attempts.build_request(webhook, delivery))
        except (PermanentFailure, PluginFailed) as e:
            results.append(e)
    return results


def _routing_notes(webhook, item) -> list[str]:
    if item.webhook_id is not None and item.webhook_id != webhook.id:
        return [f'sent with "webhook_id": "{item.webhook_id}", it would go to that webhook only']
    if item.webhook_id is None and not ingest_events.Router([webhook]).route(item.name):
        return [
            f"its events patterns do not match {item.name}: it gets such events only when "
            f'they are sent with "webhook_id": "{webhook.id}"'
        ]
    return []


def _show(request: Request, webhook, secrets: list[str]) -> str:
    """The request line and headers, masked; the body, if any, follows a blank line."""
    lines = [f"{request.method} {_mask(request.url, secrets)}"]
    from_secrets = _headers_from_secrets(webhook)
    for name, value in request.headers:
        hidden = (
            name.lower() in AUTHORIZING
            or name.lower() in from_secrets
            or any(s in value for s in secrets)
        )
        lines.append(f"{name}: {MASK if hidden else value}")
    return "\n".join(lines) + "\n"


def _headers_from_secrets(webhook) -> set[str]:
    template = webhook.template
    if template is None:
        return set()
    return {
        name.lower()
        for name, header in template.headers
        if any(isinstance(part, Secret) for part in header.parts)
    }


def _secret_values(config, webhook) -> list[str]:
    """Every form a secret's value may take in a request: as it is, percent-encoded (URL,
    form body) and JSON-escaped. Longest first, so a secret holding another is masked whole."""
    try:
        data = tomllib.loads(config_module.read_text(config.path))
    except (config_module.ConfigError, tomllib.TOMLDecodeError):
        data = {}
    values, _ = resolve_secrets(data.get("secrets", {}), os.environ)
    raw = set(values.values())
    if webhook.secret is not None:  # with none, the webhook's id signs: not a secret
        raw.update(webhook.secrets)
    forms = set()
    for value in filter(None, raw):
        forms.update({value, quote(value, safe=""), quote_plus(value)})
        forms.add(json.dumps(value, ensure_ascii=False)[1:-1])
    return sorted(forms, key=len, reverse=True)


def _mask(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text


def _mask_bytes(body: bytes, secrets: list[str]) -> bytes:
    return _mask(body.decode("utf-8", "surrogateescape"), secrets).encode(
        "utf-8", "surrogateescape"
    )
