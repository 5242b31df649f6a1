"""The admin listener's handler: the token, then the route, then the endpoint.

Served by relay/http/server.py on ``[relay] admin`` (relay/daemon.py starts it), apart from the
ingest listeners: those are the gateway's, this one is the operators'. The web console (``/``
and ``/console/``, relay/admin/console/) checks its own session; every other answer is JSON but
``/metrics``; a request an endpoint finds wrong is a 400 or 422 naming each field and why, an
endpoint's failure the server's generic 500, the journal's a 503.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import trio

from relay.admin.auth import authorized, refusal
from relay.admin.console import Console
from relay.admin.deliveries import Invalid
from relay.admin.metrics import Metrics
from relay.admin.routes import Router
from relay.clock import Clock
from relay.config import Config
from relay.delivery.stats import DeliveryStats
from relay.http.server import HTTPRequest, Reply
from relay.ingest.stats import IngestStats
from relay.journal import Journal, JournalError


class Delivering(Protocol):
    stats: DeliveryStats

    def in_flight(self) -> int: ...

    def replayed(self, webhook_ids: Iterable[str]) -> None: ...


class Administered(Protocol):
    """What the admin listener needs of the relay it serves (relay.daemon.Relay is one)."""

    config: Config
    clock: Clock
    journal: Journal
    dispatcher: Delivering
    ingest_stats: IngestStats
    pending_at_start: dict[str, int]  # the journal's pending counts when the relay started
    pending_counted: trio.Event  # set once pending_at_start holds them
    started_at: float
    config_loaded_at: float
    stopping: bool

    async def try_reload(self) -> tuple[bool, dict]: ...

    async def set_webhook_enabled(
        self, webhook_id: str, enabled: bool, reason: str | None = None
    ) -> None: ...


class AdminApi:
    """One per relay: it holds the relay's metrics registry."""

    def __init__(self, relay: Administered, router: Router | None = None):
        self.relay = relay
        self.router = router or Router()
        self.metrics = Metrics(relay)
        self.console = Console(self)

    async def __call__(self, request: HTTPRequest) -> tuple[int, dict | Reply]:
        if self.console.serves(request.path):  # a browser's: its session is a cookie
            return await self.console(request)
        # The token as configured now: a reload may change it.
        if not authorized(request, self.relay.config.relay.admin_token):
            return 401, refusal(request)
        found = self.router.find(request.path)
        if found is None:
            return 404, {"error": f"no such endpoint: {request.path}"}
        routes, params = found
        route = routes.get(request.method)
        if route is None:
            allowed = ", ".join(routes)
            return 405, Reply.json(
                {"error": f"{request.path} takes {allowed}, not {request.method}"},
                headers=(("Allow", allowed),),
            )
        try:
            return await route.endpoint(self, request, params)
        except Invalid as e:  # a parameter or the body: each problem named, with its field
            return e.answer()
        except JournalError as e:
            return 503, {"error": f"the journal is unavailable: {e}"}
