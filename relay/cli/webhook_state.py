"""``relay webhooks disable``, ``enable``, ``show`` and ``remove``.

``disable``/``enable`` go through a running relay's admin listener when ``[relay] admin`` is
set (``POST /api/webhooks/{id}/disable``: it writes the journal and applies the state at once).
Else they write the webhook's row in the journal's ``webhook_state`` straight into the file
(relay/journal/states.py says why that is safe beside a running relay), then ask a running relay
to reload: a reload re-reads the states first, whatever else the file holds. With no relay
running, the state applies when one starts. ``remove`` edits relay.toml with tomlkit,
keeping the rest of the file as it was; the webhook's pending deliveries stay in the journal,
parked, and resume if it comes back.
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime

import httpx

from relay import config as config_module
from relay.cli.common import CommandError, admin_request, ingest_request, load
from relay.cli.render import MASK, _mask, _secret_values
from relay.journal.engines import masked, scrub
from relay.journal.states import pending_count, read_states, write_state


def add_arguments(actions) -> None:
    from relay.cli.common import add_config_option

    disable = actions.add_parser("disable", help="keep a webhook's deliveries, attempt none")
    add_config_option(disable)
    disable.add_argument("id")
    disable.add_argument("--reason", help="shown by relay webhooks show")
    enable = actions.add_parser("enable", help="resume a disabled webhook's deliveries")
    add_config_option(enable)
    enable.add_argument("id")
    show = actions.add_parser("show", help="a webhook's settings, state and pending deliveries")
    add_config_option(show)
    show.add_argument("id")
    remove = actions.add_parser("remove", help="delete a webhook from the configuration file")
    add_config_option(remove)
    remove.add_argument("id")


def cmd(args) -> int:
    return {"disable": disable, "enable": enable, "show": show, "remove": remove}[
        args.webhooks_command
    ](args)


def _webhook(config, webhook_id: str):
    webhook = config.webhook(webhook_id)
    if webhook is None:
        known = ", ".join(w.id for w in config.webhooks) or "none"
        raise CommandError(f"{config.path.name}: no webhook {webhook_id!r} (webhooks: {known})")
    return webhook


def disable(args) -> int:
    return _set(args, False, args.reason or "disabled with relay webhooks disable")


def enable(args) -> int:
    return _set(args, True, None)


def _set(args, enabled: bool, reason: str | None) -> int:
    config = config_module.load_for_admin(args.config)
    webhook = _webhook(config, args.id)
    if _through_the_relay(config, webhook, enabled, reason):
        return 0
    try:
        url = config.journal.url
        write_state(config.relay.state_dir, webhook.id, enabled, reason, time.time(), url=url)
    except Exception as e:  # noqa: BLE001 - sqlite3, psycopg or OSError: say which journal
        where = masked(url) if url else config.relay.state_dir
        raise CommandError(f"{where}: cannot write the journal: {scrub(str(e), url)}") from None
    print(f"{'enabled' if enabled else 'disabled'} {webhook.id}")
    try:
        if config.relay.admin is not None:  # as relay reload asks
            response = admin_request(config, "POST", "/api/reload")
        else:
            response = ingest_request(config, "POST", "/reload")
    except (httpx.HTTPError, CommandError):
        print("no relay is running: it applies when the relay starts", file=sys.stderr)
        return 0
    if response.status_code != 200:
        print(
            "the running relay applied it, but its reload was rejected: "
            + response.json().get("error", response.text),
            file=sys.stderr,
        )
    if enabled and not webhook.enabled:
        print(f"note: {config.path.name} says enabled = false for {webhook.id}", file=sys.stderr)
    return 0


def _through_the_relay(config, webhook, enabled: bool, reason: str | None) -> bool:
    """Set through the running relay's admin listener (it writes the journal and applies it at
    once, in either delivery mode); False when no relay answers there."""
    if config.relay.admin is None:
        return False
    action = "enable" if enabled else "disable"
    body = {"reason": reason} if reason else None
    try:
        response = admin_request(config, "POST", f"/api/webhooks/{webhook.id}/{action}", json=body)
    except httpx.ConnectError:
        return False  # no relay runs: the journal file it is
    except httpx.HTTPError as e:
        raise CommandError(f"cannot reach the admin listener of {config.path.name}: {e}") from None
    if response.status_code != 200:
        try:
            error = response.json().get("error", response.text)
        except ValueError:
            error = response.text
        raise CommandError(f"the relay answered {response.status_code}: {error}")
    print(f"{action}d {webhook.id}")
    if enabled and not webhook.enabled:
        print(f"note: {config.path.name} says enabled = false for {webhook.id}", file=sys.stderr)
    return True


def show(args) -> int:
    config, _, _ = load(args.config)
    webhook = _webhook(config, args.id)
    secrets = _secret_values(config, webhook)
    state = read_states(config.relay.state_dir, url=config.journal.url).get(webhook.id)
    if not webhook.enabled:
        status = f"disabled ({config.path.name}: enabled = false)"
    elif state is not None and not state.enabled:
        changed = datetime.fromtimestamp(state.changed_at, UTC).isoformat(timespec="seconds")
        status = f"disabled since {changed.replace('+00:00', 'Z')}: {state.reason}"
    else:
        status = "enabled"
    lines = [
        ("id", webhook.id),
        ("name", webhook.name or "-"),
        ("url", _without_query(_mask(webhook.url, secrets))),
        ("events", ", ".join(webhook.events) or "(webhook_id only)"),
        ("state", status),
        ("pending", str(pending_count(config.relay.state_dir, webhook.id, url=config.journal.url))),
        ("secret", MASK if webhook.secret is not None else "(none: signs with its id)"),
        ("timeout", f"{webhook.timeout:g} s"),
        ("tries", str(webhook.tries)),
        (
            "backoff",
            f"{webhook.backoff.first:g} s x{webhook.backoff.factor:g},"
            f" max {webhook.backoff.max:g} s",
        ),
        ("concurrency", str(webhook.concurrency)),
        ("rate", "-" if webhook.rate is None else f"{float(webhook.rate):g}/s"),
        ("order_by", webhook.order_by or "-"),
        ("disable_after", "-" if webhook.disable_after is None else f"{webhook.disable_after:g} s"),
        ("signer", webhook.signer),
        ("transport", webhook.transport),
        ("retry", webhook.retry),
    ]
    for name in webhook.headers or {}:
        lines.append((f"header {name}", MASK))  # a header may carry a token
    for key, value in lines:
        print(f"{key + ':':<14} {value}")
    return 0


def _without_query(url: str) -> str:
    """A query may carry a token: shown masked."""
    path, sep, _ = url.partition("?")
    return f"{path}?{MASK}" if sep else path


def remove(args) -> int:
    import tomlkit

    from relay.cli.webhooks import _replace, _validate, read_document

    document, path = read_document(args.config)
    webhooks = document.get("webhooks")
    found = [i for i, w in enumerate(webhooks or []) if w.get("id") == args.id]
    if not found:
        raise CommandError(f"{path.name}: no webhook {args.id!r}")
    del webhooks[found[0]]
    text = tomlkit.dumps(document)
    if not text.endswith("\n"):
        text += "\n"
    _validate(text, path)
    _replace(path, text)
    print(
        f"removed {args.id} from {path.name}; a running relay drops it on reload (relay reload)"
        "; its pending deliveries stay in the journal, parked",
        file=sys.stderr,
    )
    return 0
