"""Reading events for ``relay send``: one event object, an array of them, or JSON lines, each
event kept as the exact text it came as, with the line it starts on.

The exact text, so that what the relay journals (and plain webhooks receive) is what the file
holds, not a re-serialization of it; the line, so that a problem the relay names in an event
(``[3].payload: must be an object``) can be shown where the user will find it.
"""

from __future__ import annotations

import json
import re
from typing import NamedTuple

from relay.cli.common import CommandError


class Item(NamedTuple):
    data: bytes  # the event's JSON text, as it is in the input, UTF-8
    line: int  # the line of the input it starts on


_DECODER = json.JSONDecoder()
_SPACE = re.compile(r"[ \t\n\r]*")
_KINDS = {list: "an array", str: "a string", bool: "true or false", type(None): "null"}


def decode(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise CommandError(f"{name}: line {line}: not UTF-8 text (byte {e.start})") from None


def read_events(text: str, name: str) -> list[Item]:
    """Every event in ``text``: a sequence of JSON values separated by white space (JSON lines
    are one; so is ``jq``'s pretty-printed output), each an event object or an array of them."""
    items: list[Item] = []
    at = _SPACE.match(text).end()
    while at < len(text):
        if text[at] == "[":
            at = _SPACE.match(text, at + 1).end()
            if text.startswith("]", at):
                at += 1
            else:
                while True:
                    at = _SPACE.match(text, _value(text, at, name, items)).end()
                    if text.startswith(",", at):
                        at = _SPACE.match(text, at + 1).end()
                    elif text.startswith("]", at):
                        at += 1
                        break
                    else:
                        _fail(text, at, name, "Expecting ',' or ']' after an event", at)
        else:
            at = _value(text, at, name, items)
        at = _SPACE.match(text, at).end()
    if not items:
        raise CommandError(f"{name}: no events in it")
    return items


def _value(text: str, start: int, name: str, items: list[Item]) -> int:
    """Parse the event that starts at ``start`` into ``items``; where it ends."""
    try:
        value, end = _DECODER.raw_decode(text, start)
    except json.JSONDecodeError as e:
        _fail(text, e.pos, name, e.msg, start)
    except RecursionError:
        _fail(text, start, name, "nested too deeply", start)
    line = _line(text, start)
    if not isinstance(value, dict):
        kind = _KINDS.get(type(value), "a number")
        raise CommandError(f"{name}: line {line}: expected an event object ({{...}}), got {kind}")
    items.append(Item(text[start:end].encode(), line))
    return end


def _fail(text: str, at: int, name: str, message: str, start: int):
    """A usage error at ``at`` (line and column, as editors count them); the line the value
    started on too, when that is another: a missing brace shows only on a later line."""
    line = _line(text, at)
    column = at - text.rfind("\n", 0, at)
    began = _line(text, start)
    where = f" (in the value that starts on line {began})" if began != line else ""
    raise CommandError(f"{name}: line {line}, column {column}: not valid JSON: {message}{where}")


def _line(text: str, at: int) -> int:
    return text.count("\n", 0, at) + 1
