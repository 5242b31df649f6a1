"""The admin listener's keys: its token, resolved as [secrets] are, and whether its address is
loopback (off loopback a token is required)."""

from __future__ import annotations

import ipaddress
import os

from relay.compose import resolve_secrets


def admin_token(table: dict) -> tuple[dict, list[str]]:
    """``[relay] admin_token``, a literal or ``{ env = "VARIABLE" }`` as in [secrets], resolved
    now; the problems name the key and the variable, never the value."""
    if "admin_token" not in table:
        return table, []
    values, problems = resolve_secrets({"admin_token": table["admin_token"]}, os.environ)
    token = values.get("admin_token")
    lines = [f"relay.admin_token: {message}" for _, message in problems]
    if not problems and not token:
        lines.append("relay.admin_token: must not be empty")
    return {**table, "admin_token": token or None}, lines


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
