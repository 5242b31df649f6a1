"""A compose webhook's request, compiled once: its URL, method, headers and JSON, form or
multipart body, each a tree of the templates of relay/compose/placeholders.py.

``compile_request`` checks everything a webhook's keys can get wrong when the file loads, naming
the place (``body.mobile``), so that rendering an event can fail only on the event itself.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlencode

import attrs
from attrs import frozen

from relay.compose.placeholders import (
    BODY_METHODS,
    FORM_TYPE,
    JSON_TYPE,
    SECRET_NAME,
    TRANSPORT_HEADERS,
    Context,
    Placeholder,
    RenderError,
    Secret,
    Template,
    TemplateError,
    Text,
    parse,
    url_quote,
)
from relay.compose.variables import NO_VARIABLES, Variables
from relay.http.http11 import HEADER_NAME, HEADER_VALUE, REQUEST_TARGET
from relay.model import Request


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
    # What the variables mean per event type: the plugins' declarations, bound after they load
    # (relay.plugins.Components.bind); until then no name is a variable.
    variables: Variables = NO_VARIABLES

    def render(self, envelope: Mapping[str, Any], event_body: bytes) -> Request:
        """Raise RenderError (a PermanentFailure) when this event cannot make a sendable request.

        With no ``body`` configured, a method that carries a body sends the event as it came.
        """
        context = Context(envelope, self.fail_on_missing, self.variables)
        url = self.url.render(context, url_quote)
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

    def with_variables(self, variables: Variables) -> RequestTemplate:
        return attrs.evolve(self, variables=variables)

    def used_variables(self) -> dict[str, str]:
        """The declared variables this template names, bare or as ``payload.NAME``, each with
        the placeholder as first written (for ``relay check``)."""
        names = self.variables.names
        used: dict[str, str] = {}
        for placeholder in self._placeholders():
            path = placeholder.path
            name = path[-1] if len(path) == 1 or (len(path) == 2 and path[0] == "payload") else ""
            if name in names:
                used.setdefault(name, placeholder.source)
        return used

    def secrets_used(self) -> tuple[frozenset[str], frozenset[str]]:
        """The ``[secrets]`` values this template puts into requests, and the names
        (lowercased) of the headers that carry one: what a record of a request masks."""
        values = {p.value for t in self._templates() for p in t.parts if isinstance(p, Secret)}
        headers = {
            name.lower()
            for name, template in self.headers
            if any(isinstance(part, Secret) for part in template.parts)
        }
        return frozenset(filter(None, values)), frozenset(headers)

    def _templates(self) -> list[Template]:
        templates = [self.url, *(t for _, t in self.headers)]
        if isinstance(self.body, FormBody):
            templates.extend(t for _, t in self.body.fields)
        elif isinstance(self.body, JsonBody):
            templates.extend(_json_templates(self.body.root))
        return templates

    def _placeholders(self) -> Iterator[Placeholder]:
        for template in self._templates():
            yield from (p for p in template.parts if isinstance(p, Placeholder))


def _json_templates(node: JsonNode) -> Iterator[Template]:
    if isinstance(node, Template):
        yield node
    elif isinstance(node, JsonArray):
        for item in node.items:
            yield from _json_templates(item)
    elif isinstance(node, JsonObject):
        for _, item in node.items:
            yield from _json_templates(item)


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
        if lowered in TRANSPORT_HEADERS:
            problems.append((place, "set by the transport; remove it"))
            continue
        if lowered == "content-type" and multipart:
            problems.append((place, "multipart bodies set it, with their boundary; remove it"))
            continue
        try:
            template = parse(source, secrets, quote=False)  # errors may name the header only
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
