"""Who may use the console, and which POSTs are the console's own.

A browser cannot send the admin token as a bearer header, so the console keeps a session in a
cookie (``relay_console``: HttpOnly, so no script reads it; SameSite=Strict, so no other site's
page sends it): a random id, when it was issued, and an HMAC of both. With ``admin_token`` set
the HMAC's key is derived from the token: the login form, which asks for the token once, is the
only way to a session, a session outlives a restart of the relay, and changing the token ends
every session. Without one (a loopback listener) there is no login: the key is random, made
when the relay starts, and any page sets a session when the browser has none.

Every POST must pass two checks, either of which alone stops a cross-site request:
- its ``csrf`` form field is the session's token (an HMAC of the session id, under another
  label), which only a page of the console shows;
- its ``Origin`` is the admin listener's own: the address the connection came in on (or the
  configured host name, ``localhost``, or a name of ``[relay] allow_hosts``) at that port. A
  page served under a rebound DNS name has that name as its origin, and is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time

from relay.http.server import HTTPRequest

COOKIE = "relay_console"
LIFETIME = 12 * 3600  # seconds a session lasts
_LABEL = b"relay console session key"


def session_key(token: str | None, fallback: bytes) -> bytes:
    """The sessions' HMAC key: from the token when one is set, else the relay run's own."""
    if token is None:
        return fallback
    return hmac.new(token.encode("utf-8"), _LABEL, hashlib.sha256).digest()


def _mac(key: bytes, label: str, text: str) -> str:
    return hmac.new(key, f"{label}:{text}".encode(), hashlib.sha256).hexdigest()


def new_session(key: bytes, now: float | None = None) -> str:
    """A cookie value: ``issued.id.mac``."""
    issued = int(time.time() if now is None else now)
    body = f"{issued}.{secrets.token_hex(16)}"
    return f"{body}.{_mac(key, 'session', body)}"


def valid_session(key: bytes, value: str | None, now: float | None = None) -> str | None:
    """The session's id when ``value`` is a session this key issued and it has not expired."""
    if not value or value.count(".") != 2:
        return None
    body, _, mac = value.rpartition(".")
    if not hmac.compare_digest(mac.encode(), _mac(key, "session", body).encode()):
        return None
    issued, _, sid = body.partition(".")
    now = time.time() if now is None else now
    if not issued.isdigit() or not 0 <= now - int(issued) < LIFETIME:
        return None
    return body


def csrf_token(key: bytes, session: str) -> str:
    return _mac(key, "csrf", session)


def csrf_matches(key: bytes, session: str, sent: str | None) -> bool:
    return sent is not None and hmac.compare_digest(
        sent.encode(), csrf_token(key, session).encode()
    )


def token_matches(token: str, sent: str) -> bool:
    """The login form's token, compared in constant time."""
    return hmac.compare_digest(sent.encode("utf-8"), token.encode("utf-8"))


def cookie_of(request: HTTPRequest) -> str | None:
    for part in request.headers.get("cookie", "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE:
            return value
    return None


def set_cookie(value: str) -> tuple[str, str]:
    return (
        "Set-Cookie",
        f"{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={LIFETIME}",
    )


def clear_cookie() -> tuple[str, str]:
    return ("Set-Cookie", f"{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")


def own_origins(request: HTTPRequest, config) -> set[str]:
    """The origins of the admin listener for this connection: ``http://HOST:PORT`` with the
    address it came in on, the configured host and ``localhost`` (and the names of
    ``allow_hosts``, when the configuration has it) as HOST."""
    relay = config.relay
    host, _, port = (relay.admin or "").rpartition(":")
    names = {host.strip("[]"), "localhost", *(getattr(relay, "allow_hosts", None) or ())}
    try:
        local = request.stream.socket.getsockname()
        names.add(local[0])
        port = str(local[1])
    except (AttributeError, OSError, IndexError):
        pass  # not a socket (a test's stream): the configured address
    suffix = "" if port == "80" else f":{port}"  # a browser leaves out the default port
    return {f"http://{_bracketed(name.lower())}{suffix}" for name in names if name}


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def origin_problem(request: HTTPRequest, config) -> str | None:
    """Why a POST's ``Origin`` is not the console's own, or None when it is."""
    origin = request.headers.get("origin")
    if origin is None:
        return "no Origin header: the console's forms are posted by a browser, which sends one"
    if origin.lower().rstrip("/") not in own_origins(request, config):
        return f"Origin {origin[:100]!r} is not this admin listener's"
    return None


def process_key() -> bytes:
    return os.urandom(32)
