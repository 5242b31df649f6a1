"""Compose templates: ``@{{path}}`` placeholders and ``%secret%`` references, compiled once.

The language is deliberately tiny (peers.md: template engines with expressions get sandbox
escapes). A template is literal text, placeholders that name a value of the event, and references
to secrets from ``[secrets]``; nothing else. Templates are compiled when the configuration loads,
so a malformed one stops the relay at start with its place named, never at the first delivery.

Rendering is one pass over the compiled parts: a value taken from an event is data, and is
inserted as it is, even when it contains ``@{{...}}`` or ``%...%``.

Lookup: ``@{{payload.a.b}}`` is rooted at the event's payload; any other path is looked up in the
payload first, then in the envelope (``event``, ``webhook_id``). A segment of digits indexes a
list (``@{{payload.channels.0.to}}``). ``mobile``, when the payload has no such key, is the
customer's number: ``recipient.from`` on incoming messages (``...:in`` events), ``to`` otherwise.

This module does no I/O: the environment arrives as a mapping.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlencode

from attrs import field, frozen

from relay.http11 import HEADER_NAME, HEADER_VALUE, REQUEST_TARGET
from relay.model import PermanentFailure, Request

SECRET_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_TOKEN = re.compile(r"@\{\{|%([A-Za-z_][A-Za-z0-9_]*)%")
_PATH = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\Z")
_HEX2 = re.compile(r"[0-9A-Fa-f]{2}")
_TRANSPORT_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
JSON_TYPE = "application/json"
FORM_TYPE = "application/x-www-form-urlencoded"


class RenderError(PermanentFailure):
    """This event can never render for this webhook: retrying would fail the same way."""


class TemplateError(ValueError):
    """A malformed template; the caller adds the place (``webhooks[0].body.mobile``)."""


@frozen
class Text:
    text: str


@frozen
class Placeholder:
    path: tuple[str, ...]
    source: str  # as written, for error messages


@frozen
class Secret:
    name: str
    value: str = field(repr=False)


Part = Text | Placeholder | Secret


@frozen
class Template:
    parts: tuple[Part, ...]

    @property
    def only(self) -> Placeholder | None:
        """The placeholder, when the template is exactly one (a JSON value keeps its type)."""
        if len(self.parts) == 1 and isinstance(self.parts[0], Placeholder):
            return self.parts[0]
        return None

    @property
    def has_references(self) -> bool:
        return any(not isinstance(p, Text) for p in self.parts)

    def render(self, context: Context, encode=lambda text: text) -> str:
        """Literal text as written; secrets and values through ``encode``."""
        out = []
        for part in self.parts:
            if isinstance(part, Text):
                out.append(part.text)
            elif isinstance(part, Secret):
                out.append(encode(part.value))
            else:
                out.append(encode(_text(context.value(part))))
        return "".join(out)


def parse(source: str, secrets: Mapping[str, str], *, url: bool = False) -> Template:
    """Compile ``source``; raise TemplateError on a malformed placeholder or an unknown secret.

    In a URL, ``%`` followed by two hex digits is percent-encoding unless it starts a declared
    secret's reference, so ``%C3%A9`` stays as written.
    """
    parts: list[Part] = []
    literal: list[str] = []
    pos = 0
    while (match := _TOKEN.search(source, pos)) is not None:
        literal.append(source[pos : match.start()])
        name = match.group(1)
        if name is None:
            end = source.find("}}", match.end())
            if end < 0:
                raise TemplateError(f"unclosed {source[match.start() :][:40]!r}: missing }}}}")
            inner = source[match.end() : end]
            written = source[match.start() : end + 2]
            if not inner:
                raise TemplateError("empty placeholder @{{}}")
            if not _PATH.match(inner):
                raise TemplateError(
                    f"bad placeholder {written}: a path is names or list indexes joined by "
                    "dots, like @{{payload.recipient.from}} or @{{payload.channels.0.to}}"
                )
            parts.extend(_flush(literal))
            parts.append(Placeholder(path=tuple(inner.split(".")), source=written))
            pos = end + 2
        elif name in secrets:
            parts.extend(_flush(literal))
            parts.append(Secret(name=name, value=secrets[name]))
            pos = match.end()
        elif url and _HEX2.match(name):
            literal.append("%")
            pos = match.start() + 1
        else:
            declared = ", ".join(sorted(secrets)) or "none"
            raise TemplateError(f"unknown secret %{name}% (declared in [secrets]: {declared})")
    literal.append(source[pos:])
    parts.extend(_flush(literal))
    return Template(parts=tuple(parts))


def _flush(literal: list[str]) -> list[Text]:
    text = "".join(literal)
    literal.clear()
    return [Text(text)] if text else []


_MISSING = object()


@frozen
class Context:
    """One event's envelope, and what a placeholder with no value renders as."""

    envelope: Mapping[str, Any]
    fail_on_missing: bool = False

    def value(self, placeholder: Placeholder) -> Any:
        found = lookup(self.envelope, placeholder.path)
        if found is not _MISSING:
            return found
        if self.fail_on_missing:
            raise RenderError(
                f'{placeholder.source} has no value in this event (on_missing = "fail")'
            )
        return ""


