"""``relay listen``: a receiver on this machine for trying webhooks out, as ``stripe listen`` and
``svix listen`` are: it prints each request readably, says whether its ``Signature`` verifies,
and answers ``--status``.

It runs on relay's own HTTP server (relay/http/server.py), not on h11: that server already does
what a receiver needs (keep-alive, chunked bodies, 100-continue, bounded bodies and waits), it is
the one relay itself runs, and h11 is only a test dependency of relay. What that costs here:
header names arrive lowercased, and a repeated header as one joined with ", " (how RFC 9110
combines them), which changes nothing a receiver would make of the request.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import re
import signal
import sys
import time
from urllib.parse import parse_qsl

import trio

from relay.http.server import HTTPRequest, HTTPServer

MAX_BODY = 16 * 1024 * 1024
SHOWN = 64 * 1024  # characters of a body printed; the rest is counted, not shown
# Headers that carry credentials: printed as their scheme and length unless --show-secrets.
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})
SECRET_WORDS = ("secret", "token", "api-key", "apikey", "password")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--port",
        type=int,
        default=9000,
        help="default: 9000 (relay.toml's example webhook); 0: any free one",
    )
    parser.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1")
    parser.add_argument("--secret", help="check each request's Signature header with it")
    parser.add_argument("--status", type=_status, default=200, help="the answer (default: 200)")
    parser.add_argument(
        "--show-secrets",
        action="store_true",
        help="print Authorization, Cookie and token headers whole (hidden by default)",
    )


def _status(text: str) -> int:
    if not text.isdigit() or not 200 <= int(text) <= 599:
        raise argparse.ArgumentTypeError(f"expected an HTTP status from 200 to 599, got {text!r}")
    return int(text)


def cmd_listen(args) -> int:
    """print the requests that arrive (webhooks to try out) until Ctrl-C"""
    try:
        trio.run(_serve, args)
    except OSError as e:
        print(
            f"relay listen: cannot listen on {args.host}:{args.port}: {e.strerror}", file=sys.stderr
        )
        return 2
    return 0


async def _serve(args) -> None:
    listeners = await trio.open_tcp_listeners(args.port, host=args.host)
    host, port = listeners[0].socket.getsockname()[:2]
    host = f"[{host}]" if ":" in host else host
    print(f"listening on http://{host}:{port}", flush=True)
    printer = Printer(args.secret, args.status, args.show_secrets)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(HTTPServer(printer, max_body=MAX_BODY).serve, listeners)
            async for _ in signals:  # Ctrl-C: stop serving, exit 0
                nursery.cancel_scope.cancel()
                break


def check_signature(secret: str, request: HTTPRequest, signature: str) -> tuple[bool, str]:
    """Whether ``signature`` (a Signature header's value) is relay's for ``request`` keyed with
    ``secret``, and what it signs: lowercase hex HMAC-SHA256 of the body, or, for a request
    without one (a composed GET), of the request target, path and query as sent. If relay's
    scheme changes, this is the function to change."""
    if request.body:
        message, what = request.body, "the body"
    else:
        line = f"{request.method} {_target(request)}"  # as relay.plugins.signed_content
        message, what = line.encode("latin-1"), f"the method and request target {line}"
    expected = hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
    # A repeated header arrives joined with ", ": any one of them may be the right one.
    ok = any(hmac.compare_digest(expected, s.strip().lower()) for s in signature.split(","))
    return ok, what


class Printer:
    """The handler: prints a request, answers ``status``."""

    def __init__(self, secret: str | None, status: int, show_secrets: bool = False):
        self.secret = secret
        self.status = status
        self.show_secrets = show_secrets
        self.count = 0

    async def __call__(self, request: HTTPRequest) -> tuple[int, dict]:
        self.count += 1
        sys.stdout.write(self.render(request))
        sys.stdout.flush()
        return self.status, {"received": self.count}

    def render(self, request: HTTPRequest) -> str:
        now = time.time()
        stamp = time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d}"
        lines = [f"#{self.count} {stamp} {_clean(request.method)} {_clean(_target(request))}"]
        for name, value in request.headers.items():
            lines.append(f"  {_clean(name)}: {_clean(self._header_value(name, value))}")
        lines.extend(_body(request))
        lines.append(f"  -> {self._signature(request)}")
        lines.append(f"  -> answered {self.status}")
        return "\n".join(lines) + "\n\n"

    def _header_value(self, name: str, value: str) -> str:
        secret = name in SECRET_HEADERS or any(word in name for word in SECRET_WORDS)
        if not secret or self.show_secrets:
            return value
        scheme, space, rest = value.partition(" ")
        if not space or not rest:
            scheme, rest = "", value
        return f"{scheme + ' ' if scheme else ''}<{len(rest)} characters hidden: --show-secrets>"

    def _signature(self, request: HTTPRequest) -> str:
        signature = request.headers.get("signature")
        if self.secret is None:
            return "Signature not checked (no --secret)" if signature else "no Signature"
        if signature is None:
            return "Signature MISSING"
        ok, what = check_signature(self.secret, request, signature)
        if ok:
            return f"Signature ok (HMAC-SHA256 of {_clean(what)}, with --secret)"
        return f"Signature DOES NOT VERIFY (expected HMAC-SHA256 of {_clean(what)}, with --secret)"


def _target(request: HTTPRequest) -> str:
    return request.path + (f"?{request.query}" if request.query else "")


def _body(request: HTTPRequest) -> list[str]:
    body = request.body
    if not body:
        return ["  (no body)"]
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";", 1)[0].strip().lower()
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    shown: list[str] | None = None
    kind = media or "no content-type"
    if text is not None and (media.endswith("json") or media == "" and text[:1] in "[{"):
        try:
            shown = json.dumps(json.loads(text), indent=2, ensure_ascii=False).splitlines()
            kind = "JSON"
        except (ValueError, RecursionError):
            kind += ", not valid JSON"
    elif text is not None and media == "application/x-www-form-urlencoded":
        shown = [f"{k} = {v}" for k, v in parse_qsl(text, keep_blank_values=True)]
        kind = "form fields"
    elif media == "multipart/form-data":
        shown = _multipart(content_type, body)
        kind = "multipart fields" if shown is not None else kind
    if shown is None:
        if text is None:
            return [f"  body ({kind}, {len(body)} bytes, not UTF-8 text)"]
        shown = text.replace("\r\n", "\n").split("\n")
    lines = [f"  body ({kind}, {len(body)} bytes):"]
    used = 0
    for number, line in enumerate(shown):
        if used > SHOWN:
            lines.append(f"    ... ({len(shown) - number} more lines)")
            break
        used += len(line) + 1
        lines.append(f"    {_clean(line[:SHOWN])}")
    return lines


def _multipart(content_type: str, body: bytes) -> list[str] | None:
    """``name = value`` for each field, a summary for each file; None if it does not parse."""
    from email import policy
    from email.parser import BytesParser

    head = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1", "replace")
    try:
        message = BytesParser(policy=policy.HTTP).parsebytes(head + body)
        if not message.is_multipart():
            return None
        fields = []
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition") or "?"
            data = part.get_payload(decode=True) or b""
            filename = part.get_filename()
            if filename is not None:
                fields.append(
                    f"{name}: file {filename!r}, {part.get_content_type()}, {len(data)} bytes"
                )
            else:
                fields.append(f"{name} = {data.decode('utf-8', 'replace')}")
        return fields
    except Exception:  # noqa: BLE001 - whatever is malformed is shown as text instead
        return None


_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\ud800-\udfff]")


def _clean(text: str) -> str:
    """What arrived may hold terminal escapes: show control characters, never send them (and
    lone surrogates, which JSON may spell, as no terminal can take them)."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m[0]):02x}", text)
