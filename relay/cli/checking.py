"""``relay check`` and ``relay plugins``: what a configuration and its plugins amount to."""

from __future__ import annotations

import sys

from relay.cli import preflight
from relay.cli.common import CommandError, load


def cmd_check(args) -> int:
    """validate the configuration and list the webhooks it defines"""
    config, _, components = load(args.config)
    errors, warnings = preflight.start_problems(config)
    warnings += secret_warnings(config)
    warnings += unfilled_variables(config, components.variables)
    for line in warnings:
        print(f"warning: {line}", file=sys.stderr)
    if errors:
        raise CommandError(*errors)
    print(f"{config.path.name}: ok, {len(config.webhooks)} webhook(s)")
    for w in config.webhooks:
        print(
            f"  {w.id}: {w.url}  events={','.join(w.events)}  signer={w.signer}  "
            f"tries={w.tries} timeout={w.timeout:g}s"
        )
    return 0


def secret_warnings(config) -> list[str]:
    """The reference signs with the webhook's id when it has no secret: relay keeps that, and
    says that anyone who knows the id can forge a signature."""
    return [
        f"{config.path.name}: webhooks[{i}] (id {w.id}): signs with its id, which is guessable; "
        "set secret"
        for i, w in enumerate(config.webhooks)
        if w.secret is None and w.signer != "none"
    ]


def unfilled_variables(config, variables) -> list[str]:
    """A warning per webhook, variable and event type its ``events`` match that has no such
    variable: not an error, since such an event still renders (or fails, as on_missing says)."""
    lines = []
    for i, w in enumerate(config.webhooks):
        if w.template is None:
            continue
        outcome = (
            'their deliveries fail (on_missing = "fail")'
            if w.on_missing == "fail"
            else "it renders empty"
        )
        for source, name, event_type in variables.unfilled(w.template.used_variables(), w.events):
            lines.append(
                f"{config.path.name}: webhooks[{i}] (id {w.id}): {source} has no value on "
                f"{event_type} events (that event type has no {name}): {outcome}"
            )
    return lines


KIND_NAMES = {
    "signers": "signer",
    "transports": "transport",
    "retry_policies": "retry policy",
    "webhook_options": "webhook option",
}


def cmd_plugins(args) -> int:
    """list the plugins loaded, where from, and the hooks and names each provides"""
    config, pm, components = load(args.config)
    for name, plugin in pm.list_name_plugin():
        source = getattr(plugin, "__file__", None) or type(plugin).__module__
        hooks = sorted(caller.name for caller in pm.get_hookcallers(plugin) or ())
        provides = sorted(
            f"{KIND_NAMES[kind]} {component}"
            for (kind, component), owner in components.owners.items()
            if owner == name
        )
        declared: dict[str, list[str]] = {}
        for (event_type, variable), owner in components.variables.owners.items():
            if owner == name:
                declared.setdefault(event_type, []).append(variable)
        provides += [f"variables of {t} ({', '.join(v)})" for t, v in sorted(declared.items())]
        print(f"{name}\n  from: {source}\n  hooks: {', '.join(hooks)}")
        if provides:
            print(f"  provides: {', '.join(provides)}")
    return 0