def lookup(envelope: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    payload = envelope.get("payload")
    if not isinstance(payload, Mapping):
        payload = {}
    if path[0] == "payload" and len(path) > 1:
        rest, found = path[1:], _walk(payload, path[1:])
    else:
        rest, found = path, _walk(payload, path)
        if found is _MISSING:
            found = _walk(envelope, path)
    if found is _MISSING and rest == ("mobile",):
        event = envelope.get("event")
        incoming = isinstance(event, str) and event.endswith(":in")
        found = _walk(payload, ("recipient", "from") if incoming else ("to",))
    return found


def _walk(node: Any, path: tuple[str, ...]) -> Any:
    for segment in path:
        if isinstance(node, Mapping):
            node = node.get(segment, _MISSING)
        elif isinstance(node, list) and segment.isdigit() and int(segment) < len(node):
            node = node[int(segment)]
        else:
            return _MISSING
        if node is _MISSING:
            return node
    return node


def _text(value: Any) -> str:
    """A value as text: strings as they are, null as nothing, the rest as compact JSON."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _url_quote(text: str) -> str:
    """Encode every delimiter, so a value stays one path segment or one query value; a value of
    ``.`` or ``..`` is encoded too, so it cannot climb the path."""
    if text in (".", ".."):
        return "%2E" * len(text)
    return quote(text, safe="")


@frozen
class JsonConst:
    value: Any


@frozen
class JsonArray:
    items: tuple[JsonNode, ...]


@frozen
class JsonObject:
    items: tuple[tuple[str, JsonNode], ...]


JsonNode = Template | JsonConst | JsonArray | JsonObject


@frozen
class JsonBody:
    root: JsonObject

    def render(self, context: Context) -> tuple[str, bytes]:
        value = _json_value(self.root, context)
        return JSON_TYPE, json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def _json_value(node: JsonNode, context: Context) -> Any:
    if isinstance(node, Template):
        only = node.only
        return context.value(only) if only is not None else node.render(context)
    if isinstance(node, JsonConst):
        return node.value
    if isinstance(node, JsonArray):
        return [_json_value(item, context) for item in node.items]
    return {key: _json_value(item, context) for key, item in node.items}


@frozen
class FormBody:
    """``key=value`` pairs; an array in the config repeats its key."""

    fields: tuple[tuple[str, Template], ...]
    multipart: bool = False

    def render(self, context: Context) -> tuple[str, bytes]:
        pairs = [(key, template.render(context)) for key, template in self.fields]
        if self.multipart:
            return _multipart(pairs)
        return FORM_TYPE, urlencode(pairs).encode("ascii")


def _multipart(pairs: list[tuple[str, str]]) -> tuple[str, bytes]:
    """multipart/form-data as a browser's FormData sends text fields.

    The boundary is a hash of the content, so every attempt sends the same bytes, and no value
    can hold it: that would take a value containing the SHA-256 of itself.
    """
    parts = [(_disposition_name(key).encode(), value.encode()) for key, value in pairs]
    content = b"\0".join(name + b"\0" + value for name, value in parts)
    boundary = b"relay-" + hashlib.sha256(content).hexdigest()[:40].encode()
    body = b"".join(
        b'--%s\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n' % (boundary, n, v)
        for n, v in parts
    )
    body += b"--%s--\r\n" % boundary
    return f"multipart/form-data; boundary={boundary.decode()}", body


def _disposition_name(key: str) -> str:
    """The WHATWG HTML escaping of a field name inside ``name="..."``."""
    return key.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


@frozen
class RequestTemplate:
    """A compose webhook's request, compiled; ``render`` turns one event into a Request."""

    method: str
    url: Template
    headers: tuple[tuple[str, Template], ...]
    body: JsonBody | FormBody | None
    fail_on_missing: bool = False

    def render(self, envelope: Mapping[str, Any], event_body: bytes) -> Request:
        """Raise RenderError (a PermanentFailure) when this event cannot make a sendable request.

        With no ``body`` configured, a method that carries a body sends the event as it came.
        """
        context = Context(envelope, self.fail_on_missing)
        url = self.url.render(context, _url_quote)
        headers = [(name, _header_value(name, t.render(context))) for name, t in self.headers]
        if self.method not in BODY_METHODS:
            return Request(method=self.method, url=url, headers=tuple(headers))
        if self.body is None:
            content_type, body = JSON_TYPE, event_body
        else:
            content_type, body = self.body.render(context)
        if not any(name.lower() == "content-type" for name, _ in headers):
            headers.append(("Content-Type", content_type))
        return Request(method=self.method, url=url, headers=tuple(headers), body=body)


def _header_value(name: str, value: str) -> str:
    value = value.strip(" \t")  # optional whitespace around a value is not part of it
    if any(c in value for c in "\r\n\0"):
        raise RenderError(f"header {name}: the rendered value contains CR, LF or NUL; not sent")
    if not HEADER_VALUE.match(value):
        raise RenderError(
            f"header {name}: the rendered value has non-ASCII or control characters, "
            "which an HTTP/1.1 header cannot carry; not sent"
        )
    return value


Problems = list[tuple[str, str]]


def compile_request(
    *,
    method: str | None,
    url: str,
    headers: Mapping[str, str] | None,
    body: Mapping[str, Any] | None,
    body_format: str | None,
    on_missing: str,
    secrets: Mapping[str, str],
) -> tuple[RequestTemplate | None, Problems]:
    """Compile a webhook's request; None when nothing in it is composed (a plain webhook).

    Problems are ``(place, message)`` pairs, the place relative to the webhook (``body.id``).
    A URL with a placeholder or a secret is composed even without the other keys, so it is
    never sent with ``@{{`` in it.
    """
    problems: Problems = []
    url_template = _compile_url(url, secrets, problems)
    composed = (method, headers, body, body_format) != (None,) * 4
    if not composed and (url_template is None or not url_template.has_references):
        return None, problems
    method = method or "POST"
    if body is not None and method not in BODY_METHODS:
        problems.append(("body", f"{method} requests carry no body; remove it or use POST"))
    if body is None and body_format is not None:
        problems.append(("body_format", "there is no body to format: add a body table"))
    body_format = body_format or "json"
    multipart = body_format == "multipart"
    compiled_headers = _compile_headers(headers or {}, multipart, secrets, problems)
    compiled_body = None
    if body is not None:
        if body_format == "json":
            compiled_body = JsonBody(_json_node(body, "body", secrets, problems))
        else:
            fields = _form_fields(body, secrets, problems)
            compiled_body = FormBody(fields=fields, multipart=multipart)
    if problems:
        return None, problems
    template = RequestTemplate(
        method=method,
        url=url_template,
        headers=compiled_headers,
        body=compiled_body,
        fail_on_missing=on_missing == "fail",
    )
    return template, problems


def _compile_url(url: str, secrets, problems: Problems) -> Template | None:
    try:
        template = parse(url, secrets, url=True)
    except TemplateError as e:
        problems.append(("url", str(e)))
        return None
    scheme_end = url.find("://")
    authority_end = len(url)
    for delimiter in "/?#":
        found = url.find(delimiter, scheme_end + 3)
        if found >= 0:
            authority_end = min(authority_end, found)
    written = 0
    for part in template.parts:
        if not isinstance(part, Text) and written < authority_end:
            problems.append(
                ("url", "placeholders and secrets may not appear in the scheme, host or port")
            )
            return None
        if isinstance(part, Text):
            if not REQUEST_TARGET.match(part.text):
                problems.append(
                    ("url", "spaces, control and non-ASCII characters must be percent-encoded")
                )
                return None
            written += len(part.text)
        else:
            written += len(part.source) if isinstance(part, Placeholder) else len(part.name) + 2
    return template


def _compile_headers(headers, multipart: bool, secrets, problems: Problems):
    """Literal text and secrets are checked now; only event values are left to render time."""
    compiled = []
    seen: set[str] = set()
    for name, source in headers.items():
        place = f"headers.{_key(name)}"
        lowered = name.lower()
        if not HEADER_NAME.match(name):
            problems.append((place, "not a valid header name"))
            continue
        if lowered in seen:
            problems.append((place, "set twice (header names are case-insensitive)"))
            continue
        seen.add(lowered)
        if lowered in _TRANSPORT_HEADERS:
            problems.append((place, "set by the transport; remove it"))
            continue
        if lowered == "content-type" and multipart:
            problems.append((place, "multipart bodies set it, with their boundary; remove it"))
            continue
        try:
            template = parse(source, secrets)
        except TemplateError as e:
            problems.append((place, str(e)))
            continue
        unsendable = [
            f"secret %{part.name}%" if isinstance(part, Secret) else "the text"
            for part in template.parts
            if isinstance(part, (Text, Secret))
            and not HEADER_VALUE.match(part.text if isinstance(part, Text) else part.value)
        ]
        if unsendable:
            problems.append((place, f"{unsendable[0]} has CR, LF, NUL, control or non-ASCII text"))
        else:
            compiled.append((name, template))
    return tuple(compiled)


def _json_node(value: Any, place: str, secrets, problems: Problems) -> JsonNode:
    if isinstance(value, str):
        try:
            return parse(value, secrets)
        except TemplateError as e:
            problems.append((place, str(e)))
            return JsonConst(None)
    if isinstance(value, Mapping):
        return JsonObject(
            tuple(
                (k, _json_node(v, f"{place}.{_key(k)}", secrets, problems))
                for k, v in value.items()
            )
        )
    if isinstance(value, list):
        return JsonArray(
            tuple(_json_node(v, f"{place}[{i}]", secrets, problems) for i, v in enumerate(value))
        )
    if isinstance(value, (bool, int)) or (isinstance(value, float) and math.isfinite(value)):
        return JsonConst(value)
    problems.append((place, "use a string, number, boolean, table or array"))
    return JsonConst(None)


def _form_fields(body: Mapping[str, Any], secrets, problems: Problems):
    fields = []
    for key, value in body.items():
        place = f"body.{_key(key)}"
        values = value if isinstance(value, list) else [value]
        for i, item in enumerate(values):
            where = f"{place}[{i}]" if isinstance(value, list) else place
            if isinstance(item, bool):
                item = "true" if item else "false"
            elif isinstance(item, (int, float)):
                item = json.dumps(item)
            if not isinstance(item, str):
                problems.append((where, "form fields are flat: use a string or an array of them"))
                continue
            try:
                fields.append((key, parse(item, secrets)))
            except TemplateError as e:
                problems.append((where, str(e)))
    return tuple(fields)


def _key(key: str) -> str:
    """A key as TOML would write it in a dotted place."""
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def resolve_secrets(table: Any, environ: Mapping[str, str]) -> tuple[dict[str, str], Problems]:
    """``[secrets]``: ``name = "literal"`` or ``name = { env = "VARIABLE" }``, resolved now so a
    missing variable stops the relay at start. Problems name secrets and variables, never values;
    a secret that did not resolve still maps to "" so its references are not reported twice."""
    if not isinstance(table, Mapping):
        return {}, [("secrets", "expected a table ([secrets])")]
    values: dict[str, str] = {}
    problems: Problems = []
    for name, spec in table.items():
        place = f"secrets.{_key(name)}"
        if not SECRET_NAME.match(name):
            problems.append((place, "a secret's name is letters, digits and _, not a digit first"))
            continue
        values[name] = ""
        if isinstance(spec, str):
            values[name] = spec
        elif isinstance(spec, Mapping) and set(spec) == {"env"} and isinstance(spec["env"], str):
            value = environ.get(spec["env"])
            if not value:
                state = "is not set" if value is None else "is empty"
                problems.append((place, f"environment variable {spec['env']} {state}"))
            else:
                values[name] = value
        else:
            problems.append((place, 'expected a string or { env = "VARIABLE" }'))
    return values, problems
