"""Replaced variables: names with one meaning on every event type, found where each type keeps it.

The reference's table says ``from`` is the WhatsApp business number and ``to`` the customer's
number. A status event keeps them in ``payload.from`` and ``payload.to``; an incoming message in
``payload.channels.0.to`` and ``payload.recipient.from``. So a variable is not a path: a
``Variables`` table says, per event type, which path (or paths, the first with a value wins)
holds it. Plugins declare the entries (the ``register_variables`` hook); the built-in ones are
relay/plugins/builtin/variables.py.

Event types are exact names, not patterns: a variable's place depends on the type, and
``relay check`` compares a webhook's ``events`` patterns with these names to say which variables
its events cannot fill. Paths start at the envelope (``payload.to``, ``webhook_id``).

How a placeholder uses this table is in relay/compose/placeholders.py (``lookup``).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from typing import Any

from attrs import field, frozen

Path = tuple[str, ...]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*\Z")
_PATH = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\Z")
_PATTERN_CHARS = frozenset("*?[")


class VariableError(ValueError):
    """A declaration that cannot be used; the caller adds who declared it."""


@frozen
class Variables:
    """event type -> variable -> paths in the envelope, and who declared each entry."""

    by_type: Mapping[str, Mapping[str, tuple[Path, ...]]] = field(factory=dict)
    owners: Mapping[tuple[str, str], str] = field(factory=dict, repr=False)
    names: frozenset[str] = field(init=False)

    @names.default
    def _names(self) -> frozenset[str]:
        """Every declared name: on a known event type that lacks one, it has no value."""
        return frozenset(name for declared in self.by_type.values() for name in declared)

    def declared(self, event_type: Any) -> Mapping[str, tuple[Path, ...]] | None:
        """The variables of ``event_type``; None for a type no plugin declares."""
        return self.by_type.get(event_type) if isinstance(event_type, str) else None

    def event_types(self, patterns: Iterable[str]) -> list[str]:
        """The known event types a webhook's ``events`` patterns match. No patterns: every
        type, since an event sent with the webhook's id may be of any type."""
        patterns = tuple(patterns)
        return [
            event_type
            for event_type in sorted(self.by_type)
            if not patterns or any(fnmatch.fnmatchcase(event_type, p) for p in patterns)
        ]

    def unfilled(
        self, used: Mapping[str, str], patterns: Iterable[str]
    ) -> list[tuple[str, str, str]]:
        """``(source, variable, event type)`` for each variable in ``used`` (name -> the
        placeholder as written) that a known event type matched by ``patterns`` does not have."""
        return [
            (source, name, event_type)
            for event_type in self.event_types(patterns)
            for name, source in used.items()
            if name not in self.by_type[event_type]
        ]


NO_VARIABLES = Variables()


class VariableTable:
    """Collects declarations from plugins; two declaring the same variable of the same event
    type is an error naming both, never a silent override."""

    def __init__(self) -> None:
        self._by_type: dict[str, dict[str, tuple[Path, ...]]] = {}
        self._owners: dict[tuple[str, str], str] = {}

    def add(self, event_type: Any, variables: Any, owner: str) -> None:
        """Declare ``variables`` (name -> path or list of paths) for ``event_type``; raise
        VariableError, naming the entry, on anything unusable. Nothing is added then."""
        if not isinstance(event_type, str) or not event_type:
            raise VariableError(f"event type must be a non-empty string, got {event_type!r}")
        if _PATTERN_CHARS & set(event_type):
            raise VariableError(f"{event_type!r}: an event type is an exact name, not a pattern")
        if not isinstance(variables, Mapping):
            raise VariableError(f"{event_type}: expected a mapping of variable -> path(s)")
        compiled = {}
        for name, paths in variables.items():
            where = f"{event_type}: variable {name!r}"
            if not isinstance(name, str) or not _NAME.match(name) or name == "payload":
                raise VariableError(f"{where}: a name is letters, digits, _ and -, not 'payload'")
            previous = self._owners.get((event_type, name))
            if previous is not None:
                raise VariableError(f"{where} is already declared by {previous}")
            compiled[name] = _paths(paths, where)
        declared = self._by_type.setdefault(event_type, {})
        for name, paths in compiled.items():
            declared[name] = paths
            self._owners[(event_type, name)] = owner

    def build(self) -> Variables:
        return Variables(
            by_type={t: dict(declared) for t, declared in self._by_type.items()},
            owners=dict(self._owners),
        )


def _paths(spec: Any, where: str) -> tuple[Path, ...]:
    specs = [spec] if isinstance(spec, str) else spec
    if not isinstance(specs, (list, tuple)) or not specs:
        raise VariableError(f"{where}: expected a path or a non-empty list of paths")
    paths = []
    for text in specs:
        if not isinstance(text, str) or not _PATH.match(text):
            raise VariableError(
                f"{where}: {text!r} is not a path (names or list indexes joined by dots, "
                "from the envelope: payload.channels.0.to)"
            )
        paths.append(tuple(text.split(".")))
    return tuple(paths)
