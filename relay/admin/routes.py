"""Every endpoint of the admin listener, in one table: a row per method and path.

A new endpoint is a row here, its function (``async def endpoint(admin, request, params)``
answering ``(status, dict | Reply)``), and its entry in docs/admin-api.yaml, which
tests/test_admin.py checks the listener against. A path segment ``{name}`` matches any one
segment, handed to the endpoint as ``params["name"]`` (``/api/deliveries/{id}``).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable

from attrs import frozen

from relay.admin import api, deliveries, replays

Endpoint = Callable[..., Awaitable[tuple]]


@frozen
class Route:
    method: str
    path: str
    endpoint: Endpoint


ROUTES = (
    Route("GET", "/metrics", api.metrics),
    Route("GET", "/api/status", api.status),
    Route("GET", "/api/webhooks", api.webhooks),
    Route("POST", "/api/reload", api.reload),
    Route("GET", "/api/deliveries", deliveries.list_deliveries),
    Route("GET", "/api/deliveries/{id}", deliveries.show),
    Route("POST", "/api/replay", replays.replay),
    Route("POST", "/api/webhooks/{id}/disable", replays.disable),
    Route("POST", "/api/webhooks/{id}/enable", replays.enable),
)

_PARAMETER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class Router:
    """Finds a path's routes: exact paths by a dict lookup, patterns by a regex each."""

    def __init__(self, routes: Iterable[Route] = ROUTES):
        self._exact: dict[str, dict[str, Route]] = {}
        self._patterns: list[tuple[re.Pattern, dict[str, Route]]] = []
        by_path: dict[str, dict[str, Route]] = {}
        for route in routes:
            methods = by_path.setdefault(route.path, {})
            if route.method in methods:
                raise ValueError(f"two routes for {route.method} {route.path}")
            methods[route.method] = route
        for path, methods in by_path.items():
            if _PARAMETER.search(path):
                self._patterns.append((_pattern(path), methods))
            else:
                self._exact[path] = methods

    def find(self, path: str) -> tuple[dict[str, Route], dict[str, str]] | None:
        """The routes of ``path`` by method, and the values of its ``{name}`` segments."""
        methods = self._exact.get(path)
        if methods is not None:
            return methods, {}
        for pattern, methods in self._patterns:
            if found := pattern.match(path):
                return methods, found.groupdict()
        return None


def _pattern(path: str) -> re.Pattern:
    parts = []
    for segment in path.split("/"):
        parameter = _PARAMETER.fullmatch(segment)
        parts.append(f"(?P<{parameter[1]}>[^/]+)" if parameter else re.escape(segment))
    return re.compile("/".join(parts) + r"\Z")
