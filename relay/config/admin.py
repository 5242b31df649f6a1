"""The listeners' tokens (``admin_token``, ``ingest_token``), resolved as [secrets] are, and
the rule that a TCP listener off loopback needs its token."""

from __future__ import annotations

import ipaddress
import os

from relay.compose import resolve_secrets

TOKENS = ("admin_token", "ingest_token")
# A listener and the token it needs off loopback, with what such a listener without one lets
# anyone do.
GUARDED = (
    ("admin", "admin_token", ""),
    (
        "listen",
        "ingest_token",
        ": anyone who can reach it could send events, which relay then signs; set ingest_token"
        ' = { env = "RELAY_INGEST_TOKEN" } (or a literal), or listen on 127.0.0.1 (the Unix'
        " socket needs no token)",
    ),
)


def tokens(table: dict) -> tuple[dict, list[str]]:
    """``[relay] admin_token`` and ``ingest_token``, each a literal or ``{ env = "VARIABLE" }``
    as in [secrets], resolved now; the problems name the key and the variable, never the
    value."""
    lines = []
    for key in TOKENS:
        if key not in table:
            continue
        values, problems = resolve_secrets({key: table[key]}, os.environ)
        token = values.get(key)
        lines += [f"relay.{key}: {message}" for _, message in problems]
        if not problems and not token:
            lines.append(f"relay.{key}: must not be empty")
        table = {**table, key: token or None}
    return table, lines


def unguarded(relay, problems: list[str]) -> list[str]:
    """A listener off loopback without its token: the relay refuses to start. (A token that
    could not be resolved is one of ``problems`` already.)"""
    return [
        f"relay.{token}: required when relay.{key} ({address}) is not a loopback address{why}"
        for key, token, why in GUARDED
        if (address := getattr(relay, key)) and getattr(relay, token) is None
        if not is_loopback(address) and not any(p.startswith(f"relay.{token}:") for p in problems)
    ]


def is_loopback(listen: str) -> bool:
    """Whether ``HOST:PORT`` listens only to this machine (a name other than localhost may
    resolve to anything: it does not count)."""
    host = listen.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
