"""The admin listener (``[relay] admin``): what operators see of a running relay, never the
gateway's way in.

``server`` is the handler (the token check, the routing, errors as JSON), ``routes`` the table
of endpoints (add a row there for a new one, and document it in docs/admin-api.yaml), ``api``
the JSON endpoints under ``/api/`` for the relay itself, ``deliveries`` those that read the
journal's deliveries, ``replays`` those that change them (replays, disabled webhooks),
``metrics`` ``/metrics`` in Prometheus' text format, ``status`` what both say about each
webhook, and ``auth`` the bearer token and the Host check.

Exports ``AdminApi`` (the handler relay.daemon serves) and ``Administered`` (what it needs of
the relay).
"""

from relay.admin.server import AdminApi, Administered

__all__ = ["AdminApi", "Administered"]
