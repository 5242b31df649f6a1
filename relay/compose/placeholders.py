"""Compose templates: ``@{{path}}`` placeholders and ``%secret%`` references, compiled once.

The language is deliberately tiny (peers.md: template engines with expressions get sandbox
escapes). A template is literal text, placeholders that name a value of the event, and references
to secrets from ``[secrets]``; nothing else. Templates are compiled when the configuration loads,
so a malformed one stops the relay at start with its place named, never at the first delivery.

Rendering is one pass over the compiled parts: a value taken from an event is data, and is
inserted as it is, even when it contains ``@{{...}}`` or ``%...%``.

Lookup (``lookup``), in this order:

- ``@{{payload.a.b}}`` is rooted at the event's payload. A segment of digits indexes a list
  (``@{{payload.channels.0.to}}``). ``@{{payload.NAME}}`` where the payload has no key NAME is
  the variable NAME, as the reference writes its variables (``@{{payload.mobile}}``).
- A bare name that is a declared variable (relay/compose/variables.py) takes its meaning on
  event types the table knows: ``@{{from}}`` is the business number on a status event and on an
  incoming one alike, and a variable that type does not declare has no value.
- Any other path is looked up in the payload first, then in the envelope (``event``,
  ``webhook_id``); so is every name on an event type the table does not know.

This module does no I/O: the environment arrives as a mapping.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from attrs import field, frozen

from relay.compose.variables import NO_VARIABLES, Path, Variables
from relay.model import PermanentFailure

SECRET_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_TOKEN = re.compile(r"@\{\{|%([A-Za-z_][A-Za-z0-9_]*)%")
_PATH = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\Z")
_HEX2 = re.compile(r"[0-9A-Fa-f]{2}")
TRANSPORT_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})

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


def parse(
    source: str, secrets: Mapping[str, str], *, url: bool = False, quote: bool = True
) -> Template:
    """Compile ``source``; raise TemplateError on a malformed placeholder or an unknown secret.

    In a URL, ``%`` followed by two hex digits is percent-encoding unless it starts a declared
    secret's reference, so ``%C3%A9`` stays as written. With ``quote=False`` the errors quote
    none of ``source``: a header's value may be a token written in as it is.
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
                what = repr(source[match.start() :][:40]) if quote else "@{{..."
                raise TemplateError(f"unclosed {what}: missing }}}}")
            inner = source[match.end() : end]
            written = source[match.start() : end + 2]
            if not inner:
                raise TemplateError("empty placeholder @{{}}")
            if not _PATH.match(inner):
                raise TemplateError(
                    f"bad placeholder {written if quote else '@{{...}}'}: a path is names or "
                    "list indexes joined by dots, like @{{payload.recipient.from}} or "
                    "@{{payload.channels.0.to}}"
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
            what = f"%{name}%" if quote else "%...%"
            raise TemplateError(f"unknown secret {what} (declared in [secrets]: {declared})")
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
    """One event's envelope, its type's variables, and what a placeholder with no value
    renders as."""

    envelope: Mapping[str, Any]
    fail_on_missing: bool = False
    variables: Variables = NO_VARIABLES
    declared: Mapping[str, tuple[Path, ...]] | None = field(init=False)

    @declared.default
    def _declared(self):
        return self.variables.declared(self.envelope.get("event"))

    def value(self, placeholder: Placeholder) -> Any:
        found = lookup(self.envelope, placeholder.path, self.declared, self.variables.names)
        if found is not _MISSING:
            return found
        if self.fail_on_missing:
            raise RenderError(
                f'{placeholder.source} has no value in this event (on_missing = "fail")'
            )
        return ""


def lookup(
    envelope: Mapping[str, Any],
    path: tuple[str, ...],
    declared: Mapping[str, tuple[Path, ...]] | None = None,
    names: frozenset[str] = frozenset(),
) -> Any:
    """The value ``path`` names in ``envelope`` (the module's docstring gives the rules), or
    ``_MISSING``. ``declared`` is the event type's variables (None: a type no plugin declares),
    ``names`` every declared variable's name."""
    payload = envelope.get("payload")
    if not isinstance(payload, Mapping):
        payload = {}
    if path[0] == "payload" and len(path) > 1:
        found = _walk(payload, path[1:])
        if found is _MISSING and len(path) == 2 and declared is not None:
            found = _variable(envelope, declared.get(path[1]))
        return found
    if len(path) == 1 and declared is not None and path[0] in names:
        return _variable(envelope, declared.get(path[0]))
    found = _walk(payload, path)
    return found if found is not _MISSING else _walk(envelope, path)


def _variable(envelope: Mapping[str, Any], paths: tuple[Path, ...] | None) -> Any:
    """The first of a variable's paths with a value; a variable not declared has none."""
    for path in paths or ():
        found = _walk(envelope, path)
        if found is not _MISSING:
            return found
    return _MISSING


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


def url_quote(text: str) -> str:
    """Encode every delimiter, so a value stays one path segment or one query value; a value of
    ``.`` or ``..`` is encoded too, so it cannot climb the path."""
    if text in (".", ".."):
        return "%2E" * len(text)
    return quote(text, safe="")
